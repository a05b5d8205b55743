"""Rendering the pages: the Jinja2 environment (autoescape on: every value is escaped, titles and snippets are
plain text), the message catalogs of both languages, and the per-request context every template receives.

Imports jinja2, domain (Actor), api.http (the runtime key). Templates live in web/templates, catalogs in
web/i18n/{en,zh}.json (tests/test_web_i18n.py keeps their keys equal).
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import jinja2
from aiohttp import web

from infosentry.domain import Actor
from infosentry.runtime import Runtime

LANGS = ("en", "zh")
_PACKAGE = resources.files("infosentry.web")
# Keys a template asked for that no catalog has: a test renders every page and expects this to stay empty.
MISSING: set[str] = set()

# Pages only load what this process serves itself; the email preview lives in its own sandboxed document.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-src 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@cache
def catalog(lang: str) -> dict[str, str]:
    return json.loads((_PACKAGE / "i18n" / f"{lang}.json").read_text("utf-8"))


def translate(lang: str, key: str, /, **values: Any) -> str:
    """The string `key` of `lang`, with {name} placeholders filled (English, then the key, when missing)."""
    text = catalog(lang).get(key)
    if text is None:
        MISSING.add(f"{lang}:{key}")
        text = catalog("en").get(key, key)
    if values:
        try:
            text = text.format(**values)
        except (KeyError, IndexError, ValueError):
            MISSING.add(f"{lang}:{key}:placeholders")
    return text


def pick_language(request: web.Request, actor: Actor | None) -> str:
    """The signed-in user's language; before sign-in the language cookie, then the browser's preference."""
    if actor is not None and actor.language in LANGS:
        return actor.language
    cookie = request.cookies.get("infosentry_lang")
    if cookie in LANGS:
        return cookie
    accept = request.headers.get("Accept-Language", "").lower()
    first = accept.split(",")[0].strip()
    return "zh" if first.startswith("zh") else "en"


def _zone(name: str | None) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


@dataclass
class Ctx:
    """Who asks and in which language: what every handler and template needs besides the page's own data."""

    request: web.Request
    rt: Runtime
    actor: Actor | None
    lang: str
    csrf: str = ""
    flash: list[tuple[str, str]] = field(default_factory=list)  # (kind ok|error, message)

    def t(self, key: str, /, **values: Any) -> str:
        return translate(self.lang, key, **values)

    def local(self, when: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
        if when is None:
            return ""
        tz = _zone(self.actor.timezone if self.actor else None)
        return when.astimezone(tz).strftime(fmt)

    def ago(self, when: datetime | None) -> str:
        """'5 min ago', '3 h ago', '2 d ago' (or the date beyond a week)."""
        if when is None:
            return self.t("time.never")
        seconds = (datetime.now(UTC) - when).total_seconds()
        if seconds < 60:
            return self.t("time.just_now")
        if seconds < 3600:
            return self.t("time.minutes_ago", n=math.floor(seconds / 60))
        if seconds < 86400:
            return self.t("time.hours_ago", n=math.floor(seconds / 3600))
        if seconds < 7 * 86400:
            return self.t("time.days_ago", n=math.floor(seconds / 86400))
        return self.local(when, "%Y-%m-%d")


@cache
def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("infosentry.web", "templates"),
        autoescape=True,  # every template, whatever its name: values are escaped unless marked safe by us
        undefined=jinja2.ChainableUndefined,  # optional keys of plain dicts (catalog entries, errors) may be absent
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["score"] = lambda v: f"{float(v):.2f}" if v is not None else "–"
    env.globals["static_version"] = static_version()
    return env


@cache
def static_version() -> str:
    """A digest of the static files: their URLs change with them, so browsers may cache them for a long time."""
    digest = hashlib.sha256()
    for entry in sorted((_PACKAGE / "static").iterdir(), key=lambda e: e.name):
        if entry.is_file():
            digest.update(entry.name.encode() + entry.read_bytes())
    return digest.hexdigest()[:12]


def render(ctx: Ctx, template: str, status: int = 200, **values: Any) -> web.Response:
    html = environment().get_template(template).render(ctx=ctx, t=ctx.t, **values)
    response = web.Response(text=html, status=status, content_type="text/html", charset="utf-8")
    response.headers.update(SECURITY_HEADERS)
    return response
