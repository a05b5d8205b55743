"""The command line in-process (click's CliRunner) against a test database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from infosentry import push
from infosentry.cli import main
from infosentry.runtime import open_runtime
from tests import pushkit as kit


@pytest.fixture
def cli(dsn: str, tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("INFOSENTRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_user_and_token_lifecycle(cli) -> None:
    result = cli("user", "create", "--email", "Ops@Example.com", "--admin")
    assert result.exit_code == 0, result.output
    assert "ops@example.com (admin)" in result.output
    result = cli("token", "create", "--email", "ops@example.com")
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert token.startswith("isk_") and "\n" not in token  # the token alone
    again = cli("user", "create", "--email", "ops@example.com")
    assert again.exit_code == 1
    assert again.stderr.strip() == "error: user ops@example.com already exists"
    assert cli("token", "revoke", "1").exit_code == 0
    missing = cli("token", "revoke", "1")
    assert missing.exit_code == 1 and "no live token" in missing.stderr


def test_token_scopes(cli) -> None:
    cli("user", "create", "--email", "plain@example.com")
    refused = cli("token", "create", "--email", "plain@example.com", "--scope", "admin")
    assert refused.exit_code == 1 and "admin" in refused.stderr
    unknown = cli("token", "create", "--email", "plain@example.com", "--scope", "everything")
    assert unknown.exit_code == 1 and "unknown scope" in unknown.stderr
    assert cli("token", "create", "--email", "plain@example.com", "--scope", "goals:read").exit_code == 0


def test_config_get_set(cli) -> None:
    result = cli("config", "set", "immediate_enabled", "off")
    assert result.exit_code == 0 and "IMMEDIATE_ENABLED = false" in result.output
    assert cli("config", "get", "IMMEDIATE_ENABLED").output.strip() == "false"
    values = json.loads(cli("config", "get", "--json").output)
    assert values["IMMEDIATE_ENABLED"] is False and values["BATCH_THRESHOLD"] == 0.75
    bad = cli("config", "set", "BATCH_THRESHOLD", "0.99")
    assert bad.exit_code == 1 and "BOUNDARY_LOW" in bad.stderr
    assert cli("config", "set", "NO_SUCH_KEY", "1").exit_code == 1
    table = cli("config", "get").output
    assert "IMMEDIATE_ENABLED" in table and "table" in table and "default" in table


def test_migrate_commands(cli) -> None:
    history = cli("migrate", "history").output
    assert "0001  schema" in history and "pending" not in history
    assert cli("migrate", "status").exit_code == 0
    assert cli("migrate", "down", "--to", "0").exit_code == 0
    assert cli("migrate", "status").exit_code == 1
    assert "pending" in cli("migrate", "history").output
    assert cli("migrate").exit_code == 0
    assert cli("migrate", "status").exit_code == 0


def test_db_uri(cli, dsn: str) -> None:
    assert cli("db", "uri").output.strip() == dsn


def test_a_users_actions_on_goals_inbox_and_feedback(cli, settings) -> None:
    """The user actions the CLI shares with the API: goal add/edit/pause/resume/delete, matches, inbox, feedback."""
    assert cli("user", "create", "--email", "me@example.com", "--admin").exit_code == 0
    added = cli(
        "goal", "add", "--description", "Chip export rules. And the fabs behind them", "--term", "chip", "--json"
    )
    goal = json.loads(added.stdout)
    assert goal["name"] == "Chip export rules" and goal["priority_terms"] == ["chip"]  # the name is derived
    gid = str(goal["id"])
    edited = json.loads(cli("goal", "edit", gid, "--name", "Chips", "--window", "8:00", "--json").stdout)
    assert (edited["name"], edited["batch_windows"], edited["version"]) == ("Chips", ["08:00"], goal["version"] + 1)
    assert edited["description"] == goal["description"] and edited["priority_terms"] == ["chip"]  # untouched
    cleared = json.loads(cli("goal", "edit", gid, "--term", "-", "--json").stdout)
    assert cleared["priority_terms"] == []
    bad = cli("goal", "edit", gid, "--window", "25:00")
    assert bad.exit_code == 1 and "batch_windows" in bad.stderr
    assert "paused" in cli("goal", "pause", gid).stdout
    assert "active" in cli("goal", "resume", gid).stdout

    async def pushed_item() -> int:
        async with open_runtime(settings) as rt:
            user_id = await rt.pool.fetchval("SELECT id FROM users WHERE email = 'me@example.com'")
            item = await kit.item(rt, await kit.source(rt, user_id), "Chip export ban widened")
            await kit.match(rt, goal["id"], item, 0.97, reasons=["mentions 'chip'"])
            await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=0)
            await kit.decide_all(rt)
            await push.flush(rt)
            return item

    item_id = str(asyncio.run(pushed_item()))
    matches = cli("goal", "matches", gid)
    assert "Chip export ban widened" in matches.stdout and "IMMEDIATE" in matches.stdout
    assert "mentions 'chip'" in matches.stdout
    inbox = json.loads(cli("inbox", "--unread", "--json").stdout)
    assert [n["item"]["id"] for n in inbox] == [int(item_id)]
    assert json.loads(cli("inbox", "--read", str(inbox[0]["id"]), "--unread", "--json").stdout) == []
    liked = cli("feedback", item_id, "--goal", gid, "like")
    assert liked.exit_code == 0 and "like" in liked.stdout
    blocked = json.loads(cli("feedback", item_id, "--goal", gid, "--block-source", "--json").stdout)
    assert blocked["blocked_source"]["source_id"] and blocked["feedback"] is None
    assert cli("feedback", item_id, "--goal", gid, "undo").exit_code == 0
    again = cli("feedback", item_id, "--goal", gid, "undo")
    assert again.exit_code == 1 and "no feedback" in again.stderr
    assert cli("goal", "delete", gid, "--yes").exit_code == 0
    assert json.loads(cli("goal", "list", "--json").stdout) == []
    gone = cli("goal", "pause", gid)
    assert gone.exit_code == 1 and "no such goal" in gone.stderr


def test_config_unset_goes_back_to_the_default(cli) -> None:
    assert cli("config", "set", "BATCH_MAX_ITEMS", "5").exit_code == 0
    result = cli("config", "unset", "batch_max_items", "DIGEST_MAX_ITEMS")
    assert result.exit_code == 0
    assert (
        "BATCH_MAX_ITEMS: back to its default" in result.stdout
        and "DIGEST_MAX_ITEMS: had no table value" in result.stdout
    )
    assert cli("config", "get", "BATCH_MAX_ITEMS").stdout.strip() == "8"
    audit = json.loads(cli("config", "audit", "--json").stdout)
    assert [(a["key"], a["new_value"]) for a in audit[:2]] == [("BATCH_MAX_ITEMS", None), ("BATCH_MAX_ITEMS", 5)]


def test_serve_and_worker_run_numpy_on_one_blas_thread_unless_told_otherwise(monkeypatch: pytest.MonkeyPatch) -> None:
    from threadpoolctl import threadpool_info

    from infosentry import tuning

    def blas_threads() -> set[int]:
        return {lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}

    assert blas_threads(), "numpy has no BLAS library threadpoolctl can see"
    for name in tuning._BLAS_THREAD_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "2")
    assert tuning._one_blas_thread() is None  # the operator's setting is left alone
    monkeypatch.delenv("OPENBLAS_NUM_THREADS")
    limiter = tuning._one_blas_thread()
    try:
        assert blas_threads() == {1}
    finally:
        limiter.restore_original_limits()


def test_one_blas_thread_also_when_numpy_is_imported_after_tuning() -> None:
    # threadpoolctl limits only the libraries loaded when it is called: a process that tunes before importing
    # numpy (`bin/bench match` did) would otherwise keep a second BLAS thread spinning beside it
    code = (
        "from infosentry.tuning import tune_process; tune_process(); import numpy, threadpoolctl; "
        "print(sorted({i['num_threads'] for i in threadpoolctl.threadpool_info() if i['user_api'] == 'blas'}))"
    )
    from infosentry import tuning

    env = {k: v for k, v in os.environ.items() if k not in tuning._BLAS_THREAD_VARS}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[1]", out.stderr


def test_an_embedding_round_hands_freed_heap_back_at_most_every_few_seconds(monkeypatch: pytest.MonkeyPatch) -> None:
    from infosentry import tuning

    class FakeLibc:  # glibc's malloc_trim, counted
        trims = 0

        def malloc_trim(self, pad: int) -> int:
            FakeLibc.trims += 1
            return 1

    clock = [1000.0]
    monkeypatch.setattr(tuning, "_LIBC", FakeLibc())
    monkeypatch.setattr(tuning, "_last_trim", 0.0)
    monkeypatch.setattr(tuning.time, "monotonic", lambda: clock[0])
    tuning.release_free_heap()
    tuning.release_free_heap()  # the same instant: skipped
    clock[0] += tuning.TRIM_EVERY_SECONDS - 0.1
    tuning.release_free_heap()
    assert FakeLibc.trims == 1
    clock[0] += 0.2
    tuning.release_free_heap()
    assert FakeLibc.trims == 2
    monkeypatch.setattr(tuning, "_LIBC", None)  # not glibc: nothing to call
    clock[0] += 60
    tuning.release_free_heap()
    assert FakeLibc.trims == 2
