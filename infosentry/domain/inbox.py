"""The in-app inbox and what a reader does with an item: list pushed items, mark them read, look at an item,
like or dislike it for a goal, block its source for a goal (and undo), follow a tracked link, and pause a goal
from an email's one-click link.

Imports links (signatures), store.{notifications, items, feedback, goals, decisions}, domain.goals.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from typing import Any

import asyncpg

from infosentry import links
from infosentry.domain import Actor
from infosentry.domain import goals as goals_domain
from infosentry.domain.fields import Fields
from infosentry.errors import BadRequest, NotFound
from infosentry.runtime import Runtime
from infosentry.store import decisions as decisions_store
from infosentry.store import feedback as feedback_store
from infosentry.store import goals as goals_store
from infosentry.store import items as items_store
from infosentry.store import notifications as notifications_store
from infosentry.urls import is_http_url

TIERS = ("IMMEDIATE", "BATCH", "DIGEST")

# Link scanners of mail providers and security gateways open every link of a message; their hits are kept but
# flagged, so click counts stay honest. HEAD requests are scanners too.
_SCANNER = re.compile(
    r"bot\b|bot/|crawl|spider|preview|scanner|barracuda|proofpoint|mimecast|urldefense|safelinks|symantec|"
    r"trendmicro|fortiguard|sophos|forcepoint|messagelabs|microsoft office|ms-office|outlook-ios|"
    r"facebookexternalhit|slack|whatsapp|telegram|discord|skypeuripreview|headless|python-|curl/|wget|"
    r"go-http-client|okhttp|java/|libwww|httpclient|axios|node-fetch",
    re.IGNORECASE,
)


def is_scanner(method: str, user_agent: str) -> bool:
    return method == "HEAD" or not user_agent.strip() or bool(_SCANNER.search(user_agent))


def notification_view(signer: links.Signer, row: asyncpg.Record) -> dict[str, Any]:
    return {
        "id": row["id"],
        "goal_id": row["goal_id"],
        "goal_name": row["goal_name"],
        "item": {k: row[k] for k in ("title", "url", "snippet", "source_id", "source_name", "published_at")}
        | {"id": row["item_id"]},
        "tier": row["tier"],
        "score": row["score"],
        "reason": row["reason"],
        "created_at": row["created_at"],
        "read_at": row["read_at"],
        "email_id": row["email_id"],
        "feedback": row["feedback"],
        "click_url": signer.click_url(row["item_id"], row["goal_id"], "in_app"),
    }


async def _my_goal(rt: Runtime, actor: Actor, goal_id: int) -> asyncpg.Record:
    row = await goals_store.get(rt.pool, actor.user_id, goal_id)
    if row is None:
        raise NotFound("no such goal")
    return row


async def notifications(
    rt: Runtime,
    actor: Actor,
    *,
    goal_id: int | None = None,
    status: str | None = None,
    before_id: int | None = None,
    limit: int = 50,
    tier: str | None = None,
) -> list[dict[str, Any]]:
    """Pushed items (never ignored ones), newest first; `status` unread or read, `tier` one of TIERS."""
    if status not in (None, "unread", "read"):
        raise BadRequest("status must be unread or read")
    tier = _tier(tier)
    rows = await notifications_store.list_notifications(
        rt.reader, user_id=actor.user_id, goal_id=goal_id, status=status, before_id=before_id, limit=limit, tier=tier
    )
    signer = await links.signer(rt)
    return [notification_view(signer, r) for r in rows]


def _tier(tier: str | None) -> str | None:
    if tier is None:
        return None
    if tier.upper() not in TIERS:
        raise BadRequest(f"tier must be {', '.join(TIERS[:-1])} or {TIERS[-1]}")
    return tier.upper()


async def unread_counts(rt: Runtime, actor: Actor) -> dict[int, int]:
    """Unread entries per goal id."""
    return await notifications_store.unread_counts(rt.pool, actor.user_id)


async def mark_all_read(rt: Runtime, actor: Actor, *, goal_id: int | None = None, tier: str | None = None) -> int:
    """Mark every unread entry read (of one goal, of one tier, or all); returns how many."""
    tier = _tier(tier)
    if goal_id is not None:
        await _my_goal(rt, actor, goal_id)
    return await notifications_store.mark_all_read(rt.pool, user_id=actor.user_id, goal_id=goal_id, tier=tier)


async def add_click_urls(rt: Runtime, goal_id: int, matches: list[dict[str, Any]]) -> None:
    """Give each match of a goal its signed, tracked link (the pages link matches that were never pushed too)."""
    signer = await links.signer(rt)
    for m in matches:
        m["click_url"] = signer.click_url(m["item"]["id"], goal_id, "in_app")


async def mark_read(rt: Runtime, actor: Actor, notification_id: int) -> dict[str, Any]:
    row = await notifications_store.mark_read(rt.pool, user_id=actor.user_id, notification_id=notification_id)
    if row is None:
        raise NotFound("no such notification")
    return notification_view(await links.signer(rt), row)


async def item(rt: Runtime, actor: Actor, item_id: int) -> dict[str, Any]:
    """An item that reached one of the user's goals or comes from a source they follow, with its score,
    decision and feedback per goal."""
    row = await items_store.item_for_user(rt.pool, user_id=actor.user_id, item_id=item_id)
    if row is None:
        raise NotFound("no such item")
    data = dict(row)
    data["tags"] = list(data["tags"] or [])
    data["goals"] = [dict(r) for r in await items_store.item_goals(rt.pool, user_id=actor.user_id, item_id=item_id)]
    return data


@dataclass
class FeedbackResult:
    goal_id: int
    item_id: int
    feedback: str | None
    blocked_source: dict[str, Any] | None
    cancelled: int  # pending pushes of the blocked source cancelled for this goal


async def give_feedback(rt: Runtime, actor: Actor, item_id: int, body: dict[str, Any]) -> FeedbackResult:
    """like/dislike (changes later scores of similar items for the goal) and/or block the item's source for the
    goal (stops its pushes at once, including pending ones)."""
    f = Fields(body, {"goal_id", "feedback", "block_source"})
    goal_id = f.int("goal_id", required=True, low=1, high=2**62)
    feedback = f.str("feedback", choices=("like", "dislike"))
    block = f.bool("block_source", default=False)
    f.check(
        feedback is not None or block or f.has("feedback"),
        "feedback",
        "give feedback (like or dislike), block_source: true, or both",
    )
    f.done()
    await _my_goal(rt, actor, goal_id)
    row = await items_store.item_for_user(rt.pool, user_id=actor.user_id, item_id=item_id)
    if row is None or not await notifications_store.item_reached_goal(rt.pool, goal_id=goal_id, item_id=item_id):
        raise NotFound("no such item for this goal")
    cancelled = 0
    async with rt.pool.acquire() as conn, conn.transaction():
        if feedback is not None:
            await feedback_store.set_feedback(
                conn, goal_id=goal_id, item_id=item_id, user_id=actor.user_id, feedback=feedback
            )
        if block:
            await feedback_store.block_source(conn, goal_id=goal_id, source_id=row["source_id"], user_id=actor.user_id)
            # at once: what waits in a coalescing window or for a batch window is cancelled in this transaction
            cancelled = await decisions_store.cancel_blocked(conn, goal_id)
    blocked = {"source_id": row["source_id"], "source_name": row["source_name"]} if block else None
    return FeedbackResult(goal_id, item_id, feedback, blocked, cancelled)


async def undo_feedback(rt: Runtime, actor: Actor, item_id: int, goal_id: int) -> None:
    await _my_goal(rt, actor, goal_id)
    if not await feedback_store.delete_feedback(rt.pool, goal_id=goal_id, item_id=item_id):
        raise NotFound("no feedback on this item for this goal")


async def blocked_sources(
    rt: Runtime, actor: Actor, goal_id: int, *, after_source_id: int | None = None, limit: int = 50
) -> list[dict[str, Any]]:
    await _my_goal(rt, actor, goal_id)
    rows = await feedback_store.blocked_sources(rt.pool, goal_id=goal_id, after_source_id=after_source_id, limit=limit)
    return [dict(r) for r in rows]


async def unblock(rt: Runtime, actor: Actor, goal_id: int, source_id: int) -> None:
    """The source's new items can be pushed again (cancelled ones stay cancelled)."""
    await _my_goal(rt, actor, goal_id)
    if not await feedback_store.unblock_source(rt.pool, goal_id=goal_id, source_id=source_id):
        raise NotFound("this source is not blocked for this goal")


async def click(
    rt: Runtime,
    item_id: int,
    *,
    goal_id: int | None,
    channel: str,
    sig: str,
    method: str,
    user_agent: str,
    ip: str | None,
) -> str:
    """Record a click on a signed tracked link (at most one per item, goal, channel and minute) and return the
    item's own URL (never a URL from the request). An unsigned or altered link is NotFound, like a missing item:
    it tells nothing about which items exist."""
    if channel not in links.CHANNELS or not (await links.signer(rt)).check_click(item_id, goal_id, channel, sig):
        raise NotFound("no such link")
    try:
        ip = str(ipaddress.ip_address(ip)) if ip else None
    except ValueError:
        ip = None
    url = await notifications_store.record_click(
        rt.pool,
        item_id=item_id,
        goal_id=goal_id,
        channel=channel,
        user_agent=user_agent[:500] or None,
        ip=ip,
        is_scanner=is_scanner(method, user_agent),
    )
    if url is None:
        raise NotFound("no such item")
    if not is_http_url(url):
        raise NotFound("this item has no web address")
    return url


async def link_target(rt: Runtime, kind: str, owner_id: int, token: str) -> asyncpg.Record | None:
    """What an email's pause link points at (a goal, or a user for a combined digest); NotFound when the link
    is not valid."""
    if not (await links.signer(rt)).check_unsubscribe(kind, owner_id, token):
        raise NotFound("this link is not valid")
    if kind == "goal":
        goal = await goals_store.by_id(rt.pool, owner_id)
        if goal is None:
            raise NotFound("no such goal")
        return goal
    return None


async def pause_by_link(rt: Runtime, kind: str, owner_id: int, token: str) -> list[dict[str, Any]]:
    """RFC 8058 one-click: pause the link's goal, or every active goal of the link's user. The paused goals."""
    goal = await link_target(rt, kind, owner_id, token)
    if goal is not None:
        return [await goals_domain.pause(rt, goal["user_id"], goal["id"])]
    return await goals_domain.pause_all(rt, owner_id)
