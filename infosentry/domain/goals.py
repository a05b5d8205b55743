"""Goals: what a user tracks. Create, edit, pause, resume, delete, list, and a goal's scored items.

Changing the scored text (name, description, terms, mode) bumps the goal's version: the embed job builds the
new goal vector and scores the last 72 h of items again. Another user's goal is NotFound, never Forbidden.
Imports store.goals, store.matches, store.decisions, hotconfig, domain.fields.
"""

from __future__ import annotations

import re
from typing import Any

import asyncpg

from infosentry import hotconfig, judge, match, push
from infosentry.domain import Actor
from infosentry.domain.fields import Fields, valid_email, valid_timezone
from infosentry.embedders import lexical
from infosentry.errors import BadRequest, Invalid, NotFound
from infosentry.runtime import Runtime
from infosentry.store import decisions as decisions_store
from infosentry.store import goals as goals_store
from infosentry.store import items as items_store
from infosentry.store import matches as matches_store

STATUSES = ("active", "paused", "archived")
FIELDS = {
    "name",
    "description",
    "priority_terms",
    "negative_terms",
    "priority_mode",
    "batch_windows",
    "digest_time",
    "timezone",
    "email",
    "language",
    "status",
    "batch_enabled",
    "digest_enabled",
}
NAME_MAX = 100


def view(row: asyncpg.Record) -> dict[str, Any]:
    """A goal as its owner sees it (API, pages, CLI)."""
    out = dict(row)
    out.pop("user_id", None)
    out.pop("embedding_model", None)
    return out


def derive_name(description: str) -> str:
    """A name for a goal created with a description only: its first clause, cut at a word boundary."""
    first = re.split(r"[.;:!?\n。；：！？]", description.strip(), maxsplit=1)[0].strip() or description.strip()
    if len(first) <= 60:
        return first
    cut = first[:60]
    space = cut.rfind(" ")
    return (cut[:space] if space > 30 else cut).rstrip(" ,，、") + "…"


def validate(body: dict[str, Any], *, creating: bool) -> dict[str, Any]:
    """The changes a body asks for, validated and normalised (every error reported at once, as one 422).

    Creating needs only a description: the name is derived from it when missing or empty."""
    f = Fields(body, FIELDS)
    values = {
        "name": f.str("name", max_len=NAME_MAX, min_len=0 if creating else 1),
        "description": f.str("description", required=creating, max_len=2000, min_len=1),
        "priority_terms": f.str_list("priority_terms", max_items=50, max_len=100),
        "negative_terms": f.str_list("negative_terms", max_items=50, max_len=100),
        "priority_mode": f.str("priority_mode", choices=("SOFT", "STRICT")),
        "timezone": f.str("timezone", max_len=64, min_len=1),
        "email": f.str("email", max_len=254, nullable=True),
        "language": f.str("language", choices=("en", "zh"), nullable=True),
        "status": f.str("status", choices=STATUSES),
        "digest_time": f.str("digest_time", max_len=5),
        "batch_enabled": f.bool("batch_enabled"),
        "digest_enabled": f.bool("digest_enabled"),
    }
    windows = f.str_list("batch_windows", max_items=3, max_len=5)
    if windows is not None:
        try:
            values["batch_windows"] = hotconfig.parse_hhmm_list(",".join(windows))
        except Invalid as exc:
            f.check(False, "batch_windows", exc.detail)
    if values["digest_time"] is not None:
        try:
            values["digest_time"] = hotconfig.normalise_hhmm(values["digest_time"])
        except Invalid as exc:
            f.check(False, "digest_time", exc.detail)
    if values["timezone"] is not None:
        f.check(valid_timezone(values["timezone"]), "timezone", "must be an IANA time zone such as Asia/Shanghai")
    if values["email"]:
        values["email"] = values["email"].lower()
        f.check(valid_email(values["email"]), "email", "must be an email address")
    f.done()
    out: dict[str, Any] = {}
    for key, value in values.items():
        if f.has(key):
            out[key] = value or None if key in ("email", "language") else value
    if creating and not out.get("name"):
        out["name"] = derive_name(out["description"])
    return out


def _check_recipient(fields: dict[str, Any], actor: Actor) -> None:
    """Pushes go to the owner's own (proven) address: otherwise anyone could make the service mail a third party.
    An admin may direct a goal elsewhere (a team list, for instance)."""
    email = fields.get("email")
    if email and not actor.is_admin and email != actor.email.lower():
        raise Invalid(
            "email: must be your own address (only an admin can send a goal's pushes elsewhere)",
            errors=[{"field": "email", "message": "must be your own address"}],
        )


async def create(rt: Runtime, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
    """Store a new goal with the defaults (the user's time zone, DEFAULT_BATCH_WINDOWS, DEFAULT_DIGEST_TIME),
    at most MAX_GOALS_PER_USER (hot config) per user; the embed job builds its vector and scores the last 72 h."""
    fields = validate(body, creating=True)
    _check_recipient(fields, actor)
    fields.setdefault("timezone", actor.timezone)
    fields.setdefault("batch_windows", hotconfig.parse_hhmm_list(rt.hot["DEFAULT_BATCH_WINDOWS"]))
    fields.setdefault("digest_time", rt.hot["DEFAULT_DIGEST_TIME"])
    async with rt.pool.acquire() as conn, conn.transaction():
        await goals_store.lock_owner(conn, actor.user_id)
        limit = int(rt.hot["MAX_GOALS_PER_USER"])
        if await goals_store.count(conn, actor.user_id) >= limit:
            raise Invalid(f"at most {limit} goals per user (MAX_GOALS_PER_USER); delete one first")
        row = await goals_store.create(conn, actor.user_id, fields)
    await rt.nudge("embed_pending")
    return view(row)


async def get(rt: Runtime, actor: Actor, goal_id: int) -> dict[str, Any]:
    row = await goals_store.get(rt.pool, actor.user_id, goal_id)
    if row is None:
        raise NotFound("no such goal")
    return view(row)


async def list_goals(
    rt: Runtime, actor: Actor, *, status: str | None = None, limit: int = 200, after_id: int = 0
) -> list[dict[str, Any]]:
    if status is not None and status not in STATUSES:
        raise BadRequest(f"status must be {', '.join(STATUSES[:-1])} or {STATUSES[-1]}")
    rows = await goals_store.list_goals(rt.pool, actor.user_id, limit=limit, after_id=after_id, status=status)
    return [view(r) for r in rows]


async def update(rt: Runtime, actor: Actor, goal_id: int, body: dict[str, Any]) -> dict[str, Any]:
    """Change only the fields given; a new scored text re-embeds the goal and re-scores the last 72 h."""
    changes = validate(body, creating=False)
    _check_recipient(changes, actor)
    return await _apply(rt, actor.user_id, goal_id, changes)


async def _apply(rt: Runtime, user_id: int, goal_id: int, changes: dict[str, Any]) -> dict[str, Any]:
    async with rt.pool.acquire() as conn, conn.transaction():
        row = await goals_store.update(conn, user_id, goal_id, changes)
        if row is None:
            raise NotFound("no such goal")
        if row["status"] != "active":
            # a paused goal pushes nothing, at once: what waits for a coalescing or batch window is cancelled
            await decisions_store.cancel_inactive(conn, goal_id)
    if not row["embedded"] or not row["backfilled"]:
        await rt.nudge("embed_pending")
    return view(row)


async def pause(rt: Runtime, user_id: int, goal_id: int) -> dict[str, Any]:
    """Nothing is scored or pushed for the goal until it is resumed; pending pushes are cancelled. An archived
    goal stays archived."""
    row = await goals_store.get(rt.pool, user_id, goal_id)
    if row is None:
        raise NotFound("no such goal")
    return await _apply(rt, user_id, goal_id, {"status": "paused"} if row["status"] == "active" else {})


async def resume(rt: Runtime, user_id: int, goal_id: int) -> dict[str, Any]:
    """Active again; the items of the last 72 h are scored for it (never as instant alerts)."""
    return await _apply(rt, user_id, goal_id, {"status": "active"})


async def pause_all(rt: Runtime, user_id: int) -> list[dict[str, Any]]:
    """Pause every active goal of a user (the pause link of a combined digest)."""
    paused = []
    for row in await goals_store.list_goals(rt.pool, user_id, limit=10_000, status="active"):
        paused.append(await pause(rt, user_id, row["id"]))
    return paused


async def delete(rt: Runtime, actor: Actor, goal_id: int) -> None:
    """Delete a goal with its matches, decisions and inbox entries."""
    if not await goals_store.delete(rt.pool, actor.user_id, goal_id):
        raise NotFound("no such goal")


async def matches(
    rt: Runtime,
    actor: Actor,
    goal_id: int,
    *,
    min_score: float = 0.0,
    limit: int = 50,
    after: tuple[float, int] | None = None,
) -> list[dict[str, Any]]:
    """The goal's scored items, best first (keyset `after` = (score, item id) of the previous page's last):
    the stored pairs, and every other item the goal sees ranked at read time (match.TailRank)."""
    if await goals_store.get(rt.pool, actor.user_id, goal_id) is None:
        raise NotFound("no such goal")
    rows = await matches_store.goal_matches(rt.reader, goal_id, min_score=min_score, limit=limit, after=after)
    views = [match_view(r) for r in rows]
    # Read-time scores stay at or under their ceiling (the decide floor): a page of stored pairs that ends above
    # it is final, and the exact scan over every item the user sees (tests/bench/bench_tail.py) is spared.
    ceiling = match.decide_floor(rt)
    page_full = len(rows) == limit and float(rows[-1]["score"]) > ceiling
    if min_score <= ceiling and not page_full and (rank := await match.tail_rank(rt, goal_id)) is not None:
        tail = await matches_store.unstored_matches(
            rt.reader,
            goal_id,
            signal=rank.signal,
            m=rank.m,
            s=rank.s,
            z0=rank.z0,
            ceiling=rank.ceiling,
            min_score=min_score,
            limit=limit,
            after=after,
        )
        views = sorted(views + [match_view(r) for r in tail], key=_rank_key, reverse=True)[:limit]
    return views


def _rank_key(view: dict[str, Any]) -> tuple[float, int]:
    return float(view["score"]), int(view["item"]["id"])


def match_view(r: asyncpg.Record) -> dict[str, Any]:
    decision = None
    if r["tier"] is not None:
        decision = {
            "tier": r["tier"],
            "status": r["decision_status"],
            "reason": r["decision_reason"],
            "decided_at": r["decided_at"],
            "pushed_at": r["pushed_at"],
        }
    return {
        "item": {
            "id": r["item_id"],
            "title": r["title"],
            "url": r["url"],
            "snippet": r["snippet"],
            "published_at": r["published_at"],
            "ingested_at": r["ingested_at"],
            "embedding_status": r["embedding_status"],
            "source": {"id": r["source_id"], "name": r["source_name"]},
        },
        "score": r["score"],
        "components": r["components"],
        "reasons": r["reasons"],
        "gate": r["gate"],
        "lexical_only": r["lexical_only"],
        "is_backfill": r["is_backfill"],
        "computed_at": r["computed_at"],
        "decision": decision,
        "feedback": r["feedback"],
        "source_blocked": r["source_blocked"],
    }


# --- writing a goal: terms, suggestions ------------------------------------------------------------------------


def split_terms(text: str) -> tuple[list[str], list[str]]:
    """One field of terms (one per line or comma-separated; a leading '-' marks a negative term) as
    (priority_terms, negative_terms)."""
    priority: list[str] = []
    negative: list[str] = []
    for raw in re.split(r"[\n,，、;；]", text or ""):
        term = " ".join(raw.split())
        target = priority
        if term.startswith("-"):
            term, target = term[1:].strip(), negative
        if term and term not in target:
            target.append(term)
    return priority, negative


def join_terms(priority: list[str], negative: list[str]) -> str:
    return "\n".join([*priority, *(f"-{t}" for t in negative)])


SUGGEST_FIELDS = {"name", "description", "terms", "goal_id"}
SUGGEST_MAX = 8
_SUGGEST_POOL = 1000  # newest items looked at when the goal has no scored items yet
_SUGGEST_TOP = 25  # best-matching items whose words are counted


async def suggest_terms(rt: Runtime, actor: Actor, body: dict[str, Any]) -> dict[str, Any]:
    """Priority terms for a goal being written: from the LLM when it is on and within budget, otherwise the words
    that recur in the items that match the description best (the goal's own scored items when it has some).
    `terms` already written are never suggested again. Answers {terms, source: llm|items|none, note}."""
    f = Fields(body, SUGGEST_FIELDS)
    name = f.str("name", default="", max_len=NAME_MAX)
    description = f.str("description", default="", max_len=2000)
    known = f.str_list("terms", default=[], max_items=100, max_len=101)
    goal_id = f.int("goal_id", low=1, high=2**62)
    f.done()
    text = f"{name}\n{description}".strip()
    if len(text) < 3:
        return {"terms": [], "source": "none", "note": "write a description first"}
    known = [k.lstrip("-").strip() for k in known]
    terms, why = await judge.suggest_terms(rt, name, description, known)
    if terms:
        return {"terms": terms, "source": "llm", "note": ""}
    pool = await items_store.recent_visible_texts(rt.pool, actor.user_id, limit=_SUGGEST_POOL)
    rows: list[Any] = []
    if goal_id is not None and await goals_store.get(rt.pool, actor.user_id, goal_id) is not None:
        rows = list(await matches_store.goal_matches(rt.pool, goal_id, min_score=0.0, limit=_SUGGEST_TOP, after=None))
    if not rows:
        scored = [(lexical.lexical_similarity(text, f"{r['title']} {r['snippet']}"), r) for r in pool]
        rows = [r for score, r in sorted(scored, key=lambda x: -x[0])[:_SUGGEST_TOP] if score > 0.05]
    words = _distinctive_words(rows, pool, exclude=lexical.keywords(text) | {k.casefold() for k in known})
    note = f"from your items ({why})" if why else "from your items"
    return {"terms": words, "source": "items" if words else "none", "note": note}


def _doc_freq(rows: list[Any]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for r in rows:
        for word in lexical.keywords(f"{r['title']} {r['snippet']}"):
            counts[word] = counts.get(word, 0) + 1
    return counts


def _distinctive_words(best: list[Any], pool: list[Any], *, exclude: set[str]) -> list[str]:
    """Words that recur in the best-matching items more than in the user's items at large (so 'says' or a
    feed's boilerplate never wins): ranked by how much more often they occur there."""
    if not best:
        return []
    top, background = _doc_freq(best), _doc_freq(pool)
    need = 2 if len(best) >= 4 else 1
    lift = {}
    for word, n in top.items():
        if n < need or word in exclude:
            continue
        share = n / len(best)
        base = background.get(word, 0) / len(pool) if pool else 0.0
        lift[word] = share - base
    ranked = sorted((w for w, v in lift.items() if v > 0), key=lambda w: (-lift[w], -top[w], w))
    texts = " ".join(f"{r['title']} {r['snippet']}" for r in best)
    return [_as_written(w, texts) for w in ranked[:SUGGEST_MAX]]


def _as_written(word: str, text: str) -> str:
    """The word as the items write it ('Nvidia', 'HBM'), not in the lower case it was counted in."""
    found = re.search(rf"(?<!\w){re.escape(word)}(?!\w)", text, re.IGNORECASE)
    return found.group(0) if found else word


# --- the next batch and digest email ---------------------------------------------------------------------------


async def next_email(rt: Runtime, actor: Actor, goal_id: int, kind: str, *, send: bool = False) -> dict[str, Any]:
    """The goal's next batch or digest email as it would go out now: a preview (nothing changes), or sent now
    (its items are pushed like at a window; the scheduled windows carry on with what comes later)."""
    goal = await goals_store.get(rt.pool, actor.user_id, goal_id)
    if goal is None:
        raise NotFound("no such goal")
    if kind not in ("batch", "digest"):
        raise BadRequest("kind must be batch or digest")
    result = await push.next_email(rt, goal_id, kind, send=send)
    if send and result.email_id is not None:
        await rt.nudge("send_emails")
    out: dict[str, Any] = {"kind": kind, "items": result.items, "email_id": result.email_id}
    if result.rendered is not None:
        out |= {"subject": result.rendered.subject, "html": result.rendered.html, "text": result.rendered.text}
    return out
