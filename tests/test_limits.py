"""Limits per user (config table, hot): sources, goals, API tokens and OPML lines; a clear 422 through the API
and one error line through the CLI, nothing half done."""

from __future__ import annotations

from typing import Any

from click.testing import CliRunner

from infosentry.api.http import RT
from infosentry.cli import main
from tests.conftest import bearer, make_user
from tests.pushkit import set_hot


def opml(n: int) -> str:
    outlines = "".join(f'<outline type="rss" text="f{i}" xmlUrl="https://o{i}.example/feed"/>' for i in range(n))
    return f'<?xml version="1.0"?><opml version="2.0"><head/><body>{outlines}</body></opml>'


async def test_goal_source_and_token_limits(api: Any) -> None:
    rt = api.app[RT]
    await set_hot(rt, MAX_GOALS_PER_USER=2, MAX_SOURCES_PER_USER=2, MAX_TOKENS_PER_USER=2)  # make_user made one
    _, token = await make_user(rt, "busy@example.com")
    auth = bearer(token)
    for i in range(2):
        assert (await api.post("/api/v1/goals", json={"description": f"Goal {i}"}, headers=auth)).status == 201
        assert (await api.post("/api/v1/sources", json={"url": f"https://s{i}.example/"}, headers=auth)).status == 201
    goal = await api.post("/api/v1/goals", json={"description": "one too many"}, headers=auth)
    assert goal.status == 422 and "MAX_GOALS_PER_USER" in (await goal.json())["detail"]
    source = await api.post("/api/v1/sources", json={"url": "https://s9.example/"}, headers=auth)
    assert source.status == 422 and "MAX_SOURCES_PER_USER" in (await source.json())["detail"]
    assert await rt.pool.fetchval("SELECT count(*) FROM sources WHERE url = 'https://s9.example/'") == 0
    # following what you already follow is not one more
    assert (await api.post("/api/v1/sources", json={"url": "https://s1.example/"}, headers=auth)).status == 200
    assert (await api.post("/api/v1/tokens", json={"name": "ci"}, headers=auth)).status == 201
    second = await api.post("/api/v1/tokens", json={"name": "cd"}, headers=auth)
    assert second.status == 422 and "MAX_TOKENS_PER_USER" in (await second.json())["detail"]
    # the limits are hot: raised, the same request passes
    await set_hot(rt, MAX_GOALS_PER_USER=3)
    assert (await api.post("/api/v1/goals", json={"description": "now it fits"}, headers=auth)).status == 201


async def test_opml_imports_are_capped(api: Any) -> None:
    rt = api.app[RT]
    await set_hot(rt, MAX_OPML_LINES=5, MAX_SOURCES_PER_USER=3)
    _, token = await make_user(rt, "importer@example.com")
    headers = {**bearer(token), "Content-Type": "text/x-opml"}
    too_long = await api.post("/api/v1/sources/import", data=opml(6), headers=headers)
    assert too_long.status == 422 and "MAX_OPML_LINES" in (await too_long.json())["detail"]
    assert await rt.pool.fetchval("SELECT count(*) FROM subscriptions") == 0  # nothing half done
    report = await (await api.post("/api/v1/sources/import", data=opml(5), headers=headers)).json()
    assert len(report["added"]) == 3 and len(report["invalid"]) == 2
    assert all("MAX_SOURCES_PER_USER" in e["reason"] for e in report["invalid"])


def test_the_cli_says_it_in_one_line(dsn: str, tmp_path: Any, monkeypatch: Any) -> None:
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("INFOSENTRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    runner = CliRunner()

    def cli(*args: str) -> Any:
        return runner.invoke(main, list(args), catch_exceptions=False)

    assert cli("user", "create", "--email", "me@example.com", "--admin").exit_code == 0
    assert cli("config", "set", "MAX_GOALS_PER_USER", "1").exit_code == 0
    assert cli("goal", "add", "--description", "first").exit_code == 0
    refused = cli("goal", "add", "--description", "second")
    assert refused.exit_code == 1
    assert refused.stderr.strip() == "error: at most 1 goals per user (MAX_GOALS_PER_USER); delete one first"
