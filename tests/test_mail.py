"""infosentry.mail: rendering (en/zh, every kind, escaping, tracked links), MIME building, SMTP errors, file sink."""

from __future__ import annotations

import asyncio
import email.policy
from datetime import UTC, datetime
from email.parser import BytesParser
from html.parser import HTMLParser
from pathlib import Path

import aiosmtplib
import pytest

from infosentry import mail
from infosentry.mail import (
    BuiltMessage,
    EmailItem,
    FileSink,
    RenderedEmail,
    Section,
    SmtpConfig,
    SmtpPermanentError,
    SmtpSender,
    SmtpTemporaryError,
    build_message,
    render_alert_email,
    render_login_email,
    render_push_email,
    send_message,
)
from tests.fakes.smtp import SmtpSink, smtp_sink  # noqa: F401

PUBLIC = "https://sentry.example.com"
UNSUB = "https://sentry.example.com/unsubscribe/tok123?goal_id=7"


def item(i: int, goal_id: int = 7, **kw: object) -> EmailItem:
    base: dict[str, object] = {
        "item_id": i,
        "title": f"Item {i} title",
        "url": f"https://www.news{i}.example.org/story/{i}?utm_source=x",
        "link": f"{PUBLIC}/r/{i}?goal_id={goal_id}&channel=email&sig=s{i}",  # signed by infosentry.links
        "snippet": f"Snippet {i}.",
        "source_name": f"Source {i}",
        "published_local": "2026-11-27 09:05 CST",
        "reason": f"reason {i}: matched 'chips'",
        "score": 0.9,
    }
    base.update(kw)
    return EmailItem(**base)  # type: ignore[arg-type]


def section(goal_id: int, name: str, n: int, start: int = 1) -> Section:
    return Section(goal_id, name, [item(i, goal_id) for i in range(start, start + n)])


class Links(HTMLParser):
    """Collects every href (and fails on nothing: html.parser is lenient, we check the values)."""

    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []
        self.tags: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append(tag)
        self.hrefs += [v or "" for k, v in attrs if k == "href"]


def links_of(html: str) -> Links:
    parser = Links()
    parser.feed(html)
    return parser


def build(rendered: RenderedEmail, key: str = "immediate:7:1") -> BuiltMessage:
    return build_message(
        rendered,
        to_addr="user@example.com",
        from_addr="noreply@sentry.example.com",
        from_name="信息哨兵 infosentry",
        message_id_domain="sentry.example.com",
        dedupe_key=key,
        date=datetime(2026, 11, 27, 1, 5, tzinfo=UTC),
    )


# ------------------------------------------------------------------------------------------------ subjects


@pytest.mark.parametrize(
    ("kind", "lang", "n", "kw", "subject"),
    [
        ("immediate", "en", 1, {}, "[Goal: Chips] 1 new high-priority item"),
        ("immediate", "en", 3, {}, "[Goal: Chips] 3 new high-priority items"),
        ("batch", "en", 5, {"window": "12:30"}, "[Goal: Chips] 5 items for the 12:30 window"),
        ("batch", "en", 1, {"window": "18:30"}, "[Goal: Chips] 1 item for the 18:30 window"),
        ("digest", "en", 8, {"day": "2026-11-27"}, "[Goal: Chips] Daily digest: 8 items (2026-11-27)"),
        ("immediate", "zh", 3, {}, "[目标：Chips] 3 条高优先级新内容"),
        ("batch", "zh", 5, {"window": "12:30"}, "[目标：Chips] 12:30 批次：5 条"),
        ("digest", "zh", 8, {"day": "2026-11-27"}, "[目标：Chips] 每日摘要：8 条（2026-11-27）"),
        ("immediate", "zh-CN", 1, {}, "[目标：Chips] 1 条高优先级新内容"),
        ("immediate", "fr", 2, {}, "[Goal: Chips] 2 new high-priority items"),  # unknown → English
    ],
)
def test_subjects(kind: str, lang: str, n: int, kw: dict[str, str], subject: str) -> None:
    r = render_push_email(kind, lang, [section(7, "Chips", n)], public_url=PUBLIC, unsubscribe_url=UNSUB, **kw)
    assert r.subject == subject
    assert f"<title>{subject}</title>" in r.html


@pytest.mark.parametrize("lang", ["en", "zh"])
@pytest.mark.parametrize(
    ("kind", "kw"), [("immediate", {}), ("batch", {"window": "12:30"}), ("digest", {"day": "2026-11-27"})]
)
def test_each_kind_renders_items_reasons_and_footer(kind: str, kw: dict[str, str], lang: str) -> None:
    r = render_push_email(kind, lang, [section(7, "Chips", 3)], public_url=PUBLIC + "/", unsubscribe_url=UNSUB, **kw)
    why = "Why:" if lang == "en" else "推荐理由："
    for i in (1, 2, 3):
        tracked = f"{PUBLIC}/r/{i}?goal_id=7&channel=email&sig=s{i}"
        assert f'href="{tracked.replace("&", "&amp;")}"' in r.html
        assert (
            f"{i}. Item {i} title\n   {tracked}\n   Source {i} (news{i}.example.org) · 2026-11-27 09:05 CST" in r.text
        )
        assert f"   Snippet {i}.\n   {why} reason {i}: matched 'chips'" in r.text
        assert f"reason {i}: matched &#x27;chips&#x27;" in r.html
    assert r.html.count(why) == 3
    # Footer: the pause link in both bodies; no inbox link unless a web inbox is given (nothing serves one)
    assert UNSUB in r.text and "/inbox" not in r.text
    hrefs = links_of(r.html).hrefs
    assert UNSUB in hrefs and not any("/inbox" in h for h in hrefs)
    with_inbox = render_push_email(
        kind, lang, [section(7, "Chips", 3)], public_url=PUBLIC, unsubscribe_url=UNSUB, inbox_url=PUBLIC + "/app", **kw
    )
    assert f"{PUBLIC}/app" in with_inbox.text and f"{PUBLIC}/app" in links_of(with_inbox.html).hrefs
    assert r.headers == {"List-Unsubscribe": f"<{UNSUB}>", "List-Unsubscribe-Post": "List-Unsubscribe=One-Click"}
    assert f'<html lang="{lang}">' in r.html and 'name="viewport"' in r.html


def test_links_are_tracked_never_raw_and_only_http() -> None:
    r = render_push_email(
        "batch", "en", [section(7, "Chips", 4)], public_url=PUBLIC, unsubscribe_url=None, window="12:30"
    )
    hrefs = links_of(r.html).hrefs
    assert hrefs and all(h.startswith(PUBLIC + "/") for h in hrefs)
    assert "news1.example.org/story" not in r.html + r.text  # the raw item URL never appears
    assert "news1.example.org" in r.html  # ... but its domain is shown as text
    assert "List-Unsubscribe" not in r.headers
    assert "Pause this goal" not in r.text  # no pause link without an unsubscribe URL


def test_hostile_feed_text_is_escaped_and_not_linked() -> None:
    evil = item(
        66,
        title='<script>alert("x")</script> "><img src=x onerror=alert(1)>',
        url="javascript:alert(document.cookie)",
        snippet="<b>bold</b> & <iframe src=//evil>",
        source_name='Evil" onmouseover="alert(1)',
        reason="<svg onload=alert(1)>",
        published_local="2026-11-27 09:05 CST\r\nBcc: victim@example.com",
    )
    good = item(1)
    r = render_push_email(
        "immediate", "en", [Section(7, "Goal <b>x</b>\n", [evil, good])], public_url=PUBLIC, unsubscribe_url=UNSUB
    )
    lowered = r.html.lower()
    for bad in ("<script", "<img", "<iframe", "<svg", "<b>", "javascript:", 'onmouseover="'):
        assert bad not in lowered, bad
    assert "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt;" in r.html
    assert "javascript:" not in r.text
    # The javascript: item gets no link at all (not even a tracked one); the good item does.
    hrefs = links_of(r.html).hrefs
    assert not any("/r/66" in h for h in hrefs)
    assert any("/r/1?" in h for h in hrefs)
    assert "/r/66" not in r.text
    # Only our own tags survive.
    assert set(links_of(r.html).tags) <= {
        "html",
        "head",
        "meta",
        "title",
        "body",
        "div",
        "h1",
        "h2",
        "p",
        "a",
        "strong",
        "span",
    }
    # Names are single-line in subjects and text (no header injection via CR/LF).
    assert r.subject == "[Goal: Goal <b>x</b>] 2 new high-priority items"
    assert "\r" not in r.text and "CST Bcc: victim@example.com" in r.text
    assert not [line for line in r.text.splitlines() if line.startswith("Bcc")]


def test_combined_digest_with_three_sections() -> None:
    sections = [
        section(1, "Chips", 5, 1),
        section(2, "AI 政策", 4, 10),
        section(3, "Rust", 3, 20),
        Section(4, "Empty", []),
    ]
    r = render_push_email("digest", "en", sections, public_url=PUBLIC, unsubscribe_url=UNSUB, day="2026-11-27")
    assert r.subject == "[infosentry] Daily digest: 12 items across 3 goals (2026-11-27)"
    positions = [r.text.index(f"== Goal: {name} ==") for name in ("Chips", "AI 政策", "Rust")]
    assert positions == sorted(positions)
    assert "Empty" not in r.text and "Empty" not in r.html
    assert r.html.count("<h2") == 3
    # Each section's links carry its own goal id; numbering restarts per section.
    assert f"{PUBLIC}/r/10?goal_id=2&channel=email" in r.text and f"{PUBLIC}/r/20?goal_id=3&channel=email" in r.text
    assert "1. Item 10 title" in r.text
    assert "Pause these emails" in r.text
    zh = render_push_email("digest", "zh", sections, public_url=PUBLIC, unsubscribe_url=UNSUB, day="2026-11-27")
    assert zh.subject == "[infosentry] 每日摘要：3 个目标共 12 条（2026-11-27）"


@pytest.mark.parametrize(
    ("kind", "sections", "kw", "match"),
    [
        ("immediate", [], {}, "without items"),
        ("immediate", [Section(1, "x", [])], {}, "without items"),
        ("immediate", [section(1, "a", 1), section(2, "b", 1)], {}, "exactly one"),
        ("batch", [section(1, "a", 1)], {}, "window"),
        ("digest", [section(1, "a", 1)], {}, "day"),
        ("weekly", [section(1, "a", 1)], {}, "unknown"),
        ("immediate", [section(1, "a", 1)], {"public_url": "javascript:alert(1)"}, "public_url"),
        ("immediate", [section(1, "a", 1)], {"unsubscribe_url": "mailto:x@example.com"}, "unsubscribe_url"),
        ("immediate", [section(1, "a", 1)], {"unsubscribe_url": "https://x.example/u>\r\nBcc: y"}, "unsubscribe_url"),
    ],
)
def test_render_rejects_bad_input(kind: str, sections: list[Section], kw: dict[str, str], match: str) -> None:
    args: dict[str, object] = {"public_url": PUBLIC, "unsubscribe_url": UNSUB, **kw}
    with pytest.raises(ValueError, match=match):
        render_push_email(kind, "en", sections, **args)  # type: ignore[arg-type]


def test_login_and_alert_emails() -> None:
    link = "https://sentry.example.com/login?token=abc&x=1"
    en = render_login_email("en", link, "2026-11-27 09:35 CST")
    assert en.subject == "Your infosentry sign-in link"
    assert link in en.text and "09:35 CST" in en.text
    assert link in links_of(en.html).hrefs  # html.parser unescapes the &amp; of the attribute
    zh = render_login_email("zh", link, "2026-11-27 09:35 CST")
    assert zh.subject == "infosentry 登录链接" and "失效" in zh.text
    with pytest.raises(ValueError):
        render_login_email("en", "javascript:alert(1)", "soon")

    alerts = [
        {"severity": "warning", "name": "smtp_failures", "detail": "4 consecutive failures", "value": 4},
        {"severity": "critical", "name": "worker_heartbeat", "detail": "no heartbeat for 75 s <script>"},
    ]
    a = render_alert_email(alerts, PUBLIC)
    assert a.subject == "[infosentry] 2 active alerts, most severe: critical worker_heartbeat"
    assert "<script>" not in a.html and "&lt;script&gt;" in a.html
    assert a.text.index("worker_heartbeat") < a.text.index("smtp_failures")
    assert "value=4" in a.text and f"{PUBLIC}/api/v1/admin/health" in a.text
    with pytest.raises(ValueError):
        render_alert_email([], PUBLIC)


# ------------------------------------------------------------------------------------------------ MIME


@pytest.mark.parametrize(("lang", "cte"), [("zh", "base64"), ("en", "quoted-printable")])
def test_mime_structure_encoding_and_headers(lang: str, cte: str) -> None:
    r = render_push_email(
        "digest",
        lang,
        [section(7, "半导体出口管制", 2)],
        public_url=PUBLIC,
        unsubscribe_url=UNSUB + "&" + "a" * 120,
        day="2026-11-27",
    )
    msg = build(r)
    raw = msg.data
    assert b"\r\n" in raw and raw.isascii()  # 7-bit clean on the wire; non-ASCII is encoded
    # List-Unsubscribe stays one plain line (a long URL must not become an RFC 2047 encoded-word).
    assert f"\r\nList-Unsubscribe: <{UNSUB}&{'a' * 120}>\r\n".encode() in raw
    assert b"\r\nList-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n" in raw

    parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
    assert parsed.get_content_type() == "multipart/alternative"
    parts = list(parsed.iter_parts())
    assert [p.get_content_type() for p in parts] == ["text/plain", "text/html"]  # HTML last = preferred
    assert all(p.get_content_charset() == "utf-8" for p in parts)
    # each part in the shorter encoding: mostly-ASCII text stays readable (quoted-printable), Chinese text is
    # shorter in base64 (the HTML part, mostly markup, is quoted-printable in both languages)
    assert [p["Content-Transfer-Encoding"] for p in parts] == [cte, "quoted-printable"]
    assert not parsed.defects and not any(p.defects for p in parts)
    # Quoted-printable parts come back with the canonical CRLF line ends.
    assert [p.get_content().replace("\r\n", "\n") for p in parts] == [r.text, r.html]
    assert parsed["Subject"] == r.subject
    assert parsed["From"].addresses[0].display_name == "信息哨兵 infosentry"
    assert parsed["From"].addresses[0].addr_spec == "noreply@sentry.example.com"
    assert str(parsed["To"]) == "user@example.com"
    assert parsed["Date"].datetime == datetime(2026, 11, 27, 1, 5, tzinfo=UTC)
    assert parsed["Auto-Submitted"] == "auto-generated"
    assert parsed[mail.DEDUPE_HEADER] == "immediate:7:1"


@pytest.mark.parametrize(
    ("subject", "from_name"),
    [
        ("[目标：半导体出口管制与国产替代的最新进展] " * 3, "信息哨兵 " * 30),
        ("A plain subject that is long enough to be folded across lines by the header encoder " * 2, "Ops, Inc."),
        ('Quotes " and =?utf-8?q?x?= and trailing space ', 'Eve "the" <admin@example.com>'),
        ("x" * 200, ""),
    ],
)
def test_headers_fold_encode_and_read_back(subject: str, from_name: str) -> None:
    msg = build_message(
        RenderedEmail(subject, "text\n", "<p>html</p>"),
        to_addr="user@example.com",
        from_addr="noreply@sentry.example.com",
        from_name=from_name,
        message_id_domain="sentry.example.com",
        dedupe_key="immediate:7:1",
    )
    head = msg.data.split(b"\r\n\r\n", 1)[0].decode("ascii")
    long = [line for line in head.split("\r\n") if len(line) > 78]
    # folded at spaces: only a single word longer than a line stays longer (a word is never split)
    assert bool(long) == (" " not in subject.strip()) and all(len(line.split()) <= 2 for line in long)
    parsed = BytesParser(policy=email.policy.default).parsebytes(msg.data)
    assert parsed["Subject"] == subject
    (sender,) = parsed["From"].addresses
    assert sender.addr_spec == "noreply@sentry.example.com"
    # (the stdlib's address parser puts a space between adjacent encoded words of a long name; RFC 2047 says to
    # drop it, and the old EmailMessage build read back the same)
    assert sender.display_name.replace(" ", "") == mail._one_line(from_name, 100).replace(" ", "")
    assert (msg.sender, msg.recipients) == ("noreply@sentry.example.com", ("user@example.com",))


def test_message_id_is_deterministic_per_dedupe_key() -> None:
    r = render_push_email("immediate", "en", [section(7, "Chips", 1)], public_url=PUBLIC, unsubscribe_url=None)
    a, b, c = build(r, "immediate:7:1"), build(r, "immediate:7:1"), build(r, "immediate:7:2")
    assert a.message_id == b.message_id != c.message_id
    assert a.message_id.startswith("<infosentry.") and a.message_id.endswith("@sentry.example.com>")
    assert mail.make_message_id("immediate:7:1", "sentry.example.com") == a.message_id
    parsed = BytesParser(policy=email.policy.default).parsebytes(a.data)
    assert parsed["Message-ID"] == a.message_id
    with pytest.raises(ValueError):
        mail.make_message_id("k", "bad domain>")


def test_build_rejects_header_injection() -> None:
    bad = RenderedEmail("s", "t", "<p>h</p>", {"List-Unsubscribe": "<https://x.example/u>\r\nBcc: victim@example.com"})
    with pytest.raises(ValueError):
        build(bad)
    with pytest.raises(ValueError):
        build(RenderedEmail("subject\r\nBcc: victim@example.com", "t", "h"))
    with pytest.raises(ValueError):
        build_message(
            RenderedEmail("s", "t", "h"),
            to_addr="a@example.com\r\nBcc: b@example.com",
            from_addr="n@example.com",
            from_name="n",
            message_id_domain="example.com",
            dedupe_key="k",
        )


# ------------------------------------------------------------------------------------------------ sending


def _msg(key: str = "immediate:7:1") -> BuiltMessage:
    r = render_push_email("immediate", "zh", [section(7, "半导体", 2)], public_url=PUBLIC, unsubscribe_url=UNSUB)
    return build(r, key)


async def test_send_to_sink(smtp_sink: SmtpSink) -> None:  # noqa: F811
    await send_message(smtp_sink.config(), _msg())
    (got,) = await smtp_sink.wait_for(1)
    assert got.envelope_from == "noreply@sentry.example.com"
    assert got.envelope_to == ["user@example.com"]
    assert got.message["Subject"] == "[目标：半导体] 2 条高优先级新内容"
    assert got.message["List-Unsubscribe"] == f"<{UNSUB}>"
    html = got.message.get_body(("html",))
    assert html is not None and f"{PUBLIC}/r/1?goal_id=7&amp;channel=email" in html.get_content()


@pytest.mark.parametrize(
    ("code", "at", "error"),
    [
        (451, "rcpt", SmtpTemporaryError),
        (452, "mail", SmtpTemporaryError),
        (550, "rcpt", SmtpPermanentError),
        (554, "data", SmtpPermanentError),
        (421, "data", SmtpTemporaryError),
    ],
)
async def test_refusals_are_classified(smtp_sink: SmtpSink, code: int, at: str, error: type) -> None:  # noqa: F811
    smtp_sink.refuse(code, "nope", at=at)
    with pytest.raises(error) as info:
        await send_message(smtp_sink.config(), _msg())
    assert info.value.code == code and "nope" in info.value.message
    assert info.value.retryable is (error is SmtpTemporaryError)
    assert smtp_sink.received == [] and smtp_sink.refused == 1
    smtp_sink.accept()
    await send_message(smtp_sink.config(), _msg())
    assert len(await smtp_sink.wait_for(1)) == 1


async def test_a_sender_reuses_its_connections_and_drops_a_failed_one(smtp_sink: SmtpSink) -> None:  # noqa: F811
    async with SmtpSender(smtp_sink.config(), connections=2) as sender:
        await asyncio.gather(*(sender.send(_msg(f"immediate:7:{k}")) for k in range(10)))
        assert len(await smtp_sink.wait_for(10)) == 10 and smtp_sink.sessions <= 2
        smtp_sink.refuse(550, "no such user", at="rcpt")
        with pytest.raises(SmtpPermanentError):
            await sender.send(_msg("immediate:7:bad"))
        smtp_sink.accept()
        before = smtp_sink.sessions
        await sender.send(_msg("immediate:7:after"))  # on a connection that did not fail
        assert len(await smtp_sink.wait_for(11)) == 11 and smtp_sink.sessions <= before + 1


async def test_a_kept_sender_checks_an_idle_connection_and_replaces_one_the_relay_dropped(
    smtp_sink: SmtpSink,  # noqa: F811
) -> None:
    async with SmtpSender(smtp_sink.config(), connections=1, check_after=0.0) as sender:
        await sender.send(_msg("immediate:7:1"))
        await sender.send(_msg("immediate:7:2"))  # idle past check_after: NOOP, then the same session
        assert (smtp_sink.sessions, smtp_sink.noops) == (1, 1)
        smtp_sink.expire_sessions()
        await sender.send(_msg("immediate:7:3"))  # its NOOP gets 421: a new session, and the message goes
        assert len(await smtp_sink.wait_for(3)) == 3 and (smtp_sink.sessions, smtp_sink.noops) == (2, 2)
    async with SmtpSender(smtp_sink.config(), connections=1, idle_seconds=0.05, check_after=0.0) as sender:
        await sender.send(_msg("immediate:7:4"))
        await asyncio.sleep(0.1)
        await sender.send(_msg("immediate:7:5"))  # idle past idle_seconds: closed, not asked
        assert len(await smtp_sink.wait_for(5)) == 5 and (smtp_sink.sessions, smtp_sink.noops) == (4, 2)


async def test_sink_down_is_temporary_then_recovers(smtp_sink: SmtpSink) -> None:  # noqa: F811
    port = smtp_sink.port
    smtp_sink.down()
    with pytest.raises(SmtpTemporaryError) as info:
        await send_message(smtp_sink.config(), _msg())
    assert info.value.code is None
    smtp_sink.up()
    assert smtp_sink.port == port
    await send_message(smtp_sink.config(), _msg())
    await smtp_sink.wait_for(1)


async def test_auth_failure_is_permanent(smtp_sink: SmtpSink) -> None:  # noqa: F811
    smtp_sink.require_auth("bot", "s3cret")
    with pytest.raises(SmtpPermanentError) as info:
        await send_message(smtp_sink.config(user="bot", password="wrong"), _msg())
    assert info.value.code == 535
    await send_message(smtp_sink.config(user="bot", password="s3cret"), _msg())
    await smtp_sink.wait_for(1)
    assert "s3cret" not in repr(smtp_sink.config(user="bot", password="s3cret"))


async def test_silent_server_times_out_as_temporary() -> None:
    # Accepts TCP but never greets: the client must give up after cfg.timeout, not hang.
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        with pytest.raises(SmtpTemporaryError):
            await send_message(SmtpConfig("127.0.0.1", port, timeout=0.3, helo_name="c.test"), _msg())
    finally:
        server.close()


@pytest.mark.parametrize(
    ("exc", "error", "code"),
    [
        (aiosmtplib.SMTPResponseException(421, "closing"), SmtpTemporaryError, 421),
        (aiosmtplib.SMTPAuthenticationError(535, "bad creds"), SmtpPermanentError, 535),
        (aiosmtplib.SMTPAuthenticationError(454, "temp auth failure"), SmtpTemporaryError, 454),
        (aiosmtplib.SMTPSenderRefused(553, "bad sender", "a@b"), SmtpPermanentError, 553),
        (aiosmtplib.SMTPNotSupported("STARTTLS"), SmtpPermanentError, None),
        (aiosmtplib.SMTPServerDisconnected("reset"), SmtpTemporaryError, None),
        (aiosmtplib.SMTPConnectTimeoutError("timeout"), SmtpTemporaryError, None),
        (ConnectionResetError("reset"), SmtpTemporaryError, None),
        (
            aiosmtplib.SMTPRecipientsRefused(
                [
                    aiosmtplib.SMTPRecipientRefused(550, "no", "a@x"),
                    aiosmtplib.SMTPRecipientRefused(451, "later", "b@x"),
                ]
            ),
            SmtpTemporaryError,
            451,
        ),
    ],
)
def test_classify(exc: Exception, error: type, code: int | None) -> None:
    err = mail._classify(exc)
    assert type(err) is error and err.code == code


# ------------------------------------------------------------------------------------------------ file sink


async def test_file_sink_is_atomic_and_idempotent(tmp_path: Path) -> None:
    outbox = tmp_path / "outbox"
    cfg = SmtpConfig(f"file:{outbox}", 0)
    await send_message(cfg, _msg("batch:7:2026-11-27T12:30"))
    await send_message(cfg, _msg("batch:7:2026-11-27T12:30"))  # resend after a "crash": no second file
    await send_message(SmtpConfig(f"file://{outbox}", 0), _msg("digest:7:2026-11-27"))
    files = sorted(p.name for p in outbox.iterdir() if not p.name.startswith("."))
    assert len(files) == 2
    assert all(name.endswith(".eml") and "-" in name for name in files)
    assert not [p for p in outbox.iterdir() if p.name.endswith(".tmp")]
    sink = FileSink(outbox)
    path = sink.find("batch:7:2026-11-27T12:30")
    assert path is not None and path.name.split("-", 1)[1].startswith("batch_7_2026")
    parsed = BytesParser(policy=email.policy.default).parsebytes(path.read_bytes())
    assert parsed["Subject"] == "[目标：半导体] 2 条高优先级新内容"
    # A key that is already file-name safe is used verbatim.
    safe = sink.write(_msg("immediate.7.42"))
    assert safe.name.endswith("-immediate.7.42.eml") and sink.write(_msg("immediate.7.42")) == safe


def test_file_sink_concurrent_writers_write_once(tmp_path: Path) -> None:
    import concurrent.futures

    sink = FileSink(tmp_path)
    msg = _msg("immediate:9:1")
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        paths = set(pool.map(lambda _: sink.write(msg), range(16)))
    assert len(paths) == 1 and len(list(tmp_path.glob("*.eml"))) == 1


def test_file_sink_selection() -> None:
    assert mail.file_sink_for(SmtpConfig("smtp.example.com", 587)) is None
    sink = mail.file_sink_for(SmtpConfig("file:///var/outbox", 0))
    assert sink is not None and sink.directory == Path("/var/outbox")
    with pytest.raises(ValueError):
        mail.file_sink_for(SmtpConfig("file:", 0))


async def test_sink_fixture_api(smtp_sink: SmtpSink) -> None:  # noqa: F811
    with pytest.raises(TimeoutError):
        await smtp_sink.wait_for(1, timeout=0.05)
    assert smtp_sink.env()["SMTP_PORT"] == str(smtp_sink.port) and smtp_sink.env()["SMTP_TLS"] == "false"
    await send_message(smtp_sink.config(), _msg())
    # The blocking variant serves sync code (e.g. a test driving the CLI through subprocess.run).
    got = await asyncio.to_thread(smtp_sink.wait_for_sync, 1, 2.0)
    assert got[0].message["Message-ID"] == smtp_sink.messages[0]["Message-ID"]
    smtp_sink.clear()
    assert smtp_sink.received == [] and smtp_sink.is_up
