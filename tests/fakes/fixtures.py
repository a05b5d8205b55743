"""pytest fixtures built on the fakes and the app (registered by conftest through pytest_plugins)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from infosentry.api import create_app
from infosentry.settings import Settings


@pytest.fixture
async def api(aiohttp_client: Any, settings: Settings) -> AsyncIterator[Any]:
    """A test client on the real app (role api) over a real socket; `api.app[RT]` is its Runtime."""
    client = await aiohttp_client(create_app(settings, role="api"))
    yield client


@pytest.fixture
def openai_server() -> Any:
    """A fake OpenAI-compatible server on 127.0.0.1 (tests/fakes/openai.py), in its own thread; use
    `dataclasses.replace(settings, **openai_server.settings_overrides())` to point infosentry at it."""
    from tests.fakes.openai import running

    yield from running()
