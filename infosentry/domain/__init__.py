"""The domain layer: one function per user action (goals, sources, inbox and feedback, accounts, admin), with
its validation and side effects. The JSON API, the web pages and the CLI call these and only translate input
and output; none of them holds a rule of its own.

Imports steps, store, queue nudges (through the Runtime) and leaves; never api, web or cli.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime


@dataclass(frozen=True)
class Actor:
    """Who acts: the signed-in user (API token, web session or the operator's CLI)."""

    user_id: int
    email: str
    is_admin: bool = False
    scopes: list[str] = field(default_factory=list)
    timezone: str = "Asia/Shanghai"
    language: str = "en"
    token_id: int | None = None
    token_kind: str | None = None  # 'session' (a web sign-in) or 'api'
    token_expires_at: datetime | None = None
    session_id: int | None = None  # the web session the token descends from (it dies with it)
    display_name: str = ""

    @property
    def session_root(self) -> int | None:
        """The session that tokens minted by this actor must not outlive."""
        return self.token_id if self.token_kind == "session" else self.session_id
