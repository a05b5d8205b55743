"""Budget: atomic counters in the budget day, prices, the sticky breaker (caps, reset, new day), switches,
external call records, the psql view and `infosentry budget`."""

from __future__ import annotations

import asyncio
import json
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest
from click.testing import CliRunner

from infosentry import budget
from infosentry.cli import main
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings
from tests.test_match import set_hot


@pytest.fixture
async def paid_rt(settings: Settings):
    """A runtime whose embeddings are priced (the OpenAI provider); no call leaves the machine here."""
    async with open_runtime(replace(settings, embed_provider="openai", openai_api_key="sk-none")) as runtime:
        yield runtime


async def test_charges_add_up_atomically_with_prices(paid_rt: Runtime) -> None:
    rt = paid_rt
    await asyncio.gather(*(budget.charge(rt, "embed", tokens=1000) for _ in range(40)))
    await asyncio.gather(*(budget.charge(rt, "judge", prompt_tokens=500, completion_tokens=100) for _ in range(10)))
    st = await budget.status(rt)
    assert st["day"] == budget.today(rt).isoformat() and st["tz"] == rt.settings.tz
    assert st["embed_requests"] == 40 and st["embed_tokens"] == 40_000
    assert st["embed_usd"] == pytest.approx(40_000 * 0.02 / 1e6)
    assert st["llm_calls"] == 10 and st["llm_prompt_tokens"] == 5000 and st["llm_completion_tokens"] == 1000
    assert st["llm_usd"] == pytest.approx((5000 * 0.15 + 1000 * 0.60) / 1e6)
    assert st["usd_total"] == pytest.approx(st["embed_usd"] + st["llm_usd"])
    assert st["remaining_usd"] == pytest.approx(0.33 - st["usd_total"]) and st["breaker_open"] is False
    assert st["remaining_judge_calls"] == 190


async def test_local_embeddings_are_free_but_counted(rt: Runtime) -> None:
    st = await budget.charge(rt, "embed", tokens=5000)
    assert st["embed_tokens"] == 5000 and st["embed_usd"] == 0 and st["usd_total"] == 0


async def test_breaker_opens_at_the_usd_cap_is_sticky_and_resets(paid_rt: Runtime) -> None:
    rt = paid_rt
    await set_hot(rt, DAILY_USD_BUDGET=0.001)
    assert await budget.allow(rt, "embed") == (True, None)
    st = await budget.charge(rt, "embed", tokens=40_000)  # $0.0008
    assert not st["breaker_open"]
    st = await budget.charge(rt, "embed", tokens=20_000)  # $0.0012 >= $0.001
    assert st["breaker_open"] and "daily budget of $0.001 reached" in st["reason"]
    for kind in ("embed", "judge"):
        ok, why = await budget.allow(rt, kind)
        assert not ok and why.startswith("budget breaker open: daily budget")
    # sticky: raising the cap does not close it for the day
    await set_hot(rt, DAILY_USD_BUDGET=5.0)
    assert (await budget.allow(rt, "embed"))[0] is False
    # an admin reset closes it, and the cap then counts the spend from now on
    await set_hot(rt, DAILY_USD_BUDGET=0.001)
    st = await budget.reset(rt, "test-admin")
    assert not st["breaker_open"] and st["reset_at"] is not None and st["remaining_usd"] == pytest.approx(0.001)
    assert st["usd_total"] == pytest.approx(0.0012)  # history is kept
    assert await budget.allow(rt, "embed") == (True, None)
    st = await budget.charge(rt, "embed", tokens=50_000)
    assert st["breaker_open"]


async def test_judge_call_cap_opens_the_breaker_for_everything(rt: Runtime) -> None:
    await set_hot(rt, JUDGE_PER_DAY=3)
    for _ in range(2):
        await budget.charge(rt, "judge", prompt_tokens=10, completion_tokens=5)
    assert (await budget.allow(rt, "judge"))[0]
    st = await budget.charge(rt, "judge", prompt_tokens=10, completion_tokens=5)
    assert st["breaker_open"] and st["reason"] == "3 LLM judge calls reached the daily cap of 3"
    assert (await budget.allow(rt, "embed"))[0] is False  # CONTRACT §6: the breaker stops embeddings too


def test_the_breakers_sql_check_runs_only_when_a_cap_may_be_reached() -> None:
    def row(usd: str, calls: int, usd_at_reset: str = "0", calls_at_reset: int = 0) -> dict[str, object]:
        return {
            "embed_usd": Decimal(usd),
            "llm_usd": Decimal("0"),
            "usd_at_reset": Decimal(usd_at_reset),
            "llm_calls": calls,
            "llm_calls_at_reset": calls_at_reset,
        }

    check = budget._may_have_reached_a_cap
    assert not check(row("0.000999", 2), 0.001, 3)
    assert check(row("0.001000", 0), 0.001, 3)  # exactly at the cap counts, as in the SQL
    assert check(row("0", 3), 0.001, 3)
    assert not check(row("0.0015", 5, usd_at_reset="0.0010", calls_at_reset=3), 0.001, 3)  # counted since a reset
    assert check(row("0", 0), 0.0, 0)  # a cap of zero: every call is over


async def test_switches_and_a_lowered_cap_refuse_calls(rt: Runtime) -> None:
    await set_hot(rt, EMBEDDING_ENABLED=False)
    assert await budget.allow(rt, "embed") == (False, "EMBEDDING_ENABLED is false")
    assert (await budget.allow(rt, "judge"))[0]
    await set_hot(rt, EMBEDDING_ENABLED=True, LLM_ENABLED=False)
    assert await budget.allow(rt, "judge") == (False, "LLM_ENABLED is false")
    # a cap lowered below today's spend (here 0: the kill switch) opens the breaker without a new charge
    await set_hot(rt, LLM_ENABLED=True, DAILY_USD_BUDGET=0)
    ok, why = await budget.allow(rt, "embed")
    assert not ok and "daily budget of $0 reached" in why
    assert (await budget.status(rt))["breaker_open"]
    with pytest.raises(ValueError):
        await budget.allow(rt, "email")


async def test_a_new_budget_day_starts_closed(rt: Runtime) -> None:
    yesterday = budget.today(rt) - timedelta(days=1)
    await rt.pool.execute(
        """INSERT INTO budget_days (day, tz, embed_usd, breaker_open, breaker_reason, opened_at)
           VALUES ($1, $2, 1.0, true, 'yesterday', now() - interval '1 day')""",
        yesterday,
        rt.settings.tz,
    )
    assert await budget.allow(rt, "embed") == (True, None)
    st = await budget.status(rt)
    assert not st["breaker_open"] and st["usd_total"] == 0


async def test_force_open_and_call_records(rt: Runtime) -> None:
    st = await budget.force_open(rt, "chaos drill")
    assert st["breaker_open"] and st["reason"] == "chaos drill"
    assert await budget.allow(rt, "embed") == (False, "budget breaker open: chaos drill")
    await budget.record_call(rt, "embed", ok=False, http_status=429, error="slow down", latency_ms=12)
    await budget.record_call(rt, "judge", ok=True, http_status=200, latency_ms=300)
    rows = await rt.pool.fetch("SELECT kind, ok, http_status, error, latency_ms FROM external_calls ORDER BY id")
    assert [tuple(r) for r in rows] == [("embed", False, 429, "slow down", 12), ("judge", True, 200, None, 300)]


async def test_view_shows_live_numbers(paid_rt: Runtime) -> None:
    rt = paid_rt
    await set_hot(rt, DAILY_USD_BUDGET=0.5)
    await budget.charge(rt, "embed", tokens=10_000)
    await budget.charge(rt, "judge", prompt_tokens=1000, completion_tokens=200)
    view = dict(await rt.pool.fetchrow("SELECT * FROM infosentry_budget_today"))
    st = await budget.status(rt)
    assert view["day"].isoformat() == st["day"] and view["tz"] == rt.settings.tz
    assert float(view["usd_total"]) == pytest.approx(st["usd_total"])
    assert float(view["usd_cap"]) == 0.5 and view["judge_cap"] == 200 and view["llm_calls"] == 1
    assert float(view["remaining_usd"]) == pytest.approx(st["remaining_usd"]) and view["breaker_open"] is False


def test_cli_budget(settings: Settings, dsn: str, tmp_path, monkeypatch) -> None:
    async def seed() -> dict:
        async with open_runtime(replace(settings, embed_provider="openai", openai_api_key="sk-none")) as rt:
            await budget.charge(rt, "embed", tokens=10_000)
            await budget.charge(rt, "judge", prompt_tokens=1000, completion_tokens=200)
            return await budget.status(rt)

    st = asyncio.run(seed())
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("INFOSENTRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    runner = CliRunner()
    out = runner.invoke(main, ["budget", "--json"], catch_exceptions=False)
    assert out.exit_code == 0, out.output
    data = json.loads(out.stdout)
    assert data["usd_total"] == pytest.approx(st["usd_total"]) and data["cap"] == 0.33 and data["llm_calls"] == 1
    human = runner.invoke(main, ["budget"], catch_exceptions=False).stdout
    assert "breaker      closed" in human and "1 of 200 calls" in human
    reset = runner.invoke(main, ["budget", "--reset", "--json"], catch_exceptions=False)
    assert json.loads(reset.stdout)["reset_at"] is not None


async def test_calls_and_spend_reach_the_metrics(rt) -> None:
    from infosentry import budget, metrics

    def value(name: str, **labels: str) -> float:
        return metrics.REGISTRY.get_sample_value(name, labels) or 0.0

    before_calls = value("infosentry_llm_calls_total", kind="judge", outcome="rate_limited")
    before_tokens = value("infosentry_llm_tokens_total", kind="judge", direction="completion")
    await budget.record_call(rt, "judge", ok=False, http_status=429, error="rate limited")
    await budget.charge(rt, "judge", prompt_tokens=1000, completion_tokens=200)
    assert value("infosentry_llm_calls_total", kind="judge", outcome="rate_limited") == before_calls + 1
    assert value("infosentry_llm_tokens_total", kind="judge", direction="completion") == before_tokens + 200
