"""Ingest against the fake feed server: scheduling from table state, conditional GET, server hints, backoff,
one item per story across sources, backfill, bad input isolation, SKIP LOCKED claims, the parse pool, the job."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import random
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

import pytest
from click.testing import CliRunner

from infosentry import jobs, queue, retention
from infosentry.cli import main
from infosentry.errors import Invalid, NotFound
from infosentry.fetch_errors import FetchError
from infosentry.ingest import dedupe, parsing, schedule
from infosentry.ingest import run as ingest
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings
from infosentry.sources.rss import parse as rss_parse
from infosentry.store import items as items_store
from infosentry.store import sources as sources_store
from tests import pushkit
from tests.conftest import due_count, follow, make_user, source_row
from tests.fakes.feeds import FakeFeedServer

DATA = Path(__file__).parent / "data" / "feeds"
NOW = datetime.now(UTC)


def rss(items: list[dict[str, Any]], *, title: str = "Test feed", ttl: int | None = None) -> str:
    """An RSS 2.0 document; each item: title, link, description, pub (datetime) — all optional but link."""
    parts = [f"<title>{escape(title)}</title><link>https://feed.example/</link>"]
    if ttl:
        parts.append(f"<ttl>{ttl}</ttl>")
    for it in items:
        body = [f"<link>{escape(it['link'])}</link>"]
        if "title" in it:
            body.append(f"<title>{escape(it['title'])}</title>")
        if "description" in it:
            body.append(f"<description>{escape(it['description'])}</description>")
        if it.get("pub"):
            body.append(f"<pubDate>{format_datetime(it['pub'], usegmt=True)}</pubDate>")
        parts.append("<item>" + "".join(body) + "</item>")
    return f'<?xml version="1.0" encoding="UTF-8"?><rss version="2.0"><channel>{"".join(parts)}</channel></rss>'


def story(n: int, *, host: str = "news.example", age: timedelta = timedelta(hours=1), **extra: Any) -> dict[str, Any]:
    return {
        "title": f"Story number {n} about things",
        "link": f"https://{host}/story/{n}",
        "description": f"<p>Body of story {n}, with <b>markup</b> &amp; entities.</p>",
        "pub": NOW - age,
        **extra,
    }


@pytest.fixture
async def server() -> AsyncIterator[FakeFeedServer]:
    async with FakeFeedServer() as srv:
        yield srv


@pytest.fixture
async def user(rt: Runtime) -> int:
    user_id, _ = await make_user(rt, "ingest@example.com", admin=True)
    return user_id


async def add(
    rt: Runtime,
    user_id: int,
    url: str,
    *,
    type: str = "rss",
    interval: int | None = None,
    config: dict[str, Any] | None = None,
    name: str | None = None,
) -> int:
    return await follow(rt, user_id, url, type=type, interval=interval, config=config, name=name)


async def source(rt: Runtime, source_id: int) -> dict[str, Any]:
    return await source_row(rt, source_id)


async def make_due(rt: Runtime) -> None:
    await rt.pool.execute("UPDATE sources SET next_fetch_at = now() - interval '1 second', lease_until = NULL")


async def logs(rt: Runtime, source_id: int) -> list[dict[str, Any]]:
    rows = await rt.pool.fetch("SELECT * FROM ingest_logs WHERE source_id = $1 ORDER BY id", source_id)
    return [dict(r) for r in rows]


def delay_of(row: dict[str, Any]) -> float:
    return (row["next_fetch_at"] - row["last_fetch_at"]).total_seconds()


# --- the happy path ------------------------------------------------------------------------------------------


async def test_first_fetch_stores_items_health_and_log(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    long_text = "word " * 400
    items = [story(1), story(2, description=long_text), story(3, age=timedelta(days=2))]
    server.add("/a.xml", rss(items, title="Alpha News"), etag='"v1"', last_modified="Wed, 01 May 2024 10:00:00 GMT")
    sid = await add(rt, user, server.url("/a.xml"))
    assert (await source(rt, sid))["name"] == "127.0.0.1/a.xml"  # placeholder until first fetch

    summary = await ingest.run_due(rt)

    assert (summary.sources, summary.ok, summary.new_items) == (1, 1, 3)
    src = await source(rt, sid)
    assert src["name"] == "Alpha News"  # the feed's title replaces the placeholder name
    assert src["error_streak"] == 0 and src["last_error"] is None and src["lease_until"] is None
    assert src["etag"] == '"v1"' and src["last_modified"] == "Wed, 01 May 2024 10:00:00 GMT"
    assert src["last_success_at"] == src["last_fetch_at"]
    lo, hi = schedule.interval_bounds(900)
    assert lo * 0.9 - 1 <= delay_of(src) <= hi * 1.1 + 1
    rows = await rt.pool.fetch("SELECT * FROM items ORDER BY url")
    assert [r["url"] for r in rows] == [f"https://news.example/story/{n}" for n in (1, 2, 3)]
    assert all(len(r["snippet"]) <= 500 for r in rows) and len(rows[1]["snippet"]) > 400
    assert rows[0]["snippet"] == "Body of story 1, with markup & entities."
    assert all(r["source_id"] == sid for r in rows)
    assert await rt.pool.fetchval("SELECT count(*) FROM item_sources WHERE source_id = $1", sid) == 3
    (log,) = await logs(rt, sid)
    assert (log["status"], log["http_status"], log["fetched"], log["new"], log["duplicate"]) == ("ok", 200, 3, 3, 0)
    assert log["duration_ms"] >= 0 and log["error"] is None

    # nothing is due any more: a second run fetches nothing
    assert (await ingest.run_due(rt)).sources == 0
    assert server.hits("/a.xml") == 1


async def test_not_modified_skips_parsing(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    route = server.add("/c.xml", rss([story(1)]), etag='"abc"')
    sid = await add(rt, user, server.url("/c.xml"))
    await ingest.run_due(rt)
    route.body = b"<<< this is not a feed and would fail to parse >>>"  # same ETag: the server answers 304
    await make_due(rt)
    summary = await ingest.run_due(rt)
    assert (summary.not_modified, summary.failed) == (1, 0)
    assert server.last_request("/c.xml").headers["If-None-Match"] == '"abc"'
    log = (await logs(rt, sid))[-1]
    assert (log["status"], log["http_status"], log["fetched"]) == ("not_modified", 304, 0)
    src = await source(rt, sid)
    assert src["etag"] == '"abc"' and src["error_streak"] == 0


async def test_server_hints_set_the_earliest_next_fetch(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    server.add("/maxage.xml", rss([story(1)]), headers={"Cache-Control": "public, max-age=20000"})
    server.add("/ttl.xml", rss([story(2)], ttl=600))  # minutes
    server.add("/huge.xml", rss([story(3)]), headers={"Cache-Control": "max-age=99999999"})
    a = await add(rt, user, server.url("/maxage.xml"))
    b = await add(rt, user, server.url("/ttl.xml"))
    c = await add(rt, user, server.url("/huge.xml"))
    await ingest.run_due(rt)
    assert delay_of(await source(rt, a)) >= 20000 - 2
    assert delay_of(await source(rt, b)) >= 36000 - 2
    assert delay_of(await source(rt, c)) <= 86400 + 2  # a wrong header never silences a source beyond 24 h


async def test_retry_after_on_429_and_backoff(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    server.add("/busy.xml", "slow down", status=429, headers={"Retry-After": "7200"}, content_type="text/plain")
    sid = await add(rt, user, server.url("/busy.xml"), interval=600)
    await ingest.run_due(rt)
    src = await source(rt, sid)
    assert src["error_streak"] == 1 and src["last_error_kind"] == "http_status"
    assert "429" in src["last_error"]
    assert delay_of(src) >= 7200 - 2
    (log,) = await logs(rt, sid)
    assert (log["status"], log["http_status"], log["error_kind"]) == ("error", 429, "http_status")


async def test_backoff_doubles_is_capped_and_resets(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    route = server.add("/flaky.xml", "boom", status=500, content_type="text/plain")
    sid = await add(rt, user, server.url("/flaky.xml"), interval=900)
    delays = []
    for streak in (1, 2, 3):
        await make_due(rt)
        await ingest.run_due(rt)
        src = await source(rt, sid)
        assert src["error_streak"] == streak
        delays.append(delay_of(src))
    for streak, delay in enumerate(delays, start=1):
        expected = 900 * 2 ** (streak - 1)
        assert expected * 0.9 - 1 <= delay <= expected * 1.1 + 1, (streak, delay)
    # a long streak is capped at 24 h and never disables the source
    await rt.pool.execute("UPDATE sources SET error_streak = 40 WHERE id = $1", sid)
    await make_due(rt)
    await ingest.run_due(rt)
    src = await source(rt, sid)
    assert src["error_streak"] == 41 and src["enabled"] and 86400 * 0.9 - 1 <= delay_of(src) <= 86400 + 1
    # success resets everything
    route.status, route.body, route.content_type = 200, rss([story(1)]).encode(), "application/rss+xml"
    await make_due(rt)
    await ingest.run_due(rt)
    src = await source(rt, sid)
    assert src["error_streak"] == 0 and src["last_error"] is None and src["last_error_kind"] is None
    assert [entry["status"] for entry in await logs(rt, sid)] == ["error"] * 4 + ["ok"]


# --- one item per story ----------------------------------------------------------------------------------------


async def test_same_story_from_two_feeds_is_one_item(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    same_text = "The council approved the new bridge budget after a long debate on Tuesday evening."
    server.add(
        "/one.xml",
        rss(
            [
                {
                    "title": "Bridge approved",
                    "link": "https://news.example/bridge?utm_source=rss&id=7",
                    "description": same_text,
                    "pub": NOW,
                },
                {
                    "title": "Council approves bridge budget after debate",
                    "link": "https://one.example/a/1",
                    "description": same_text,
                    "pub": NOW,
                },
                {
                    "title": "Weather today",
                    "link": "https://one.example/weather",
                    "description": "Sunny and warm.",
                    "pub": NOW,
                },
            ]
        ),
    )
    server.add(
        "/two.xml",
        rss(
            [
                {
                    "title": "Bridge approved!",
                    "link": "https://www.NEWS.example/bridge/?id=7&utm_medium=feed#top",
                    "description": "different words",
                    "pub": NOW,
                },
                {
                    "title": "Council approves bridge budget after debate.",
                    "link": "https://two.example/b/9",
                    "description": same_text + " (Reuters)",
                    "pub": NOW,
                },
                {
                    "title": "Weather today",
                    "link": "https://two.example/weather",
                    "description": "Heavy rain expected.",
                    "pub": NOW,
                },
            ]
        ),
    )
    one = await add(rt, user, server.url("/one.xml"))
    two = await add(rt, user, server.url("/two.xml"))

    await ingest.run_due(rt)

    items = await rt.pool.fetch("SELECT id, url, source_id FROM items ORDER BY id")
    # bridge (same canonical URL), council (same title + near-identical text): one item each;
    # weather: same title but different text -> two items
    assert len(items) == 4
    links = await rt.pool.fetch(
        "SELECT i.title, array_agg(x.source_id ORDER BY x.source_id) AS s FROM items i "
        "JOIN item_sources x ON x.item_id = i.id GROUP BY i.id, i.title ORDER BY i.id"
    )
    by_title = {r["title"].rstrip("!."): list(r["s"]) for r in links if "Weather" not in r["title"]}
    assert by_title == {"Bridge approved": [one, two], "Council approves bridge budget after debate": [one, two]}
    counts = {e["source_id"]: (e["new"], e["duplicate"]) for e in await rt.pool.fetch("SELECT * FROM ingest_logs")}
    assert sorted(counts.values()) == [(1, 2), (3, 0)]

    # later fetches of the same stories (another run, other batch) still link, never duplicate
    await make_due(rt)
    await ingest.run_due(rt)
    assert await rt.pool.fetchval("SELECT count(*) FROM items") == 4


async def test_near_identical_chinese_titles_from_two_sources_are_one_story(
    rt: Runtime, user: int, server: FakeFeedServer
) -> None:
    def feed(host: str, titles: list[str]) -> str:
        return rss(
            [{"title": t, "link": f"https://{host}/{k}", "description": "", "pub": NOW} for k, t in enumerate(titles)]
        )

    server.add(
        "/sina.xml",
        feed(
            "sina.example",
            [
                "【快讯】央行宣布降准0.5个百分点",
                "华为发布新款折叠屏手机",
                "湖人险胜勇士晋级西部决赛",
                "北京发布高温橙色预警",
            ],
        ),
    )
    server.add(
        "/163.xml",
        feed(
            "163.example",
            [
                "央行宣布降准0.5个百分点，释放长期资金约1万亿",  # the same headline with a tail: one story
                "小米发布新款折叠屏手机",  # the same template, another company: another story
                "勇士险胜湖人晋级西部决赛",  # the teams swapped: another story
                "上海发布高温橙色预警",
            ],
        ),
    )
    one = await add(rt, user, server.url("/sina.xml"))
    two = await add(rt, user, server.url("/163.xml"))
    await ingest.run_due(rt)
    rows = await rt.pool.fetch(
        "SELECT i.title, array_agg(x.source_id ORDER BY x.source_id) AS s FROM items i "
        "JOIN item_sources x ON x.item_id = i.id GROUP BY i.id, i.title ORDER BY i.id"
    )
    merged = [r["title"] for r in rows if list(r["s"]) == [one, two]]
    # one item for the two copies of the headline (whichever source was stored first), the others apart
    assert len(merged) == 1 and "央行宣布降准0.5个百分点" in merged[0] and len(rows) == 7


def test_same_chinese_headline() -> None:
    same = dedupe.same_cjk_headline
    assert same("【快讯】央行宣布降准0.5个百分点", "央行宣布降准0.5个百分点，释放长期资金约1万亿")
    assert same("重磅！国产大飞机C919完成首次商业飞行", "国产大飞机C919完成首次商业飞行")
    assert same("MSCI下周公布最新调整，A股纳入比例或提升", "MSCI下周公布最新调整 A股纳入比例或提升（图）")
    assert not same("央行宣布降准0.5个百分点", "央行宣布降准0.25个百分点")  # numbers disagree
    assert not same("华为发布新款折叠屏手机", "小米发布新款折叠屏手机")
    assert not same("湖人险胜勇士晋级西部决赛", "勇士险胜湖人晋级西部决赛")
    assert not same("股市收盘", "股市收盘")  # too short to tell one story from another
    assert not same("Apple unveils a new iPhone today", "Apple unveils a new iPhone today!")  # not Chinese
    assert dedupe.title_marks("【快讯】央行宣布降准0.5个百分点") == ["p:央行宣布降准", "s:05个百分点"]
    assert dedupe.title_marks("Weather today") == [] and dedupe.title_marks("股市收盘") == []


async def test_titles_alone_never_merge_within_one_source(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    server.add(
        "/same.xml",
        rss(
            [
                {"title": "Daily briefing for the whole team", "link": "https://brief.example/1", "pub": NOW},
                {"title": "Daily briefing for the whole team", "link": "https://brief.example/2", "pub": NOW},
                {"title": "Daily briefing for the whole team", "link": "https://brief.example/1?utm_campaign=x"},
            ]
        ),
    )
    sid = await add(rt, user, server.url("/same.xml"))
    await ingest.run_due(rt)
    assert await rt.pool.fetchval("SELECT count(*) FROM items") == 2
    (log,) = await logs(rt, sid)
    assert (log["fetched"], log["new"], log["duplicate"]) == (3, 2, 1)


async def test_backfill_marking(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    route = server.add(
        "/bf.xml",
        rss(
            [
                {"title": "Old news", "link": "https://bf.example/old", "pub": NOW - timedelta(days=3)},
                {"title": "Undated", "link": "https://bf.example/undated"},
                {"title": "Breaking", "link": "https://bf.example/fresh", "pub": NOW - timedelta(minutes=5)},
                {"title": "From the future", "link": "https://bf.example/future", "pub": NOW + timedelta(days=365)},
            ]
        ),
    )
    await add(rt, user, server.url("/bf.xml"))
    await ingest.run_due(rt)
    rows = {r["url"].rsplit("/", 1)[1]: r for r in await rt.pool.fetch("SELECT * FROM items")}
    assert rows["old"]["is_backfill"] and rows["undated"]["is_backfill"]
    assert not rows["fresh"]["is_backfill"] and not rows["future"]["is_backfill"]
    assert rows["future"]["published_at"] <= datetime.now(UTC)  # clamped

    # later fetches: new undated items are live news; old-dated newcomers are still back catalogue
    route.body = rss(
        [
            {"title": "Second undated", "link": "https://bf.example/undated2"},
            {"title": "Archive item", "link": "https://bf.example/archive", "pub": NOW - timedelta(days=20)},
        ]
    ).encode()
    await make_due(rt)
    await ingest.run_due(rt)
    rows = {r["url"].rsplit("/", 1)[1]: r for r in await rt.pool.fetch("SELECT * FROM items")}
    assert not rows["undated2"]["is_backfill"] and rows["archive"]["is_backfill"]


# --- bad input ---------------------------------------------------------------------------------------------------


async def test_bad_feeds_fail_alone(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    good = [story(n, host="good.example") for n in range(5)]
    server.add("/good.xml", rss(good))
    server.add("/good2.xml", rss([story(9, host="good2.example")]))
    server.add("/text.txt", (DATA / "not_xml.txt").read_bytes(), content_type="text/plain")
    server.add("/page.html", (DATA / "html_no_feed.html").read_bytes(), content_type="text/html")
    server.add("/empty.xml", b"")
    server.add("/laughs.xml", (DATA / "billion_laughs.xml").read_bytes())
    server.add("/gone.xml", "gone", status=404, content_type="text/plain")
    server.bomb("/bomb.xml", decompressed_size=20 * 1024 * 1024)
    server.add("/trunc.xml", (DATA / "truncated_early.xml").read_bytes())
    ids = {}
    for path in ("good", "text", "page", "empty", "laughs", "gone", "bomb", "trunc", "good2"):
        suffix = {"text": ".txt", "page": ".html"}.get(path, ".xml")
        ids[path] = await add(rt, user, server.url(f"/{path}{suffix}"))

    summary = await ingest.run_due(rt, concurrency=4)

    assert summary.sources == 9
    state = {name: await source(rt, sid) for name, sid in ids.items()}
    assert state["good"]["last_error"] is None and state["good2"]["last_error"] is None
    assert await rt.pool.fetchval("SELECT count(*) FROM items") == 6
    kinds = {name: s["last_error_kind"] for name, s in state.items() if s["last_error"]}
    assert kinds == {
        "text": "parse",
        "page": "parse",
        "empty": "parse",
        "laughs": "parse",
        "gone": "http_status",
        "bomb": "too_large",
        "trunc": "parse",
    }
    assert "HTML page" in state["page"]["last_error"]
    assert "entities" in state["laughs"]["last_error"]
    for name in kinds:
        assert state[name]["error_streak"] == 1 and state[name]["enabled"]
        (log,) = await logs(rt, ids[name])
        assert log["status"] == "error" and log["error"] == state[name]["last_error"]


async def test_unreachable_and_blocked_sources(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    blocked = await add(rt, user, "http://127.0.0.2:9/feed.xml")  # loopback outside the allow list
    closed = await add(rt, user, "http://127.0.0.1:9/feed.xml")  # nothing listens on the discard port
    await ingest.run_due(rt)
    assert (await source(rt, blocked))["last_error_kind"] == "blocked_address"
    assert (await source(rt, closed))["last_error_kind"] == "connection"


async def test_broken_stored_config_is_a_source_error(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    server.add("/x.xml", rss([story(1)]))
    sid = await add(rt, user, server.url("/x.xml"))
    await rt.pool.execute("""UPDATE sources SET config = '{"bogus": 1}' WHERE id = $1""", sid)
    await ingest.run_due(rt)
    src = await source(rt, sid)
    assert src["last_error_kind"] == "config" and "bogus" in src["last_error"]


# --- scheduling --------------------------------------------------------------------------------------------------


async def test_only_followed_enabled_sources_are_due(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    for name in ("a", "b", "c"):
        server.add(f"/{name}.xml", rss([story(ord(name))]))
    a = await add(rt, user, server.url("/a.xml"))
    b = await add(rt, user, server.url("/b.xml"))
    c = await add(rt, user, server.url("/c.xml"))
    await sources_store.set_subscription_enabled(rt.pool, user, b, False)
    await rt.pool.execute("UPDATE sources SET enabled = false WHERE id = $1", c)
    summary = await ingest.run_due(rt)
    assert summary.sources == 1 and server.hits("/a.xml") == 1 and server.total_hits == 1
    other, _ = await make_user(rt, "other@example.com")
    await sources_store.subscribe(rt.pool, other, b)  # a second follower makes it due again
    await ingest.run_due(rt)
    assert server.hits("/b.xml") == 1 and server.hits("/c.xml") == 0 and a


async def test_concurrent_runs_fetch_each_source_once(
    rt: Runtime, settings: Settings, user: int, server: FakeFeedServer
) -> None:
    n = 40
    for i in range(n):
        route = server.add(f"/f{i}.xml", rss([story(i, host=f"h{i}.example")]))
        route.delay = 0.02  # keep fetches in flight while the other run claims
        await add(rt, user, server.url(f"/f{i}.xml"))
    async with open_runtime(settings) as rt2:  # a second worker process: its own pool and fetcher
        one, two = await asyncio.gather(ingest.run_due(rt, concurrency=3), ingest.run_due(rt2, concurrency=3))
    assert one.sources + two.sources == n and one.sources > 0 and two.sources > 0
    assert all(server.hits(f"/f{i}.xml") == 1 for i in range(n))
    assert await rt.pool.fetchval("SELECT count(*) FROM ingest_logs") == n
    assert await rt.pool.fetchval("SELECT count(*) FROM items") == n


async def test_lease_blocks_then_expires(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    server.add("/l.xml", rss([story(1)]))
    sid = await add(rt, user, server.url("/l.xml"))
    claimed = await sources_store.claim_due(rt.pool, limit=10, lease_seconds=300)  # a worker that then dies
    assert [r["id"] for r in claimed] == [sid]
    await rt.pool.execute("UPDATE sources SET next_fetch_at = now() WHERE id = $1", sid)  # e.g. an edit
    assert (await ingest.run_due(rt)).sources == 0  # still leased: nobody else fetches it
    with pytest.raises(Invalid, match="being fetched"):
        await ingest.refresh_source(rt, sid)
    await rt.pool.execute("UPDATE sources SET lease_until = now() - interval '1 s' WHERE id = $1", sid)
    assert (await ingest.run_due(rt)).sources == 1  # the lease ran out: the lost job is picked up
    assert server.hits("/l.xml") == 1


async def test_lease_renewal_skips_sources_whose_results_are_being_written(
    rt: Runtime, user: int, server: FakeFeedServer
) -> None:
    """The renewer never waits on the writer (both update the run's sources; waiting deadlocked under load)."""
    ids = []
    for i in range(2):
        server.add(f"/w{i}.xml", rss([story(i)]))
        ids.append(await add(rt, user, server.url(f"/w{i}.xml")))
    await sources_store.claim_due(rt.pool, limit=10, lease_seconds=60)
    async with rt.pool.acquire() as writer, writer.transaction():
        await writer.execute("UPDATE sources SET lease_until = NULL WHERE id = $1", ids[0])  # a result, uncommitted
        renewed = await asyncio.wait_for(sources_store.renew_leases(rt.pool, ids, lease_seconds=600), 5)
    assert renewed == 1
    rows = {r["id"]: r for r in [await source(rt, i) for i in ids]}
    assert rows[ids[0]]["lease_until"] is None
    assert rows[ids[1]]["lease_until"] > datetime.now(UTC) + timedelta(seconds=300)


async def test_refresh_source_now(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    server.add("/r.xml", rss([story(1), story(2)]))
    sid = await add(rt, user, server.url("/r.xml"))
    await sources_store.set_subscription_enabled(rt.pool, user, sid, False)  # refresh ignores the schedule
    result = await ingest.refresh_source(rt, sid)
    assert result is not None
    assert (result.status, result.fetched, result.new, result.http_status) == ("ok", 2, 2, 200)
    assert result.next_fetch_at > datetime.now(UTC)
    assert (await source(rt, sid))["lease_until"] is None
    with pytest.raises(NotFound):
        await ingest.refresh_source(rt, 999999)


async def test_hotlist_and_site_sources(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    await pushkit.set_hot(rt, RETENTION_ITEMS_DAYS=3650)  # the recorded lists date from 2024
    server.add("/api/s?id=weibo", (DATA / "hotlist.json").read_bytes(), content_type="application/json")
    server.add("/list.html", (DATA / "site_list.html").read_bytes(), content_type="text/html; charset=utf-8")
    hot = await add(rt, user, server.base_url, type="hotlist", config={"source_id": "weibo"})
    assert (await source(rt, hot))["url"] == server.url("/api/s?id=weibo")
    site = await add(
        rt,
        user,
        server.url("/list.html"),
        type="site",
        config={"selectors": {"item": "li.entry", "title": "h3.t", "snippet": "p.summary", "time": "time, .when"}},
    )
    summary = await ingest.run_due(rt)
    assert (summary.ok, summary.failed) == (2, 0)
    assert await rt.pool.fetchval("SELECT count(*) FROM item_sources WHERE source_id = $1", hot) >= 3
    urls = {r["url"] for r in await rt.pool.fetch("SELECT url FROM items WHERE source_id = $1", site)}
    assert urls == {server.url("/news/2024/first.html"), "https://other.example.org/abs", server.url("/root/third")}
    assert (await source(rt, site))["fetch_interval_sec"] == 1800  # site and hot-list default


# --- pure scheduling and text rules ------------------------------------------------------------------------------


def test_learn_interval() -> None:
    now = datetime(2024, 5, 1, tzinfo=UTC)
    assert schedule.learn_interval(900, [], now) is None
    assert schedule.learn_interval(900, [None, None], now) is None
    # 20 items over the last 24 h: about one every 72 min -> poll every 36 min, rounded down to 30 min
    busy = [now - timedelta(hours=24 * i / 20) for i in range(1, 21)]
    assert schedule.learn_interval(900, busy, now) == 1800
    # a little busier or quieter: the same interval (a steady interval keeps the source's slot)
    assert schedule.learn_interval(900, busy[:19], now) == schedule.learn_interval(900, [*busy, now], now) == 1800
    assert [schedule.on_ladder(s) for s in (200, 300, 2699, 2700, 10**6)] == [200, 300, 1800, 2700, 86400]
    # very busy feed: the lower bound (5 min for a 15 min base)
    flood = [now - timedelta(seconds=30 * i) for i in range(1, 21)]
    assert schedule.learn_interval(900, flood, now) == 300
    # nothing this week: slow down to 4x the base
    assert schedule.learn_interval(900, [now - timedelta(days=30)], now) == 3600
    # a user's 2 min base is never sped past, a 12 h base never slowed past 24 h
    assert schedule.learn_interval(120, flood, now) == 120
    assert schedule.learn_interval(43200, [now - timedelta(days=30)], now) == 86400
    assert schedule.interval_bounds(86400) == (21600, 86400)


def test_backoff_and_jitter() -> None:
    assert [schedule.backoff_delay(900, s) for s in (1, 2, 3, 4)] == [900, 1800, 3600, 7200]
    assert schedule.backoff_delay(900, 50) == 86400
    rng = random.Random(1)
    values = [schedule.jittered(1000, rng) for _ in range(500)]
    assert 900 <= min(values) < 920 and 1080 < max(values) <= 1100
    now = datetime(2024, 5, 1, tzinfo=UTC)
    late = now + timedelta(days=10)
    assert schedule.next_after_failure(900, 1, now, late) == now + timedelta(days=1)  # Retry-After capped at 24 h


def test_sources_fetched_together_spread_over_their_interval() -> None:
    """A herd (every source fetched in the same second, as after an OPML import) spreads evenly over the
    interval: after one more fetch every source is on its slot and fetched exactly every interval from then on;
    no gap is shorter than 75 % or longer than 175 % of the interval."""
    interval, start = 600, datetime(2024, 5, 1, tzinfo=UTC)
    fetched = {sid: start for sid in range(1, 1001)}
    for round_ in range(3):
        for sid, at in fetched.items():
            nxt = schedule.next_after_success(interval, at, None, schedule.phase_of(sid))
            gap = (nxt - at).total_seconds()
            assert 0.75 * interval <= gap <= 1.75 * interval
            if round_ >= 1:
                assert gap == pytest.approx(interval)
            fetched[sid] = nxt
    buckets = [0] * 10  # where in the interval each source is fetched now
    for at in fetched.values():
        buckets[int(at.timestamp() % interval / interval * 10)] += 1
    assert min(buckets) >= 80 and max(buckets) <= 120, buckets  # 100 each when even; a herd would be one bucket
    on_phase = fetched[7]
    hint = on_phase + timedelta(hours=2)  # a server's Retry-After / max-age still wins
    assert schedule.next_after_success(interval, on_phase, hint, schedule.phase_of(7)) == hint


def test_fetches_that_run_late_stay_on_their_slot() -> None:
    """A busy worker fetches each source a little after it was due: the next fetch is still due on the slot, so
    the source is fetched about every interval, not pushed later round after round."""
    interval, phase = 60, schedule.phase_of(42)
    due = datetime(2024, 5, 1, tzinfo=UTC)
    fetches = []
    for k in range(50):
        at = due + timedelta(seconds=3 + 9 * (k % 2))  # 5 % or 20 % of the interval late
        fetches.append(at)
        due = schedule.next_after_success(interval, at, None, phase)
        assert due.timestamp() % interval == pytest.approx(phase * interval, abs=1e-3) or k == 0
    gaps = [(b - a).total_seconds() for a, b in itertools.pairwise(fetches)]
    assert sum(gaps) / len(gaps) == pytest.approx(interval, abs=1)
    assert max(gaps) <= 1.25 * interval


def test_a_source_whose_interval_just_changed_moves_at_most_ten_percent() -> None:
    """Its slot (a position within the new interval) is anywhere: a long delay after every change would poll
    feeds whose rate wobbles less often than asked."""
    start = datetime(2024, 5, 1, tzinfo=UTC)
    gaps = [
        (schedule.next_after_success(900, start, None, schedule.phase_of(sid), settled=False) - start).total_seconds()
        for sid in range(1, 1001)
    ]
    assert 810 <= min(gaps) and max(gaps) <= 990
    assert 880 < sum(gaps) / len(gaps) < 920  # about the interval on average


def test_same_story_text() -> None:
    text = "The council approved the new bridge budget after a long debate on Tuesday evening."
    assert dedupe.same_story_text(text, text + " (AP)", "Bridge")
    assert dedupe.same_story_text(text, text[:60] + "…", "Bridge")
    assert not dedupe.same_story_text(text, "Completely unrelated words about the weather and rain.", "Bridge")
    assert dedupe.same_story_text("", "", "A sufficiently long headline")
    assert not dedupe.same_story_text("", "", "Update")
    assert dedupe.same_story_text("", "", "北京今日发布暴雨红色预警信号")


# --- parse pool ----------------------------------------------------------------------------------------------


def _die(*_: object) -> None:
    os._exit(3)


def _hang(*_: object) -> None:
    time.sleep(30)


def _slow_parse(delay: float, *args: Any) -> Any:
    time.sleep(delay)
    return rss_parse(*args)


def test_parse_workers_load_no_http_stack_or_database_driver() -> None:
    """What a parse process imports (the forkserver preloads this module, the workers are forked from it and
    unpickle the parse functions of infosentry.sources): feedparser and our parsing, not aiohttp, asyncpg or
    numpy, which would add ~15 MiB to each of them."""
    probe = (
        "import sys, infosentry.ingest.parsing, infosentry.sources.rss, infosentry.sources.hotlist, "
        "infosentry.sources.site; print(' '.join(sorted({m.split('.')[0] for m in sys.modules})))"
    )
    loaded = set(
        subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout.split()
    )
    assert "feedparser" in loaded
    assert not loaded & {"aiohttp", "asyncpg", "numpy", "openai", "procrastinate", "psycopg", "prometheus_client"}


async def test_parse_pool_survives_crashing_and_hanging_parsers() -> None:
    pool = parsing.ParsePool(workers=1, timeout=5)  # a death is noticed well within it, even on a loaded box
    body = rss([story(1)]).encode()
    try:
        feed = await pool.run(rss_parse, body, "application/rss+xml", "https://x.example/", {})
        assert feed.items[0].url_hash and feed.items[0].url == "https://news.example/story/1"
        with pytest.raises(FetchError, match="died"):
            await pool.run(_die, body)
        started = time.monotonic()
        with pytest.raises(FetchError, match="longer than"):
            await pool.run(_hang, body)
        assert time.monotonic() - started < 15
        feed = await pool.run(rss_parse, body, "application/rss+xml", "https://x.example/", {})
        assert len(feed.items) == 1
    finally:
        pool.shutdown()


async def test_a_hanging_or_crashing_parse_does_not_fail_concurrent_parses() -> None:
    pool = parsing.ParsePool(workers=2, timeout=4)
    body = rss([story(1)]).encode()
    args = (body, "application/rss+xml", "https://x.example/", {})
    try:
        # Both workers up and with this module imported before the clock matters.
        await asyncio.gather(*(pool.run(_slow_parse, 0.0, *args) for _ in range(2)))
        started = time.monotonic()
        hung = asyncio.create_task(pool.run(_hang, body))
        await asyncio.sleep(2)
        # When the hang times out (t=4 s) the first of these is mid-parse on the other worker (t=2..5 s) and
        # the second is waiting for a worker.
        good = [asyncio.create_task(pool.run(_slow_parse, delay, *args)) for delay in (3.0, 0.5)]
        with pytest.raises(FetchError, match="longer than"):
            await hung
        feeds = await asyncio.gather(*good)
        assert [len(f.items) for f in feeds] == [1, 1]
        assert time.monotonic() - started < 15
        died = asyncio.create_task(pool.run(_die, body))
        good = [asyncio.create_task(pool.run(_slow_parse, 0.5, *args)) for _ in range(2)]
        with pytest.raises(FetchError, match="died"):
            await died
        assert [len(f.items) for f in await asyncio.gather(*good)] == [1, 1]
    finally:
        pool.shutdown()


# --- the job ----------------------------------------------------------------------------------------------------


async def test_ingest_due_job_runs_in_a_worker(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    server.add("/job.xml", rss([story(1)]))
    await add(rt, user, server.url("/job.xml"))
    async with queue.open_queue(rt.dsn) as qapp:
        await queue.nudge(qapp, "ingest_due")
        await queue.nudge(qapp, "ingest_due")  # collapses into the queued one
        assert await rt.pool.fetchval("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'ingest_due'") == 1
        await qapp.run_worker_async(
            queues=["ingest"], wait=False, install_signal_handlers=False, additional_context={"rt": rt}
        )
    assert server.hits("/job.xml") == 1
    done = await rt.pool.fetch("SELECT task_name, status, queue_name FROM procrastinate_jobs ORDER BY id")
    assert (done[0]["task_name"], done[0]["status"]) == ("ingest_due", "succeeded")
    assert ("embed_pending", "todo") in [(r["task_name"], r["status"]) for r in done]  # new items nudge embedding
    periodic = {t.task.name for t in jobs.app.periodic_registry.periodic_tasks.values()}
    assert {"ingest_due", "retention"} <= periodic


async def test_prune_logs(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    server.add("/p.xml", rss([story(1)]))
    sid = await add(rt, user, server.url("/p.xml"))
    await ingest.run_due(rt)
    await rt.pool.execute(
        "INSERT INTO ingest_logs (source_id, started_at, duration_ms, status) "
        "SELECT $1, now() - interval '30 days', 1, 'ok' FROM generate_series(1, 5)",
        sid,
    )
    assert (await retention.prune(rt)).ingest_logs == 5
    assert len(await logs(rt, sid)) == 1


async def test_an_item_pruned_between_lookup_and_link_is_skipped_not_fatal(
    rt: Runtime, user: int, server: FakeFeedServer
) -> None:
    server.add("/race.xml", rss([story(1), story(2)]))
    await add(rt, user, server.url("/race.xml"))
    await ingest.run_due(rt)
    kept, pruned = [r["id"] for r in await rt.pool.fetch("SELECT id FROM items ORDER BY id")]
    other = await add(rt, user, server.url("/race.xml?mirror"))
    await rt.pool.execute("DELETE FROM items WHERE id = $1", pruned)  # retention got there first
    links = [(kept, other, "https://k.example/a", None), (pruned, other, "https://k.example/b", None)]
    async with rt.pool.acquire() as conn:
        assert await items_store.link_sources(conn, links) == 1
    assert await rt.pool.fetchval("SELECT count(*) FROM item_sources WHERE source_id = $1", other) == 1


async def test_fractional_retention_horizons_are_honoured(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    # half a day is twelve hours, not zero (a horizon bound as an integer would prune everything)
    await pushkit.set_hot(rt, RETENTION_LOGS_DAYS=0.5)
    server.add("/half.xml", rss([story(1)]))
    sid = await add(rt, user, server.url("/half.xml"))
    await ingest.run_due(rt)
    await rt.pool.execute(
        "INSERT INTO ingest_logs (source_id, started_at, duration_ms, status) "
        "SELECT $1, now() - make_interval(hours => h), 1, 'ok' FROM unnest(ARRAY[11, 13]) AS h",
        sid,
    )
    assert (await retention.prune(rt)).ingest_logs == 1
    assert len(await logs(rt, sid)) == 2  # this fetch's and the one eleven hours old


async def test_pruned_stories_and_entries_older_than_the_retention_never_come_back(
    rt: Runtime, user: int, server: FakeFeedServer
) -> None:
    route = server.add("/keep.xml", rss([{"title": "Undated story", "link": "https://k.example/undated"}]))
    await add(rt, user, server.url("/keep.xml"))
    await ingest.run_due(rt)
    assert await rt.pool.fetchval("SELECT count(*) FROM items") == 1
    await rt.pool.execute("UPDATE items SET ingested_at = now() - interval '31 days'")
    assert (await retention.prune(rt)).items == 1
    # the feed changed (a new story) but still lists the pruned one, and one dated before the retention
    route.body = rss(
        [
            {"title": "Undated story", "link": "https://k.example/undated?utm_source=x"},
            {"title": "Ancient", "link": "https://k.example/ancient", "pub": NOW - timedelta(days=31)},
            {"title": "Fresh", "link": "https://k.example/fresh", "pub": NOW - timedelta(minutes=1)},
        ]
    ).encode()
    await make_due(rt)
    summary = await ingest.run_due(rt)
    assert summary.new_items == 1
    assert [r["title"] for r in await rt.pool.fetch("SELECT title FROM items")] == ["Fresh"]
    # tombstones go after TOMBSTONE_DAYS
    await rt.pool.execute("UPDATE item_tombstones SET pruned_at = now() - interval '91 days'")
    assert (await retention.prune(rt)).tombstones == 1


async def test_health_view(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    server.add("/h.xml", rss([story(1), story(2)]))
    server.add("/bad.xml", "nope", status=503, content_type="text/plain")
    good = await add(rt, user, server.url("/h.xml"))
    bad = await add(rt, user, server.url("/bad.xml"))
    await ingest.run_due(rt)
    rows = {r["id"]: dict(r) for r in await rt.pool.fetch("SELECT * FROM infosentry_source_health")}
    assert next(iter(rows)) == bad  # failing sources first
    assert rows[good]["items_24h"] == 2 and rows[good]["fetches_24h"] == 1 and rows[good]["failures_24h"] == 0
    assert rows[bad]["failures_24h"] == 1 and rows[bad]["last_error_kind"] == "http_status"
    assert rows[bad]["subscribers"] == 1 and rows[bad]["error_streak"] == 1


# --- the command line ------------------------------------------------------------------------------------------


@pytest.fixture
def threaded_server() -> Iterator[FakeFeedServer]:
    """The fake feed server on its own event loop thread, for in-process CLI runs (which call asyncio.run)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    srv = asyncio.run_coroutine_threadsafe(FakeFeedServer().start(), loop).result()
    try:
        yield srv
    finally:
        asyncio.run_coroutine_threadsafe(srv.close(), loop).result()
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()


@pytest.fixture
def cli(dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Any]:
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("INFOSENTRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FETCH_ALLOW_NETWORKS", "127.0.0.1/32")
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    runner = CliRunner()

    def invoke(*args: str) -> Any:
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_cli_source_commands(cli: Callable[..., Any], threaded_server: FakeFeedServer, tmp_path: Path) -> None:
    srv = threaded_server
    srv.add("/", (DATA / "html_page.html").read_bytes(), content_type="text/html; charset=utf-8")
    srv.add("/feed.atom", (DATA / "atom.xml").read_bytes(), content_type="application/atom+xml")
    srv.add("/plain.html", (DATA / "html_no_feed.html").read_bytes(), content_type="text/html")
    srv.add("/rss.xml", rss([story(1), story(2)], title="Direct feed"))
    srv.add("/list.html", (DATA / "site_list.html").read_bytes(), content_type="text/html; charset=utf-8")

    result = cli("source", "add", srv.url("/rss.xml"))
    assert result.exit_code == 1 and "no admin user" in result.output
    assert cli("user", "create", "--email", "admin@example.com", "--admin").exit_code == 0
    assert cli("user", "create", "--email", "other@example.com").exit_code == 0

    # a web page: the feed it advertises is added instead
    result = cli("source", "add", srv.url("/"))
    assert result.exit_code == 0, result.output
    assert f"discovered feed {srv.url('/feed.atom')}" in result.output
    assert f"source 1 added: rss {srv.url('/feed.atom')}" in result.output
    result = cli("source", "add", srv.url("/rss.xml"), "--interval", "600", "--name", "Direct", "--json")
    added = json.loads(result.output)
    assert (added["id"], added["fetch_interval_sec"], added["name"]) == (2, 600, "Direct")
    result = cli("source", "add", srv.url("/plain.html"))
    assert result.exit_code == 1 and "site source" in result.output
    config = json.dumps({"selectors": {"item": "li.entry", "title": "h3.t"}})
    result = cli("source", "add", srv.url("/list.html"), "--type", "site", "--config", config)
    assert result.exit_code == 0 and "added: site" in result.output
    assert cli("source", "add", srv.url("/list.html"), "--type", "site", "--config", "{bad").exit_code == 1
    result = cli("source", "add", srv.url("/rss.xml"), "--email", "other@example.com")
    assert "source 2 added: rss" in result.output  # a new follower of the same source

    result = cli("source", "refresh", "2")
    assert result.exit_code == 0, result.output
    assert "source 2: ok (HTTP 200), 2 fetched, 2 new, 0 duplicate" in result.output
    result = cli("source", "refresh", "2", "--json")
    assert json.loads(result.output)["status"] == "ok"
    assert cli("source", "refresh", "99").exit_code == 1

    rows = json.loads(cli("source", "list", "--json").output)
    assert [(r["id"], r["subscribers"]) for r in rows] == [(1, 1), (2, 2), (3, 1)]
    assert rows[1]["last_success_at"] and rows[1]["items_24h"] == 2 and rows[1]["fetches_24h"] == 2
    table = cli("source", "list").output
    assert "LAST_ERROR_KIND" in table and srv.url("/rss.xml") in table
    assert [r["id"] for r in json.loads(cli("source", "list", "--email", "other@example.com", "--json").output)] == [2]

    exported = cli("source", "export-opml").output
    assert exported.startswith("<?xml") and exported.count("<outline") == 3
    opml_file = tmp_path / "subs.opml"
    opml_file.write_text(exported)
    result = cli("source", "import-opml", str(opml_file), "--email", "other@example.com")
    assert result.output.startswith("added 2, skipped 1, invalid 0"), result.output
    opml_file.write_text("<opml><body><outline xmlUrl='gopher://x'/></body></opml>")
    result = cli("source", "import-opml", str(opml_file))
    assert "invalid 1" in result.output and "gopher://x" in result.output

    catalog = cli("source", "catalog").output
    assert "weibo" in catalog and "hackernews" in catalog
    entries = json.loads(cli("source", "catalog", "--json").output)
    result = cli("source", "import-catalog", "--base-url", srv.base_url, "--json")
    report = json.loads(result.output)
    assert len(report["added"]) == len(entries) and not any(a["enabled"] for a in report["added"])
    assert cli("source", "import-catalog", "--base-url", srv.base_url).output.startswith(
        f"added 0, skipped {len(entries)}"
    )
    hot = [r for r in json.loads(cli("source", "list", "--json").output) if r["type"] == "hotlist"]
    assert len(hot) == len(entries) and all(r["subscribers"] == 0 for r in hot)  # disabled: never fetched


async def test_cancelled_run_releases_unstarted_leases(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    for i in range(6):
        route = server.add(f"/slow{i}.xml", rss([story(i)]))
        route.delay = 5
        await add(rt, user, server.url(f"/slow{i}.xml"))
    task = asyncio.create_task(ingest.run_due(rt, concurrency=2))
    while server.in_flight < 2:
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    leased = await rt.pool.fetchval("SELECT count(*) FROM sources WHERE lease_until IS NOT NULL")
    assert leased == 2  # the two in flight keep their lease; the four waiting are due again at once
    assert await due_count(rt) == 4


async def test_a_slow_fetch_does_not_hold_back_sources_coming_due(
    rt: Runtime, user: int, server: FakeFeedServer
) -> None:
    """While one fetch takes its time, the run claims what comes due meanwhile: waiting for the slow fetch
    before looking again held every source due meanwhile back to be fetched together, as a wave."""
    server.add("/slow.xml", rss([story(1)]), delay=3.0)
    server.add("/soon.xml", rss([story(2)]))
    await add(rt, user, server.url("/slow.xml"))
    soon = await add(rt, user, server.url("/soon.xml"))
    await rt.pool.execute("UPDATE sources SET next_fetch_at = now() + interval '1 s' WHERE id = $1", soon)
    run = asyncio.create_task(ingest.run_due(rt, use_pool=False))
    while server.in_flight < 1:
        await asyncio.sleep(0.01)
    assert (await ingest.run_due(rt)).sources == 0  # one run per process claims: this one returns at once
    summary = await run
    assert summary.sources == 2 and server.hits("/soon.xml") == 1
    fetched = await rt.pool.fetchval("SELECT last_fetch_at FROM sources WHERE id = $1", soon)
    assert fetched < datetime.now(UTC) - timedelta(seconds=1)  # during the slow fetch, not after it


async def test_a_slow_host_does_not_hold_back_other_hosts(
    rt: Runtime, settings: Settings, user: int, server: FakeFeedServer
) -> None:
    """Fetches queued behind a busy host wait without holding the run's slots: before, they held them, and the
    other hosts' sources waited for the slow host's answers (up to the fetch timeout each)."""
    for i in range(6):
        server.add(f"/slow{i}.xml", rss([story(i)]), delay=2.0)
        await add(rt, user, server.url(f"/slow{i}.xml"))
    async with FakeFeedServer("127.0.0.2") as other:
        fast = []
        for i in range(4):
            other.add(f"/fast{i}.xml", rss([story(10 + i)]))
            fast.append(await add(rt, user, other.url(f"/fast{i}.xml")))
        await rt.pool.execute("UPDATE sources SET next_fetch_at = now() - interval '1 h' WHERE id <> ALL($1)", fast)
        started = datetime.now(UTC)
        async with open_runtime(replace(settings, fetch_allow_networks=("127.0.0.1/32", "127.0.0.2/32"))) as rt2:
            summary = await ingest.run_due(rt2, concurrency=4, use_pool=False)
    assert summary.sources == 10 and summary.ok == 10
    began = await rt.pool.fetch("SELECT started_at FROM ingest_logs WHERE source_id = ANY($1)", fast)
    assert len(began) == 4 and all(r["started_at"] - started < timedelta(seconds=1) for r in began)


async def test_a_run_held_back_by_its_hosts_claims_in_batches(
    rt: Runtime, user: int, server: FakeFeedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once a run holds all the sources it may, it claims again CLAIM_BATCH at a time: one claim per finished
    fetch cost a statement per source when one busy host (2 fetches at a time) held the run back."""
    for i in range(60):
        server.add(f"/h{i}.xml", rss([story(i)]))
        await add(rt, user, server.url(f"/h{i}.xml"))
    claimed: list[int] = []
    claim_due = sources_store.claim_due

    async def counting(conn: Any, **kw: Any) -> Any:
        rows = await claim_due(conn, **kw)
        claimed.append(len(rows))
        return rows

    monkeypatch.setattr(sources_store, "claim_due", counting)
    summary = await ingest.run_due(rt, concurrency=4, use_pool=False)  # holds at most 32, claims 4 at a time
    assert summary.sources == summary.ok == 60
    assert sum(claimed) == 60 and claimed[0] == 8  # the first claim: two batches for the 4 slots
    taken = [n for n in claimed if n]
    assert all(n >= 4 for n in taken[:-1]), claimed  # the last may take fewer: all that was left


async def test_a_run_past_its_budget_lets_the_next_claim_while_it_finishes(
    rt: Runtime, user: int, server: FakeFeedServer
) -> None:
    server.add("/slow.xml", rss([story(1)]), delay=3.0)
    server.add("/next.xml", rss([story(2)]))
    await add(rt, user, server.url("/slow.xml"))
    nxt = await add(rt, user, server.url("/next.xml"))
    await rt.pool.execute("UPDATE sources SET next_fetch_at = now() + interval '1 day' WHERE id = $1", nxt)
    first = asyncio.create_task(ingest.run_due(rt, budget=0.5, use_pool=False))
    await asyncio.sleep(1.0)  # past the budget, the slow fetch still in flight
    await rt.pool.execute("UPDATE sources SET next_fetch_at = now() WHERE id = $1", nxt)
    second = await ingest.run_due(rt, use_pool=False)
    assert second.sources == 1 and not first.done()
    assert (await first).sources == 1


async def test_a_source_whose_items_cannot_be_stored_fails_alone(
    rt: Runtime, user: int, server: FakeFeedServer
) -> None:
    # a database-side refusal (here a constraint) hits one source's items inside a batch of many
    await rt.pool.execute("ALTER TABLE items ADD CONSTRAINT no_poison CHECK (url NOT LIKE '%poison%')")
    ids = []
    for i in range(5):
        host = "poison.example" if i == 2 else f"ok{i}.example"
        server.add(f"/b{i}.xml", rss([story(i, host=host), story(i + 10, host=f"ok{i}.example")]))
        ids.append(await add(rt, user, server.url(f"/b{i}.xml")))
    summary = await ingest.run_due(rt, concurrency=5)
    assert (summary.sources, summary.ok, summary.failed) == (5, 4, 1)
    bad = await source(rt, ids[2])
    assert bad["last_error_kind"] == "internal" and "no_poison" in bad["last_error"] and bad["error_streak"] == 1
    assert await rt.pool.fetchval("SELECT count(*) FROM items") == 8
    assert await rt.pool.fetchval("SELECT count(*) FROM ingest_logs") == 5


async def test_unfollowed_sources_are_parked_and_woken(rt: Runtime, user: int, server: FakeFeedServer) -> None:
    server.add("/u.xml", rss([story(1)]))
    sid = await add(rt, user, server.url("/u.xml"))
    await sources_store.set_subscription_enabled(rt.pool, user, sid, False)
    await ingest.run_due(rt)
    parked = await source(rt, sid)
    assert parked["next_fetch_at"] > datetime.now(UTC) + timedelta(hours=23) and server.hits("/u.xml") == 0
    await sources_store.set_subscription_enabled(rt.pool, user, sid, True)  # its follower is back: due at once
    assert (await ingest.run_due(rt)).sources == 1 and server.hits("/u.xml") == 1
    # a second follower joining a source that is followed already does not cause an extra fetch
    other, _ = await make_user(rt, "second@example.com")
    await sources_store.subscribe(rt.pool, other, sid)
    assert (await ingest.run_due(rt)).sources == 0


async def test_a_crashed_workers_sources_are_due_again_within_a_minute(
    rt: Runtime, user: int, server: FakeFeedServer
) -> None:
    """Leases are short and renewed while the fetch runs: a worker that dies right after claiming (kill -9)
    holds its sources at most LEASE_SECONDS (it was 5 minutes: new items reached nobody meanwhile)."""
    server.add("/c.xml", rss([story(1)]))
    sid = await add(rt, user, server.url("/c.xml"))
    claimed = await sources_store.claim_due(rt.pool, limit=10, lease_seconds=ingest.LEASE_SECONDS)
    assert [r["id"] for r in claimed] == [sid]
    row = await source(rt, sid)
    assert ingest.LEASE_SECONDS <= 60
    assert row["lease_until"] - datetime.now(UTC) <= timedelta(seconds=60)
    assert row["next_fetch_at"] - datetime.now(UTC) <= timedelta(seconds=60)


async def test_a_live_run_renews_its_leases_however_slow_the_fetch(
    rt: Runtime, settings: Settings, user: int, server: FakeFeedServer
) -> None:
    """A fetch slower than the lease keeps its source: nobody else fetches it meanwhile."""
    server.add("/slow.xml", rss([story(1)]), delay=6.0)
    sid = await add(rt, user, server.url("/slow.xml"))
    first = asyncio.create_task(ingest.run_due(rt, lease_seconds=4, use_pool=False))
    await asyncio.sleep(5.0)  # past the first lease: only a renewal keeps it
    assert (await source(rt, sid))["lease_until"] > datetime.now(UTC)
    async with open_runtime(settings) as rt2:  # a second worker process
        assert (await ingest.run_due(rt2, lease_seconds=4, use_pool=False)).sources == 0
    assert (await first).new_items == 1
    assert server.hits("/slow.xml") == 1 and (await source(rt, sid))["lease_until"] is None
