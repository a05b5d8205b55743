"""Email: renders push/login/alert mail from templates/email/, builds MIME, sends via aiosmtplib or a file sink.
Level 1: imports only the stdlib, aiosmtplib, retry and urls (never infosentry.db/store); callers pass plain data.
File sink: `SmtpConfig(host="file:<dir>")` (SMTP_HOST=file:./outbox) writes <dir>/<UTC stamp>-<dedupe key>.eml."""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import fcntl
import hashlib
import html
import logging
import os
import re
import string
import time
import unicodedata
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.errors import HeaderParseError
from email.header import Header
from email.headerregistry import Address
from email.utils import format_datetime, formataddr
from functools import cache
from importlib import resources
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit

import aiosmtplib

from infosentry import retry
from infosentry.urls import is_http_url

logger = logging.getLogger(__name__)

KINDS = ("immediate", "batch", "digest")
LANGS = ("en", "zh")
# Carries the caller's dedupe key so the file sink can name files by it (and support can grep for it).
DEDUPE_HEADER = "X-Infosentry-Key"


_TITLE_MAX = 300
_SNIPPET_MAX = 500
_GOAL_IN_SUBJECT_MAX = 80


# ----------------------------------------------------------------------------------------------- data shapes


@dataclass(frozen=True, slots=True)
class EmailItem:
    item_id: int
    title: str
    url: str  # the item's own URL (shown as a domain; never linked directly)
    link: str  # the signed click-tracking link the email carries (infosentry.links)
    snippet: str
    source_name: str
    published_local: str  # already formatted in the goal's time zone, e.g. "2026-11-27 09:05 CST"
    reason: str
    score: float


@dataclass(frozen=True, slots=True)
class Section:
    goal_id: int
    goal_name: str
    items: Sequence[EmailItem]


@dataclass(frozen=True, slots=True)
class RenderedEmail:
    subject: str
    text: str
    html: str
    headers: dict[str, str] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------------- templating


class _Html(str):
    """Trusted HTML produced by our own templates; every other value is escaped when substituted."""

    __slots__ = ()


_TEMPLATE_ROOT = resources.files("infosentry") / "templates" / "email"


@cache
def _template(name: str) -> string.Template:
    # Trailing newlines are dropped so partials nest without stray blank lines.
    path = _TEMPLATE_ROOT
    for part in name.split("/"):  # one step at a time: works for any Traversable (wheel, zip, checkout)
        path = path / part
    return string.Template(path.read_text("utf-8").rstrip("\n"))


@cache
def _strings(lang: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (_TEMPLATE_ROOT / lang / "strings.txt").read_text("utf-8").splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            out[key.strip()] = value.strip()
    return out


def _s(lang: str, key: str, /, **values: object) -> str:
    """A short plain-text string of `lang`, filled in (no escaping: the result is text, not HTML)."""
    return string.Template(_strings(lang)[key]).substitute({k: str(v) for k, v in values.items()})


def _html(template: str, /, **values: str) -> _Html:
    escaped = {k: v if isinstance(v, _Html) else html.escape(v, quote=True) for k, v in values.items()}
    return _Html(_template(template).substitute(escaped))


def _text(template: str, /, **values: str) -> str:
    return _template(template).substitute(values)


# ----------------------------------------------------------------------------------------------- sanitising

# Bidi overrides can make a hostile title render as something else; C0/C1 controls break headers and layout.
_BIDI = dict.fromkeys(map(ord, "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"))


def _one_line(value: object, limit: int | None = None) -> str:
    """Feed-derived text as one clean line: controls and bidi overrides removed, whitespace collapsed."""
    text = ("" if value is None else str(value)).translate(_BIDI)
    text = "".join(" " if unicodedata.category(ch) == "Cc" else ch for ch in text)
    text = " ".join(text.split())
    if limit is not None and len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def _require_http_url(url: str, what: str) -> str:
    # Our own URLs (PUBLIC_URL, unsubscribe, login) also end up in raw headers: ASCII only, no '<>"'.
    if not is_http_url(url) or not url.isascii() or any(ch in url for ch in '<>"'):
        raise ValueError(f'{what} must be an absolute http(s) URL without spaces or <>": {url!r}')
    return url


def _domain(url: str) -> str:
    if not is_http_url(url):
        return ""
    host = (urlsplit(url).hostname or "").lower()
    return host.removeprefix("www.")


# ----------------------------------------------------------------------------------------------- push emails


def _norm_lang(lang: str) -> str:
    # "zh-CN", "zh_Hans" → "zh"; anything we do not ship falls back to English rather than failing a push.
    base = (lang or "").replace("_", "-").split("-")[0].lower()
    return base if base in LANGS else "en"


def _plural(lang: str, key: str, n: int, **values: object) -> str:
    return _s(lang, f"{key}_{'one' if n == 1 else 'other'}", n=n, **values)


def _meta(item: EmailItem) -> str:
    source = _one_line(item.source_name, 100)
    domain = _domain(item.url)
    if source and domain and domain not in source.lower():
        source = f"{source} ({domain})"
    return " · ".join(p for p in (source or domain, _one_line(item.published_local, 60)) if p)


def _render_item(lang: str, n: int, item: EmailItem) -> tuple[_Html, str]:
    title = _one_line(item.title, _TITLE_MAX) or "(untitled)"
    # Items whose own URL is not http(s) (javascript:, data:, ...) get no link at all, not even a tracked one;
    # emails never carry the raw item URL, only the tracked link.
    link = item.link if is_http_url(item.url) and is_http_url(item.link) else ""
    values = {
        "number": str(n),
        "meta": _meta(item),
        "snippet": _one_line(item.snippet, _SNIPPET_MAX),
        "why": _s(lang, "why"),
        "reason": _one_line(item.reason, 500) or "-",
        "score": _s(lang, "score", score=f"{float(item.score):.2f}"),
    }
    title_html = _html("_link.html", href=link, text=title) if link else title
    html_part = _html("_item.html", title=title_html, **values)
    text_part = _text("_item.txt", title=title, link=link, **values)
    # The plain-text item template has one field per line; drop the lines of empty fields (no link, no snippet).
    text_part = "\n".join(line for line in text_part.splitlines() if line.strip())
    return html_part, text_part


def render_push_email(
    kind: str,
    lang: str,
    sections: Sequence[Section],
    *,
    public_url: str,
    unsubscribe_url: str | None,
    window: str | None = None,
    day: str | None = None,
    inbox_url: str | None = None,
    late: str | None = None,
) -> RenderedEmail:
    """Render an IMMEDIATE/BATCH/DIGEST push email.

    immediate and batch take exactly one section; digest takes one (per-goal digest) or several (the combined
    per-user digest, one section per goal). Empty sections are dropped; no items at all is a ValueError (we never
    send empty emails). `window` ("12:30") is required for batch, `day` ("2026-11-27") for digest.
    `inbox_url`, when given, adds a link to the goal's page of the web inbox.
    `late` ("2026-11-27 18:30 CST"), for a window or digest sent after its time (the service was down), says so
    in the subject and above the items.
    `unsubscribe_url` is the pause link of the footer and the
    RFC 8058 one-click target: its GET must only show a confirmation page, its POST performs the pause.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown email kind {kind!r}; expected one of {KINDS}")
    lang = _norm_lang(lang)
    public_url = _require_http_url(public_url, "public_url").rstrip("/")
    if unsubscribe_url is not None:
        _require_http_url(unsubscribe_url, "unsubscribe_url")
    if inbox_url is not None:
        _require_http_url(inbox_url, "inbox_url")
    sections = [s for s in sections if s.items]
    if not sections:
        raise ValueError("refusing to render an email without items")
    if kind != "digest" and len(sections) != 1:
        raise ValueError(f"{kind} emails carry exactly one goal, got {len(sections)}")
    if kind == "batch" and not window:
        raise ValueError("batch emails need window='HH:MM'")
    if kind == "digest" and not day:
        raise ValueError("digest emails need day='YYYY-MM-DD'")
    window_text = _one_line(window, 20)
    day_text = _one_line(day, 40)

    n_items = sum(len(s.items) for s in sections)
    combined = len(sections) > 1
    goal = _one_line(sections[0].goal_name, _GOAL_IN_SUBJECT_MAX) or f"#{sections[0].goal_id}"
    if kind == "immediate":
        subject = _plural(lang, "subject_immediate", n_items, goal=goal)
    elif kind == "batch":
        subject = _plural(lang, "subject_batch", n_items, goal=goal, window=window_text)
    elif combined:
        subject = _s(lang, "subject_digest_combined", n=n_items, goals=len(sections), day=day_text)
    else:
        subject = _plural(lang, "subject_digest", n_items, goal=goal, day=day_text)
    if late:
        subject = f"{subject} {_s(lang, 'subject_late')}"

    html_sections: list[str] = []
    text_sections: list[str] = []
    for section in sections:
        name = _one_line(section.goal_name, 200) or f"#{section.goal_id}"
        rendered = [_render_item(lang, i, item) for i, item in enumerate(section.items, 1)]
        heading = _s(lang, "section_heading", goal=name)
        html_sections.append(_html("_section.html", heading=heading, items=_Html("\n".join(h for h, _ in rendered))))
        text_sections.append(_text("_section.txt", heading=heading, items="\n\n".join(t for _, t in rendered)))

    reason_line = _s(lang, "footer_all") if combined else _s(lang, "footer_goal", goal=goal)
    links: list[tuple[str, str]] = [(_s(lang, "inbox"), inbox_url)] if inbox_url else []
    if unsubscribe_url:
        links.append((_s(lang, "pause_all" if combined else "pause_goal"), unsubscribe_url))
    footer_html = _html(
        "_footer.html",
        reason_line=reason_line,
        links=_Html(" · ".join(_html("_link.html", href=url, text=label) for label, url in links)),
    )
    footer_text = _text(
        "_footer.txt", reason_line=reason_line, links="\n".join(f"{label}: {url}" for label, url in links)
    )

    if late:
        note = _s(lang, "late_note", due=_one_line(late, 60))
        html_sections.insert(0, str(_html("_note.html", note=note)))
        text_sections.insert(0, note)
    values = {"window": window_text, "day": day_text}
    content_html = _html(f"{lang}/{kind}.html", sections=_Html("\n".join(html_sections)), **values)
    content_text = _text(f"{lang}/{kind}.txt", sections="\n\n".join(text_sections), **values)
    preheader = _one_line(" · ".join(_one_line(i.title) for s in sections for i in s.items[:3]), 150)
    body_html = _html(
        "_layout.html", lang=lang, title=subject, preheader=preheader, content=content_html, footer=footer_html
    )
    body_text = _text("_layout.txt", content=content_text, footer=footer_text)

    headers: dict[str, str] = {}
    if unsubscribe_url:
        headers["List-Unsubscribe"] = f"<{unsubscribe_url}>"
        headers["List-Unsubscribe-Post"] = "List-Unsubscribe=One-Click"
    return RenderedEmail(subject=subject, text=body_text + "\n", html=body_html + "\n", headers=headers)


def render_login_email(lang: str, link: str, expires_local: str) -> RenderedEmail:
    """The magic-link email. `expires_local` is preformatted local time, e.g. "2026-11-27 09:35 CST"."""
    lang = _norm_lang(lang)
    link = _require_http_url(link, "login link")
    subject = _s(lang, "subject_login")
    values = {"link": link, "expires": _one_line(expires_local, 60)}
    body_html = _html(
        "_layout.html",
        lang=lang,
        title=subject,
        preheader=subject,
        content=_html(f"{lang}/login.html", **values),
        footer=_Html(""),
    )
    body_text = _text(f"{lang}/login.txt", **values)
    return RenderedEmail(subject=subject, text=body_text + "\n", html=body_html + "\n")


_SEVERITY_ORDER = {"critical": 0, "warning": 1, "notice": 2, "info": 3}
_SEVERITY_COLOR = {"critical": "#dc2626", "warning": "#d97706", "notice": "#2563eb", "info": "#6b7280"}
_ALERT_NAME_KEYS = ("name", "alert", "kind", "code")
_ALERT_DETAIL_KEYS = ("detail", "message", "description")


def render_alert_email(alerts: Sequence[Mapping[str, object]], public_url: str) -> RenderedEmail:
    """Operator alert email (English). Each alert is a dict like a row of the infosentry_alerts view:
    `severity`, `name` (or alert/kind/code), `detail` (or message/description); other keys are listed as k=v."""
    if not alerts:
        raise ValueError("refusing to render an alert email without alerts")
    public_url = _require_http_url(public_url, "public_url").rstrip("/")

    def first(alert: Mapping[str, object], keys: tuple[str, ...]) -> str:
        return next((_one_line(alert[k], 300) for k in keys if alert.get(k) not in (None, "")), "")

    rows = []
    for alert in alerts:
        severity = _one_line(alert.get("severity") or "warning", 20).lower()
        used = {"severity", *_ALERT_NAME_KEYS, *_ALERT_DETAIL_KEYS}
        extra = ", ".join(f"{_one_line(k, 40)}={_one_line(v, 120)}" for k, v in alert.items() if k not in used)
        rows.append((severity, first(alert, _ALERT_NAME_KEYS) or "alert", first(alert, _ALERT_DETAIL_KEYS), extra))
    rows.sort(key=lambda r: _SEVERITY_ORDER.get(r[0], 9))

    top = rows[0]
    count_text = f"{len(rows)} active alert{'s' if len(rows) != 1 else ''}"
    subject = f"[infosentry] {count_text}, most severe: {top[0]} {top[1]}"
    health_url = f"{public_url}/api/v1/admin/health"
    alerts_html = "\n".join(
        _html(
            "_alert.html",
            severity=sev,
            name=name,
            detail=detail,
            extra=extra,
            color=_SEVERITY_COLOR.get(sev, "#6b7280"),
        )
        for sev, name, detail, extra in rows
    )
    alerts_text = "\n".join(
        "\n".join(
            line
            for line in _text("_alert.txt", severity=sev, name=name, detail=detail, extra=extra).splitlines()
            if line.strip()
        )
        for sev, name, detail, extra in rows
    )
    content_html = _html(
        "en/alert.html",
        count_text=count_text,
        alerts=_Html(alerts_html),
        health_link=_html("_link.html", href=health_url, text=health_url),
    )
    content_text = _text("en/alert.txt", count_text=count_text, alerts=alerts_text, health_url=health_url)
    body_html = _html(
        "_layout.html", lang="en", title=subject, preheader=subject, content=content_html, footer=_Html("")
    )
    return RenderedEmail(subject=subject, text=content_text + "\n", html=body_html + "\n")


# ----------------------------------------------------------------------------------------------- MIME


def make_message_id(dedupe_key: str, domain: str) -> str:
    """Deterministic Message-ID for a dedupe key: a resend after a crash carries the same id, so mail clients
    that dedupe by Message-ID show one message."""
    if not dedupe_key:
        raise ValueError("dedupe_key is required")
    if not re.fullmatch(r"[A-Za-z0-9.-]+", domain or ""):
        raise ValueError(f"bad message_id_domain {domain!r}")
    digest = hashlib.sha256(dedupe_key.encode("utf-8")).hexdigest()[:32]
    return f"<infosentry.{digest}@{domain.lower()}>"


_HEADER_NAME = re.compile(r"[A-Za-z0-9-]+")
_CRLF = "\r\n"
# Content headers of a text part (charset UTF-8), by transfer encoding.
_PART_HEADERS = {
    cte: f'Content-Type: text/{{subtype}}; charset="utf-8"{_CRLF}Content-Transfer-Encoding: {cte}{_CRLF}{_CRLF}'
    for cte in ("quoted-printable", "base64")
}


@dataclass(frozen=True, slots=True)
class BuiltMessage:
    """A message ready for the wire: its envelope and its exact bytes (CRLF line ends)."""

    sender: str
    recipients: tuple[str, ...]
    message_id: str
    dedupe_key: str
    data: bytes
    smtputf8: bool  # an address is not ASCII: the relay must accept SMTPUTF8


def build_message(
    rendered: RenderedEmail,
    *,
    to_addr: str,
    from_addr: str,
    from_name: str,
    message_id_domain: str,
    dedupe_key: str,
    date: datetime | None = None,
) -> BuiltMessage:
    """multipart/alternative (text, then HTML), UTF-8, RFC 2047-encoded Subject and From name, deterministic
    Message-ID.

    Written straight to bytes: the stdlib's EmailMessage parsed and refolded every header it set and generated,
    1.3 ms per push email, more than half of the sender's CPU. `date` defaults to now (UTC). Raises ValueError
    for malformed addresses or headers (never builds a message with an injected header line)."""
    to_addr, from_addr = _addr_spec(to_addr), _addr_spec(from_addr)
    name = _one_line(from_name, 100)
    message_id, one_line_key = make_message_id(dedupe_key, message_id_domain), _one_line(dedupe_key)
    fixed = {
        "Subject": _encoded("Subject", rendered.subject),
        "From": _from_header(name, from_addr),
        "To": to_addr,
        "Date": format_datetime(date or datetime.now(UTC)),
        "Message-ID": message_id,
        # RFC 3834: tells auto-responders (vacation replies) not to answer a machine.
        "Auto-Submitted": "auto-generated",
        DEDUPE_HEADER: one_line_key,
    }
    headers = {k.lower(): (k, v) for k, v in fixed.items()}
    for key, value in rendered.headers.items():
        # Written as given (a long List-Unsubscribe URL must stay one plain line), so checked here.
        if not _HEADER_NAME.fullmatch(key) or not value.isascii() or not value.isprintable() or len(value) > 900:
            raise ValueError(f"refusing header {key!r}: {value!r}")
        headers[key.lower()] = (key, value)
    boundary = f"=_{uuid.uuid4().hex}"  # "=_" appears in neither quoted-printable nor base64 text
    bodies = ((rendered.text, "plain"), (rendered.html, "html"))
    lines = [f"{k}: {v}" for k, v in headers.values()]
    lines += ["MIME-Version: 1.0", f'Content-Type: multipart/alternative;{_CRLF} boundary="{boundary}"', ""]
    head = _CRLF.join(lines) + _CRLF
    parts = "".join(f"--{boundary}{_CRLF}{_text_part(body, sub)}" for body, sub in bodies)
    text = head + parts + f"--{boundary}--{_CRLF}"
    smtputf8 = not (to_addr.isascii() and from_addr.isascii())
    return BuiltMessage(
        sender=from_addr,
        recipients=(to_addr,),
        message_id=message_id,
        dedupe_key=one_line_key,
        data=text.encode("utf-8" if smtputf8 else "ascii"),
        smtputf8=smtputf8,
    )


def _addr_spec(addr: str) -> str:
    """The address, checked as the stdlib's header parser checks an addr-spec (no CR/LF, no second address)."""
    try:
        return Address(addr_spec=addr).addr_spec
    except (ValueError, HeaderParseError) as exc:
        raise ValueError(f"bad email address {addr!r}: {exc}") from exc


def _encoded(name: str, value: str) -> str:
    """A header value folded to 78 columns, RFC 2047-encoded (UTF-8) when it is not ASCII or holds text a reader
    would decode as an encoded word ("=?")."""
    if "\r" in value or "\n" in value:
        raise ValueError(f"refusing a line break in the {name} header: {value!r}")
    plain = value.isascii() and "=?" not in value
    folded = Header(value, "us-ascii" if plain else "utf-8", header_name=name).encode(linesep=_CRLF)
    # a first word too long for the first line is moved to the next, leaving an empty first line: not ours
    return folded.removeprefix(_CRLF + " ")


def _from_header(name: str, addr: str) -> str:
    """The From value: the display name (quoted, or RFC 2047-encoded and folded) and the address, on a line of its
    own when the name's last line has no room for it within 78 columns."""
    if name.isascii() and "=?" not in name:
        return formataddr((name, addr))
    encoded = _encoded("From", name)
    lines = encoded.split(_CRLF)
    width = len(lines[-1]) + (len("From: ") if len(lines) == 1 else 0)
    return f"{encoded}{_CRLF if width + len(addr) + 3 > 78 else ''} <{addr}>"


def _text_part(body: str, subtype: str) -> str:
    """A UTF-8 text part with CRLF line ends: quoted-printable when that is shorter (mostly ASCII), else base64."""
    data = body.replace("\r\n", "\n").encode("utf-8")
    qp = binascii.b2a_qp(data)
    if len(qp) <= len(data) * 4 // 3:
        cte, encoded = "quoted-printable", qp.decode("ascii").replace("\n", _CRLF)
    else:
        crlf = data.replace(b"\n", b"\r\n")
        cte, encoded = "base64", base64.encodebytes(crlf).decode("ascii").replace("\n", _CRLF)
    # the line break before the next boundary belongs to the boundary, not to the text
    return _PART_HEADERS[cte].format(subtype=subtype) + encoded + _CRLF


# ----------------------------------------------------------------------------------------------- errors


class SmtpError(Exception):
    """Sending failed. `code` is the SMTP reply code (None when there was no reply), `message` the server text."""

    retryable: ClassVar[bool] = True

    def __init__(self, code: int | None, message: str) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message

    def __str__(self) -> str:
        return f"{self.code} {self.message}" if self.code is not None else self.message


class SmtpTemporaryError(SmtpError):
    """Worth retrying later: 4xx replies, refused/reset connections, timeouts, TLS or DNS trouble."""

    retryable = True


class SmtpPermanentError(SmtpError):
    """Retrying the same message will not help: 5xx replies (bad recipient, rejected content), auth failure,
    a server without the STARTTLS/AUTH we are configured to use."""

    retryable = False


def _by_code(code: int, message: str) -> SmtpError:
    # 4xx, and garbled codes too, are retried: a retry is cheap and the caller's retry budget caps it
    return SmtpTemporaryError(code, message) if retry.retryable_smtp(code) else SmtpPermanentError(code, message)


def _classify(exc: BaseException) -> SmtpError:
    if isinstance(exc, aiosmtplib.SMTPRecipientsRefused):
        errors = [_by_code(r.code, f"{r.recipient}: {r.message}") for r in exc.recipients] or [
            SmtpTemporaryError(None, str(exc))
        ]
        # If any recipient was refused only temporarily, a retry can still succeed.
        return next((e for e in errors if e.retryable), errors[0])
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        # Checked before the connection errors: SMTPConnectResponseError (a 554 greeting) is both.
        return _by_code(exc.code, exc.message)
    if isinstance(exc, aiosmtplib.SMTPNotSupported):
        return SmtpPermanentError(None, f"not supported by server: {exc.message}")
    if isinstance(exc, aiosmtplib.SMTPException):
        # SMTPTimeoutError, SMTPConnectError, SMTPServerDisconnected and friends.
        return SmtpTemporaryError(None, f"{type(exc).__name__}: {exc.message}")
    if isinstance(exc, (OSError, TimeoutError)):
        # Connection refused/reset, DNS failure, TLS handshake failure.
        return SmtpTemporaryError(None, f"{type(exc).__name__}: {exc}")
    if isinstance(exc, ValueError):
        return SmtpPermanentError(None, f"invalid message or address: {exc}")
    return SmtpTemporaryError(None, f"{type(exc).__name__}: {exc}")


# ----------------------------------------------------------------------------------------------- sending


@dataclass(frozen=True, slots=True)
class SmtpConfig:
    """SMTP settings. `ssl` (implicit TLS, port 465) wins over `starttls` when both are set. `host="file:<dir>"`
    selects the FileSink. `helo_name` is the EHLO name; None lets aiosmtplib use socket.getfqdn()."""

    host: str
    port: int
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    starttls: bool = False
    ssl: bool = False
    timeout: float = 20.0
    helo_name: str | None = None


QUICK_TIMEOUT = 5.0  # NOOP and QUIT on a kept connection: a relay answers them in one round trip


class SmtpSender:
    """Delivers messages over at most `connections` SMTP connections at once, each kept open and reused for the
    next message (one TCP and TLS handshake, EHLO and login per connection, not per message). A process keeps
    one sender across send jobs (`Runtime.smtp_sender`), so an instant alert does not pay a new session with a
    remote relay each time either. A connection idle for over `idle_seconds` is closed, not reused (a relay
    drops idle sessions after a while); one idle for over `check_after` is asked NOOP first, and a new one opened
    if that fails, so a session the relay has dropped is never where a message fails. A connection that fails in
    any way is closed, never reused. ``file:`` hosts write to the FileSink. Use as an async context manager (or
    `aclose`); `send` raises like send_message."""

    def __init__(
        self, cfg: SmtpConfig, connections: int = 1, *, idle_seconds: float = 60.0, check_after: float = 5.0
    ) -> None:
        self.cfg = cfg
        self.idle_seconds = idle_seconds
        self.check_after = check_after
        self._sink = file_sink_for(cfg)
        self._slots = asyncio.Semaphore(connections)
        self._idle: list[tuple[aiosmtplib.SMTP, float]] = []  # with the monotonic time of its last use

    async def __aenter__(self) -> SmtpSender:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        idle, self._idle = self._idle, []

        async def bye(client: aiosmtplib.SMTP) -> None:
            with contextlib.suppress(Exception):
                await client.quit(timeout=min(self.cfg.timeout, QUICK_TIMEOUT))
            client.close()

        await asyncio.gather(*(bye(client) for client, _ in idle))

    def _client(self) -> aiosmtplib.SMTP:
        cfg = self.cfg
        return aiosmtplib.SMTP(
            hostname=cfg.host,
            port=cfg.port or None,
            username=cfg.user or None,
            password=cfg.password if cfg.user else None,
            use_tls=cfg.ssl,
            # Explicit False: with None aiosmtplib upgrades opportunistically and fails on self-signed relays.
            start_tls=cfg.starttls and not cfg.ssl,
            timeout=cfg.timeout,
            local_hostname=cfg.helo_name,
        )

    async def _reusable(self) -> aiosmtplib.SMTP | None:
        """The most recently used idle connection that is still good; the stale ones are closed."""
        now = time.monotonic()
        fresh = []
        for client, used in self._idle:
            if client.is_connected and now - used <= self.idle_seconds:
                fresh.append((client, used))
            else:
                client.close()
        self._idle = fresh
        while self._idle:
            client, used = self._idle.pop()
            if now - used <= self.check_after:
                return client
            try:
                await client.noop(timeout=min(self.cfg.timeout, QUICK_TIMEOUT))
                return client
            except Exception:
                client.close()
        return None

    async def send(self, msg: BuiltMessage) -> None:
        """Deliver `msg` to its recipients. Returns only when the server accepted it for every recipient;
        otherwise raises SmtpTemporaryError or SmtpPermanentError (never reports a failure as success)."""
        if self._sink is not None:
            await self._sink.send(msg)
            return
        async with self._slots:
            client = await self._reusable()
            try:
                if client is None:
                    client = self._client()
                    await client.connect()
                refused, _ = await client.sendmail(
                    msg.sender, msg.recipients, msg.data, mail_options=["SMTPUTF8"] if msg.smtputf8 else None
                )
            except Exception as exc:
                if client is not None:
                    client.close()
                err = _classify(exc)
                logger.warning(
                    "smtp send failed: %s",
                    err,
                    extra={
                        "action": "mail.send_failed",
                        "message_id": msg.message_id,
                        "retryable": err.retryable,
                    },
                )
                raise err from exc
            self._idle.append((client, time.monotonic()))
        if refused:
            # Some recipients refused while others accepted: still a failure for the caller to see.
            errors = [_by_code(r.code, f"{addr}: {r.message}") for addr, r in refused.items()]
            raise next((e for e in errors if e.retryable), errors[0])
        logger.info("smtp sent", extra={"action": "mail.sent", "message_id": msg.message_id})


async def send_message(cfg: SmtpConfig, msg: BuiltMessage) -> None:
    """Deliver one message on its own connection (SmtpSender.send)."""
    async with SmtpSender(cfg) as sender:
        await sender.send(msg)


# ----------------------------------------------------------------------------------------------- file sink


def _safe_key(key: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._=+-]", "_", key)
    if safe != key or len(safe) > 120:
        # Sanitising can map two keys to one name; a short hash of the original keeps them apart.
        safe = f"{safe[:100]}-{hashlib.sha256(key.encode('utf-8')).hexdigest()[:10]}"
    return safe


class FileSink:
    """Writes each message to ``<directory>/<UTC timestamp>-<dedupe key>.eml`` (the offline demo's outbox).

    Idempotent per dedupe key (the X-Infosentry-Key header, else the Message-ID): a second send of the same key
    returns the existing file. Writes are atomic (hidden temp file + fsync + rename) and serialised by a lock
    file, so several processes may share one directory."""

    def __init__(self, directory: str | os.PathLike[str]) -> None:
        self.directory = Path(directory)

    def find(self, dedupe_key: str) -> Path | None:
        suffix = f"{_safe_key(dedupe_key)}.eml"
        with contextlib.suppress(FileNotFoundError), os.scandir(self.directory) as entries:
            for entry in entries:
                # Timestamps contain no "-", so the part after the first "-" is exactly the key.
                if not entry.name.startswith(".") and entry.name.partition("-")[2] == suffix:
                    return Path(entry.path)
        return None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        with open(self.directory / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def write(self, msg: BuiltMessage) -> Path:
        key = msg.dedupe_key or msg.message_id  # one line, already stripped
        self.directory.mkdir(parents=True, exist_ok=True)
        data = msg.data
        with self._locked():
            existing = self.find(key)
            if existing is not None:
                return existing
            stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
            final = self.directory / f"{stamp}-{_safe_key(key)}.eml"
            tmp = self.directory / f".{uuid.uuid4().hex}.tmp"
            try:
                with open(tmp, "wb") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, final)
            finally:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        logger.info("mail written to file sink", extra={"action": "mail.file_sink", "path": str(final)})
        return final

    async def send(self, msg: BuiltMessage) -> Path:
        # fsync and the lock can block; keep them off the event loop.
        return await asyncio.to_thread(self.write, msg)


def file_sink_for(cfg: SmtpConfig) -> FileSink | None:
    """The FileSink selected by ``host="file:<dir>"`` (also ``file:///abs/dir``), else None (real SMTP)."""
    if not cfg.host.startswith("file:"):
        return None
    path = cfg.host.removeprefix("file:")
    if path.startswith("//"):
        path = path[2:]
    if not path:
        raise ValueError("file sink needs a directory: SMTP_HOST=file:<dir>")
    return FileSink(path)
