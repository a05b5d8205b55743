"""Tokens and scopes: minting, hashing and checking (no HTTP, no SQL here).

Imports errors only.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from infosentry.errors import Invalid

RESOURCES = ("goals", "sources", "notifications", "agent", "admin")
ALL_SCOPES = tuple(f"{r}:{mode}" for r in RESOURCES for mode in ("read", "write"))
USER_SCOPES = tuple(s for s in ALL_SCOPES if not s.startswith("admin:"))
TOKEN_PREFIX = "isk_"


def new_token() -> str:
    return TOKEN_PREFIX + secrets.token_urlsafe(32)


def hash_token(token: str) -> str:
    # 256-bit random tokens: a plain SHA-256 is enough (no brute force is possible), and lets us look up
    # by hash with an index.
    return hashlib.sha256(token.encode()).hexdigest()


def expand_scopes(requested: list[str] | tuple[str, ...], *, is_admin: bool) -> list[str]:
    """'goals' -> goals:read + goals:write; validate; refuse admin scopes for non-admins."""
    allowed = ALL_SCOPES if is_admin else USER_SCOPES
    if not requested:
        return list(allowed)
    scopes: set[str] = set()
    for raw in requested:
        scope = raw.strip().lower()
        if scope in RESOURCES:
            scopes.update((f"{scope}:read", f"{scope}:write"))
        elif scope in ALL_SCOPES:
            scopes.add(scope)
        else:
            raise Invalid(f"unknown scope {raw!r}; known: {', '.join(RESOURCES)} (optionally :read or :write)")
    refused = scopes - set(allowed)
    if refused:
        raise Invalid(f"scopes {', '.join(sorted(refused))} need an admin user")
    return sorted(scopes)


def has_scope(scopes: list[str], needed: str) -> bool:
    """A write scope implies read on the same resource."""
    if needed in scopes:
        return True
    resource, _, mode = needed.partition(":")
    return mode == "read" and f"{resource}:write" in scopes


def sign(key: str, message: str) -> str:
    """A keyed digest of `message` (CSRF tokens): unforgeable without the installation's key."""
    return hmac.new(key.encode(), message.encode(), hashlib.sha256).hexdigest()[:40]


def same(expected: str, given: str) -> bool:
    """Constant-time comparison of a secret with what a client sent (any text)."""
    return bool(given) and hmac.compare_digest(expected.encode(), given.encode("utf-8", "replace"))
