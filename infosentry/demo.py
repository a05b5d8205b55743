"""`infosentry demo`: the whole pipeline offline, on bundled sample feeds, in under a minute.

Embedded Postgres in the data dir (or DATABASE_URL), migrations, a local feed server on 127.0.0.1 serving
infosentry/demo_data/*.xml (public AG News snippets plus a few items written to match the demo goals), the
local embedder, no LLM (boundary items fall back to BATCH, as the contract says), and SMTP replaced by the
file sink: every email is an .eml file in <data dir>/demo-mail/. The real jobs run in an in-process worker;
then, unless told not to, the clock is fast-forwarded to the next batch window and digest so those emails
exist too. Idempotent: a second run finds everything in place and pushes nothing twice.
Imports anything (an entry point).
"""

from __future__ import annotations

import asyncio
import html
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from importlib import resources
from pathlib import Path
from typing import Any

from aiohttp import web

from infosentry import db, embed, jobs, migrate, push
from infosentry.domain import Actor, accounts, goals, sources
from infosentry.queue import QUEUES
from infosentry.runtime import Runtime, open_runtime
from infosentry.settings import Settings
from infosentry.store import decisions as decisions_store
from infosentry.store import emails as emails_store
from infosentry.store import goals as goals_store
from infosentry.store import items as items_store
from infosentry.store import matches as matches_store
from infosentry.store import monitoring as monitoring_store
from infosentry.store import notifications as notifications_store
from infosentry.store import users as users_store

DEMO_EMAIL = "demo@infosentry.local"
FEEDS = {
    "world.xml": "Demo world news",
    "business.xml": "Demo business news",
    "scitech.xml": "Demo science and technology",
    "sports.xml": "Demo sports",
}
GOALS = [
    {
        "name": "Space exploration",
        "description": "NASA and other space agencies: rocket launches, Mars rovers, the International Space "
        "Station, and discoveries about planets, moons and stars",
        "priority_terms": ["NASA", "Mars", "space station"],
    },
    {
        "name": "Oil and energy prices",
        "description": "Crude oil prices, OPEC production decisions, and what they mean for energy markets and "
        "petrol prices",
        "priority_terms": ["oil", "OPEC", "crude"],
    },
    {
        "name": "Olympic Games",
        "description": "The Athens Olympic Games: medal results, athletes, records and doping cases",
        "priority_terms": ["Olympic", "Athens", "gold medal"],
    },
]
PREFERRED_PORT = 47823  # a stable feed URL keeps the demo sources the same across runs
_PUBDATE = re.compile(r"<pubDate>MINUTES_AGO:(\d+)</pubDate>")


def data_dir() -> Any:
    return resources.files("infosentry") / "demo_data"


# --- the feed server ---------------------------------------------------------------------------------------


class FeedServer:
    """Serves the bundled feeds on 127.0.0.1, with publication times relative to now (fresh items, so the new
    sources' first fetch is not taken for a back catalogue)."""

    def __init__(self) -> None:
        self.port = 0
        self._runner: web.AppRunner | None = None

    async def start(self) -> FeedServer:
        app = web.Application()
        app.router.add_get("/{name}", self._feed)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        for port in (PREFERRED_PORT, 0):
            try:
                site = web.TCPSite(self._runner, "127.0.0.1", port)
                await site.start()
            except OSError:
                continue
            server = site._server
            assert server is not None and server.sockets
            self.port = server.sockets[0].getsockname()[1]
            return self
        raise OSError("no free port on 127.0.0.1 for the demo feed server")

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    async def _feed(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in FEEDS:
            raise web.HTTPNotFound()
        text = (data_dir() / name).read_text("utf-8")
        now = datetime.now(UTC)
        text = _PUBDATE.sub(lambda m: f"<pubDate>{format_datetime(now - timedelta(minutes=int(m[1])))}</pubDate>", text)
        return web.Response(text=text, content_type="application/rss+xml", charset="utf-8")

    async def close(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


# --- running it --------------------------------------------------------------------------------------------


@dataclass
class DemoResult:
    pushed: list[dict[str, Any]] = field(default_factory=list)
    waiting: list[dict[str, Any]] = field(default_factory=list)
    ignored: int = 0
    below_floor: int = 0
    items: int = 0
    emails: list[dict[str, Any]] = field(default_factory=list)
    mail_dir: Path = Path()
    eml_files: list[Path] = field(default_factory=list)
    seconds: float = 0.0
    fast_forward: list[str] = field(default_factory=list)


def demo_settings(settings: Settings) -> Settings:
    """The demo's process settings: local embedder, no LLM, file sink, loopback fetching allowed (in this
    process only), IMMEDIATE emails at once. Nothing of this is written to the config table."""
    mail_dir = Path(settings.data_dir) / "demo-mail"
    return replace(
        settings,
        smtp_host=f"file:{mail_dir}",
        embed_provider="local",
        openai_api_key="",
        fetch_allow_networks=tuple(dict.fromkeys((*settings.fetch_allow_networks, "127.0.0.1/32"))),
        hot_defaults={**settings.hot_defaults, "IMMEDIATE_COALESCE_MINUTES": "0", "EMAIL_ENABLED": "true"},
    )


async def run(
    settings: Settings, *, say: Callable[[str], None] = print, fast_forward: bool = True, timeout: float = 50.0
) -> DemoResult:
    started = time.perf_counter()
    settings = demo_settings(settings)
    say(f"infosentry demo — data dir {settings.data_dir}")
    dsn = db.resolve_dsn(settings)
    async with db.plain_connection(dsn) as conn:
        applied = await migrate.upgrade(conn)
    say(
        f"  database ready ({'embedded Postgres' if not settings.database_url else 'DATABASE_URL'}"
        f"{f', {len(applied)} migrations applied' if applied else ''})"
    )
    server = await FeedServer().start()
    say(f"  sample feeds on http://127.0.0.1:{server.port}/ ({', '.join(FEEDS)})")
    try:
        async with open_runtime(settings, role="demo") as rt:
            user_id, goal_ids, source_ids = await _setup(rt, server)
            # goal vectors first, so the items of the first fetch are scored as new (not as a goal backfill)
            await embed.run(rt)
            qapp = await rt.queue(max_size=10)
            beat = asyncio.create_task(jobs.heartbeat_loop(rt, QUEUES))  # as `infosentry worker` does
            worker = asyncio.create_task(
                jobs.run_worker(rt, qapp, QUEUES, concurrency=4, install_signal_handlers=False)
            )
            try:
                await rt.nudge("ingest_due")
                say("  worker running: ingest → embed → match → decide → push → email ...")
                await _wait_quiet(rt, user_id, source_ids, timeout=max(5.0, timeout - (time.perf_counter() - started)))
            finally:
                worker.cancel()
                beat.cancel()
                await asyncio.gather(worker, beat, return_exceptions=True)
            result = DemoResult(mail_dir=Path(settings.smtp_host.removeprefix("file:")))
            if fast_forward:
                result.fast_forward = await _fast_forward(rt, goal_ids)
            await push.send_due(rt)
            await _collect(rt, user_id, goal_ids, result)
    finally:
        await server.close()
    result.seconds = time.perf_counter() - started
    return result


async def _setup(rt: Runtime, server: FeedServer) -> tuple[int, list[int], list[int]]:
    pool = rt.pool
    user = await users_store.get_or_create_user(pool, DEMO_EMAIL)
    actor = Actor(user_id=user["id"], email=DEMO_EMAIL, timezone=rt.settings.tz)
    await accounts.update_profile(rt, actor, {"timezone": rt.settings.tz})
    source_ids = []
    for name, title in FEEDS.items():
        url = server.url(name)
        existing = [
            r
            for r in await sources.list_sources(rt, actor, limit=100)
            if r["name"] == title or r["url"].endswith(f"/{name}")
        ]
        if existing:
            row = existing[0]
            if row["url"] != url:  # the feed server got another port this time
                await sources.edit(rt, actor, row["id"], {"url": url})
            source_ids.append(row["id"])
        else:
            followed = await sources.follow(rt, actor, {"url": url, "name": title})
            source_ids.append(followed.source["id"])
    mine = {g["name"]: g["id"] for g in await goals.list_goals(rt, actor, limit=100)}
    goal_ids = []
    for spec in GOALS:
        if spec["name"] in mine:
            goal_ids.append(mine[spec["name"]])
            continue
        row = await goals.create(rt, actor, spec)
        goal_ids.append(row["id"])
    return user["id"], goal_ids, source_ids


async def _wait_quiet(rt: Runtime, user_id: int, source_ids: list[int], *, timeout: float) -> None:
    """Until every source was fetched, every item embedded and matched, every decision made and flushed, and
    every email written: the same answer twice in a row."""
    deadline = time.monotonic() + timeout
    last = None
    state: dict[str, int] = {}
    while time.monotonic() < deadline:
        state = await monitoring_store.pipeline_backlog(rt.pool, source_ids, user_id)
        busy = state["unfetched"] or state["unmatched"] or state["undecided"] or state["unflushed"] or state["unsent"]
        if not busy and state["items"] and last == state:
            return
        last = state
        await asyncio.sleep(0.5)
    raise TimeoutError(f"the demo pipeline did not settle within {timeout:.0f} s: {state}")


async def _fast_forward(rt: Runtime, goal_ids: list[int]) -> list[str]:
    """Fire the next batch window and the next digest of each demo goal now (a simulated clock): the slots are
    the real ones, so they fire exactly once, and the emails land in the sink like any other."""
    notes = []
    rows = await goals_store.schedules(rt.pool, goal_ids)
    now = push.utcnow()
    for row in rows:
        tz = push.zone(row["timezone"], rt.settings.tz)
        local = now.astimezone(tz)
        windows = []
        for day in (local.date(), local.date() + timedelta(days=1)):
            windows += [push.slot_instant(day, w, tz) for w in row["batch_windows"]]
        upcoming = [w for w in sorted(windows) if w > now]
        digest = min(
            d
            for d in (push.slot_instant(local.date() + timedelta(days=k), row["digest_time"], tz) for k in (0, 1))
            if d > now
        )
        if upcoming:
            await push.flush_windows(rt, upcoming[0] + timedelta(seconds=1))
            notes.append(f"the {upcoming[0].strftime('%Y-%m-%d %H:%M %Z')} batch window")
        await push.flush_digests(rt, digest + timedelta(seconds=1))
        notes.append(f"the {digest.strftime('%Y-%m-%d %H:%M %Z')} digest")
    return sorted(set(notes))


async def _collect(rt: Runtime, user_id: int, goal_ids: list[int], result: DemoResult) -> None:
    pool = rt.pool
    result.pushed = await notifications_store.pushed_to_user(pool, user_id)
    result.waiting = await decisions_store.pending_for_user(pool, user_id)
    result.ignored = await decisions_store.count_tier(pool, goal_ids, "IGNORE")
    result.below_floor = await matches_store.undecided_count(pool, goal_ids)
    result.items = await items_store.count_visible(pool, user_id)
    result.emails = await emails_store.for_user(pool, user_id)
    if result.mail_dir.is_dir():
        result.eml_files = sorted(result.mail_dir.glob("*.eml"))


def render(result: DemoResult, say: Callable[[str], None] = print) -> None:
    """The human summary: what was pushed, in which tier and why; what waits; where the emails are."""
    say("")
    say(f"{result.items} items ingested from the sample feeds; {len(result.pushed)} pushed to the demo goals:")
    current = None
    for row in result.pushed:
        if row["goal"] != current:
            current = row["goal"]
            say(f"\n  Goal: {current}")
        say(f"    [{row['tier']:<9}] {row['score']:.2f}  {_clip(row['title'], 70)}")
        say(f"                     why: {_clip(row['reason'], 110)}")
        if row.get("rule"):
            say(f"                     rule: {_clip(row['rule'], 110)}")
    if result.waiting:
        say("\n  Decided, waiting for a later window or digest:")
        for row in result.waiting:
            say(f"    [{row['tier']:<9}] {row['score']:.2f}  {row['goal']}: {_clip(row['title'], 60)}")
    say(f"\n  Not pushed: {result.ignored} ignored by a gate, {result.below_floor} scored below DIGEST_MIN_SCORE.")
    if result.fast_forward:
        say("  Clock fast-forwarded (simulated) to fire " + " and ".join(result.fast_forward) + " of each goal.")
    say(
        f"\n{len(result.emails)} emails ({', '.join(sorted({e['kind'] for e in result.emails})) or 'none'}), "
        f"written as .eml files to {result.mail_dir}:"
    )
    for path in result.eml_files:
        say(f"  {path.name}")
    say(
        f"\nDone in {result.seconds:.1f} s. Open an .eml file in a mail client, or list the inbox: "
        f"infosentry inbox --email {DEMO_EMAIL}"
    )


def _clip(text: str, n: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


# --- building the sample feeds (run once; the output is committed under infosentry/demo_data/) -------------

_SPLIT_MARKERS = re.compile(r"\s\((?:AP|Reuters|AFP|SPACE\.com|Canadian Press|CP)\)\s")
CRAFTED = {
    "scitech.xml": [
        (
            "NASA launches rocket carrying new Mars rover",
            "NASA launched a rocket from Cape Canaveral on Saturday carrying its new Mars rover, the agency's most "
            "ambitious mission to Mars yet; astronauts on the International Space Station watched the launch.",
            3,
        ),
        (
            "Space station crew prepares for spacewalk",
            "The two astronauts aboard the International Space Station are preparing for a spacewalk next week to "
            "repair a cooling pump, NASA said.",
            25,
        ),
    ],
    "business.xml": [
        (
            "Oil prices jump as OPEC agrees to cut crude output",
            "Crude oil prices jumped to a record on Friday after OPEC ministers agreed to cut production, pushing "
            "up petrol prices and energy stocks around the world.",
            5,
        ),
    ],
    "sports.xml": [
        (
            "Athens Olympic Games: swimmer wins third gold medal",
            "At the Athens Olympic Games a swimmer won her third gold medal and set a new Olympic record in the "
            "200m freestyle final on Tuesday night.",
            8,
        ),
    ],
}


_NUMERIC = {"39": "'", "36": "$", "146": "'", "151": " — ", "145": "'", "147": '"', "148": '"', "38": "&"}


def _clean(text: str) -> str:
    """AG News escapes: '&lt;b&gt;...&lt;/b&gt;' fragments, and ' #39;' for an apostrophe (a space before)."""
    text = re.sub(r"&lt;.*?&gt;", " ", text).replace("\\$", "$")
    text = re.sub(r"\s?#(\d+);", lambda m: _NUMERIC.get(m[1], ""), text)
    return " ".join(html.unescape(text).split())


def split_title(text: str) -> tuple[str, str] | None:
    """AG News rows are 'Title Body'. Rows with a wire marker ("Title CITY (Reuters) - Body") split cleanly;
    the others are skipped (None), so every demo title is a real headline."""
    text = _clean(text)
    marker = _SPLIT_MARKERS.search(text)
    if not marker or marker.start() < 10:
        return None
    title = text[: marker.start()].strip()
    title = re.sub(r"(?:\s+[A-Z][A-Z./'-]+(?:\s[A-Z][A-Z./'-]+)*[,:]?)+$", "", title).strip(" ,:-")  # dateline
    title = re.sub(r"\s+[Bb]y$", "", title)  # a byline's first word
    body = text[marker.end() :].lstrip("-– ").strip()
    if len(title) < 12 or len(body) < 40:
        return None
    return title, body


# --- serving the result (demo --serve) ---------------------------------------------------------------------


async def serve(
    settings: Settings, *, host: str, port: int, say: Callable[[str], None] = print, stop: asyncio.Event | None = None
) -> None:
    """Serve the web app on the demo's database until Ctrl-C (or `stop`), and print a sign-in link for the demo
    user and the URL of the demo's inbox. Nothing is fetched or sent meanwhile (the API role only)."""
    from infosentry.api import create_app
    from infosentry.api.http import RT

    app = create_app(demo_settings(settings), role="api")
    # Ctrl-C ends a demo: open keep-alive connections (a browser's) get 5 s, not aiohttp's default minute
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=5)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        link = await accounts.login_link(app[RT], DEMO_EMAIL)
        say(f"  web app on {settings.public_url}/ — sign in as {DEMO_EMAIL} (link valid 30 minutes):")
        say(f"    {link}")
        say("  serving until Ctrl-C; the demo's inbox:")
        say(f"{settings.public_url}/inbox")
        await (stop or asyncio.Event()).wait()
    finally:
        await runner.cleanup()
