"""Embedding providers behind one interface (base.Embedder): `local` (offline MiniLM) and `openai`."""

from __future__ import annotations

from infosentry.embedders.base import Embedder
from infosentry.settings import Settings


def make_embedder(settings: Settings) -> Embedder:
    if settings.embed_provider == "openai":
        from infosentry.embedders.openai import OpenAIEmbedder

        return OpenAIEmbedder(settings)
    from infosentry.embedders.local import LocalEmbedder

    return LocalEmbedder()
