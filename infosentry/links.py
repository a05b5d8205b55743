"""Signed links: the click-tracking link of every pushed item (GET /r/{item_id}) and the one-click pause link of
every email. A link carries an HMAC-SHA256 of what it names (item, goal, channel; or goal/user), so nobody can
enumerate item URLs, use our domain as an open redirect, or record clicks for someone else's goal.

The key is SECRET_KEY; without it, a random key kept in the database (made at migration, kept in backups).
Links signed under either stay valid when SECRET_KEY is set later. Imports runtime and store.keys.
"""

from __future__ import annotations

import hashlib
import hmac
from urllib.parse import quote

from infosentry.runtime import Runtime
from infosentry.store import keys as keys_store

CHANNELS = ("email", "in_app", "api", "other")
_SIG_CHARS = 32  # 128 bits of the HMAC: far beyond guessing, short enough for a link


class Signer:
    """Signs with the first key, accepts any (SECRET_KEY first, then the database's key)."""

    def __init__(self, keys: list[bytes], public_url: str) -> None:
        assert keys
        self.keys = keys
        self.public_url = public_url.rstrip("/")

    def _sign(self, key: bytes, message: str) -> str:
        return hmac.new(key, message.encode(), hashlib.sha256).hexdigest()[:_SIG_CHARS]

    def _check(self, message: str, sig: str) -> bool:
        # bytes: compare_digest refuses non-ASCII str, and a signature is whatever a client sends
        given = sig.encode("utf-8", "replace")
        return bool(sig) and any(hmac.compare_digest(self._sign(k, message).encode(), given) for k in self.keys)

    def click_url(self, item_id: int, goal_id: int, channel: str) -> str:
        sig = self._sign(self.keys[0], f"click:{int(item_id)}:{int(goal_id)}:{channel}")
        return f"{self.public_url}/r/{int(item_id)}?goal_id={int(goal_id)}&channel={quote(channel, safe='')}&sig={sig}"

    def check_click(self, item_id: int, goal_id: int | None, channel: str, sig: str) -> bool:
        return goal_id is not None and self._check(f"click:{item_id}:{goal_id}:{channel}", sig)

    def unsubscribe_url(self, kind: str, owner_id: int) -> str:
        path = "goals" if kind == "goal" else "users"
        token = self._sign(self.keys[0], f"unsubscribe:{kind}:{int(owner_id)}")
        return f"{self.public_url}/api/v1/{path}/{int(owner_id)}/unsubscribe?token={token}"

    def check_unsubscribe(self, kind: str, owner_id: int, token: str) -> bool:
        return self._check(f"unsubscribe:{kind}:{owner_id}", token)


async def signer(rt: Runtime) -> Signer:
    """This process's signer (the database key is read once)."""
    cached = rt.extras.get("links_signer")
    if cached is None:
        keys = [rt.settings.secret_key.encode()] if rt.settings.secret_key else []
        keys.append((await keys_store.link_key(rt.pool)).encode())
        cached = rt.extras["links_signer"] = Signer(keys, rt.settings.public_url)
    return cached
