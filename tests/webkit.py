"""Helpers for the web app's tests: a signed-in session (the cookie a browser would hold) and a user with goals,
a source, scored items and inbox entries written the way the pipeline writes them."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from infosentry import auth
from infosentry.domain import accounts
from infosentry.runtime import Runtime
from infosentry.store import tokens as tokens_store
from infosentry.store import users as users_store
from tests import pushkit

SESSION_COOKIE = "infosentry_session"


async def session_token(rt: Runtime, user_id: int, *, is_admin: bool = False) -> str:
    """A live web session of the user (what signing in leaves in the browser's cookie)."""
    token = auth.new_token()
    await tokens_store.insert_token(
        rt.pool,
        user_id=user_id,
        token_hash=auth.hash_token(token),
        prefix=token[:10],
        scopes=auth.expand_scopes([], is_admin=is_admin),
        kind="session",
        name="login",
        expires_at=datetime.now(UTC) + timedelta(days=accounts.SESSION_DAYS),
    )
    return token


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no csrf field on the page"
    return match.group(1)


@dataclass
class Seeded:
    user_id: int
    email: str
    token: str  # the session cookie's value
    goal_ids: list[int] = field(default_factory=list)
    source_id: int = 0
    item_ids: list[int] = field(default_factory=list)


TITLES = [
    "Nvidia unveils a new GPU for AI training",
    "Chip makers race to build AI accelerators",
    "SpaceX launches another batch of satellites",
    "Oil prices climb as supply tightens",
    "Olympic committee announces host city",
]
SNIPPETS = [
    "The Blackwell GPU doubles training speed; Nvidia ships it to cloud providers with HBM memory.",
    "TSMC and Samsung expand capacity as demand for AI accelerator chips with HBM memory soars.",
    "The Falcon rocket carried 22 Starlink satellites to low orbit from Cape Canaveral.",
    "Brent crude rose 3% after OPEC kept output cuts in place through the winter.",
    "The committee picked the host of the 2036 Games after a secret ballot in Lausanne.",
]


async def seed_user(
    rt: Runtime,
    email: str = "reader@example.com",
    *,
    admin: bool = False,
    notifications: int = 12,
    language: str = "en",
) -> Seeded:
    """A user with two goals, one source, `notifications` pushed items (tiers in turn, a third of them read) and
    a few scored-but-not-pushed matches; hostile markup in one title to check escaping."""
    user = await users_store.create_user(rt.pool, email, is_admin=admin)
    user_id = user["id"]
    if language != "en":
        await rt.pool.execute("UPDATE users SET language = $2 WHERE id = $1", user_id, language)
    token = await session_token(rt, user_id, is_admin=admin)
    source_id = await pushkit.source(rt, user_id, "Example Wire")
    chips = await pushkit.goal(rt, user_id, "AI chips", description="New AI accelerator chips and GPUs", terms=["GPU"])
    space = await pushkit.goal(rt, user_id, "Space", description="Rocket launches and space exploration")
    seeded = Seeded(user_id, email, token, [chips, space], source_id)
    tiers = ("IMMEDIATE", "BATCH", "DIGEST")
    rows = []
    for n in range(notifications + 4):
        title = TITLES[n % len(TITLES)] + f" #{n}"
        if n == 1:
            title = '<script>alert("x")</script> <b>bold</b> & co'
        item_id = await pushkit.item(rt, source_id, title, snippet=SNIPPETS[n % len(SNIPPETS)])
        seeded.item_ids.append(item_id)
        goal_id = chips if n % 2 == 0 else space
        score = 0.95 - (n % 7) * 0.03
        rows.append((goal_id, item_id, score, tiers[n % 3], n < notifications, n % 3 == 0))
    await rt.pool.executemany(
        """INSERT INTO matches (goal_id, item_id, score, components, reasons)
           VALUES ($1, $2, $3, '{"semantic": 0.8}'::jsonb, '["very close to your goal", "mentions ''GPU''"]'::jsonb)""",
        [(g, i, s) for g, i, s, *_ in rows],
    )
    await rt.pool.executemany(
        """WITH d AS (INSERT INTO decisions (goal_id, item_id, tier, status, score, reason)
                      VALUES ($1, $2, $4, CASE WHEN $5 THEN 'pushed' ELSE 'pending' END, $3, 'very close to your goal')
                      RETURNING id)
           INSERT INTO notifications (user_id, goal_id, item_id, decision_id, tier, score, reason, read_at)
           SELECT $7, $1, $2, d.id, $4, $3, 'very close to your goal', CASE WHEN $6 THEN now() END
           FROM d WHERE $5""",
        [(g, i, s, t, pushed, read, user_id) for g, i, s, t, pushed, read in rows],
    )
    await rt.pool.execute("DELETE FROM decide_queue")  # the seeded decisions are final: nothing for the sweep
    return seeded


async def get(client: Any, path: str, **kw: Any) -> tuple[int, str]:
    resp = await client.get(path, allow_redirects=False, **kw)
    return resp.status, await resp.text()
