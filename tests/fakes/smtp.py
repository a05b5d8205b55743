"""Fake SMTP server for tests: an aiosmtpd sink on 127.0.0.1 (own thread, own loop) recording mail; it can refuse,
demand auth or go down. Fixture `smtp_sink`; use `sink.config()` or `sink.env()`, then `await sink.wait_for(n)`.
Imports aiosmtpd, pytest and infosentry.mail.SmtpConfig only."""

from __future__ import annotations

import asyncio
import email.policy
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from email.message import EmailMessage
from email.parser import BytesParser
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from infosentry.mail import SmtpConfig

HOST = "127.0.0.1"
# Given to aiosmtpd so it does not call socket.getfqdn() (a slow DNS lookup on some hosts).
SERVER_NAME = "sink.infosentry.test"


@dataclass(frozen=True)
class ReceivedMail:
    envelope_from: str
    envelope_to: list[str]
    message: EmailMessage  # parsed with email.policy.default
    raw: bytes


@dataclass(frozen=True)
class _Refusal:
    code: int
    message: str
    at: str  # "mail", "rcpt" or "data"


class _Handler:
    def __init__(self, sink: SmtpSink) -> None:
        self.sink = sink
        self._begun: dict[int, int] = {}  # session id -> expire_sessions() calls before its EHLO

    def _refusal(self, stage: str) -> str | None:
        refusal = self.sink._refusal
        if refusal is None or refusal.at != stage:
            return None
        with self.sink._cond:
            self.sink.refused += 1
        return f"{refusal.code} {refusal.message}"

    def _expired(self, server: SMTP, session: Session) -> str | None:
        """A relay's idle timeout: a session begun before expire_sessions() gets 421 and is closed."""
        if self.sink._expired_before <= self._begun.get(id(session), self.sink._expired_before):
            return None
        asyncio.get_running_loop().call_soon(server.transport.close)
        return "421 4.4.2 sink.infosentry.test Error: timeout exceeded"

    async def handle_EHLO(
        self, server: SMTP, session: Session, envelope: Envelope, hostname: str, responses: list[str]
    ) -> list[str]:
        session.host_name = hostname
        self._begun[id(session)] = self.sink._expired_before
        if self.sink.session_setup:
            await asyncio.sleep(self.sink.session_setup)
        with self.sink._cond:
            self.sink.sessions += 1
        return responses

    async def handle_QUIT(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self.sink._cond:
            self.sink.quits += 1
        return "221 Bye"

    async def handle_NOOP(self, server: SMTP, session: Session, envelope: Envelope, arg: str) -> str:
        with self.sink._cond:
            self.sink.noops += 1
        return self._expired(server, session) or "250 OK"

    async def handle_MAIL(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, mail_options: list[str]
    ) -> str:
        if answer := self._expired(server, session) or self._refusal("mail"):
            return answer
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        if answer := self._refusal("rcpt"):
            return answer
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        if answer := self._refusal("data"):
            return answer
        raw = envelope.original_content or envelope.content or b""
        if isinstance(raw, str):
            raw = raw.encode("utf-8")
        parsed = BytesParser(policy=email.policy.default).parsebytes(raw)
        assert isinstance(parsed, EmailMessage)
        mail = ReceivedMail(str(envelope.mail_from), list(envelope.rcpt_tos), parsed, raw)
        with self.sink._cond:
            self.sink.received.append(mail)
            self.sink._cond.notify_all()
        return "250 Message accepted for delivery"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


class SmtpSink:
    """A recording SMTP server on 127.0.0.1:`port`.

    Behaviour switches (take effect for the next SMTP command, from any thread):
      refuse(code=451, message=..., at="rcpt")  answer RCPT (or "mail"/"data") with `code`; `refused` counts them
      accept()                                   back to normal
      require_auth(user, password)               AUTH with other credentials gets 535 (mail without AUTH is still
                                                 accepted); allow_any_auth() undoes it
      down() / up()                              stop listening (connection refused) / listen again on the same port
      session_setup = SECONDS                    EHLO answers that late, as a remote relay's TLS handshake, EHLO and
                                                 login would (a constructor argument too)
      expire_sessions()                          the sessions open now answer their next NOOP or MAIL with 421 and
                                                 close, as a relay's idle timeout does
    Inspection: `received` (ReceivedMail list), `messages` (the parsed EmailMessages), `sessions` (EHLOs), `noops`,
    `quits`, clear(),
    `await wait_for(n, timeout)` or wait_for_sync(n, timeout) for blocking tests.
    """

    def __init__(self, port: int | None = None, *, session_setup: float = 0.0) -> None:
        self.host = HOST
        self.port = port or _free_port()
        self.session_setup = session_setup  # seconds EHLO takes: a remote relay's TLS handshake and round trips
        self.received: list[ReceivedMail] = []
        self.refused = 0
        self.sessions = 0  # EHLOs: one per client connection (STARTTLS would add one)
        self.noops = 0
        self.quits = 0
        self._expired_before = 0  # expire_sessions() calls so far
        self._refusal: _Refusal | None = None
        self._credentials: tuple[str, str] | None = None
        self._cond = threading.Condition()
        self._controller: Controller | None = None

    # -- lifecycle

    def _authenticate(
        self, server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any
    ) -> AuthResult:
        expected = self._credentials
        if expected is None:
            return AuthResult(success=True)
        ok = (
            isinstance(auth_data, LoginPassword)
            and (
                auth_data.login.decode(),
                auth_data.password.decode(),
            )
            == expected
        )
        # handled=False lets aiosmtpd answer the failure itself (535); True would leave the client hanging.
        return AuthResult(success=ok, handled=False)

    def up(self) -> None:
        """Start listening on `port` (idempotent)."""
        if self._controller is not None:
            return
        controller = Controller(
            _Handler(self),
            hostname=self.host,
            port=self.port,
            server_hostname=SERVER_NAME,
            ready_timeout=5.0,
            authenticator=self._authenticate,
            auth_require_tls=False,  # plain-text AUTH over loopback, test only
        )
        # The port of a sink that was just down()ed can linger briefly; retry a few times.
        for attempt in range(20):
            try:
                controller.start()
                break
            except Exception:  # aiosmtpd re-raises the bind error as-is
                if attempt == 19:
                    raise
                time.sleep(0.05)
        self._controller = controller

    def down(self) -> None:
        """Stop listening and drop open connections; new connections are refused until up()."""
        if self._controller is not None:
            self._controller.stop()
            self._controller = None

    start = up
    stop = down

    @property
    def is_up(self) -> bool:
        return self._controller is not None

    def __enter__(self) -> SmtpSink:
        self.up()
        return self

    def __exit__(self, *exc: object) -> None:
        self.down()

    # -- behaviour

    def refuse(self, code: int = 451, message: str | None = None, *, at: str = "rcpt") -> None:
        if at not in ("mail", "rcpt", "data"):
            raise ValueError("at must be 'mail', 'rcpt' or 'data'")
        default = "Try again later" if code < 500 else "Mailbox unavailable"
        self._refusal = _Refusal(code, message or default, at)

    def accept(self) -> None:
        self._refusal = None

    def expire_sessions(self) -> None:
        self._expired_before += 1

    def require_auth(self, user: str, password: str) -> None:
        self._credentials = (user, password)

    def allow_any_auth(self) -> None:
        self._credentials = None

    # -- inspection

    @property
    def messages(self) -> list[EmailMessage]:
        return [m.message for m in self.received]

    def clear(self) -> None:
        with self._cond:
            self.received.clear()
            self.refused = 0

    async def wait_for(self, n: int = 1, timeout: float = 5.0) -> list[ReceivedMail]:
        """Wait until at least `n` messages arrived; TimeoutError otherwise. Polls, so it never blocks the loop."""
        deadline = time.monotonic() + timeout
        while len(self.received) < n:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"SMTP sink: expected {n} message(s), got {len(self.received)} in {timeout}s")
            await asyncio.sleep(0.01)
        return list(self.received)

    def wait_for_sync(self, n: int = 1, timeout: float = 5.0) -> list[ReceivedMail]:
        with self._cond:
            if not self._cond.wait_for(lambda: len(self.received) >= n, timeout):
                raise TimeoutError(f"SMTP sink: expected {n} message(s), got {len(self.received)} in {timeout}s")
            return list(self.received)

    # -- wiring

    def config(self, **overrides: Any) -> SmtpConfig:
        """An SmtpConfig pointing at this sink (plain SMTP, no TLS, short timeout)."""
        cfg = SmtpConfig(
            host=self.host, port=self.port, starttls=False, ssl=False, timeout=5.0, helo_name="client.test"
        )
        return replace(cfg, **overrides)

    def env(self) -> dict[str, str]:
        """Environment variables that point an infosentry process at this sink."""
        return sink_env(self.host, self.port)


@pytest.fixture
def smtp_sink() -> Iterator[SmtpSink]:
    """A fresh, running SmtpSink per test, stopped afterwards.

    Deliberately a sync fixture: the sink has its own thread and loop, so it serves sync tests, async tests and
    subprocesses alike. Use via ``pytest_plugins`` / conftest or ``from tests.fakes.smtp import smtp_sink  # noqa``.
    """
    with SmtpSink() as sink:
        yield sink


def sink_env(host: str, port: int) -> dict[str, str]:
    """Environment variables that point an infosentry process at a sink on host:port (plain SMTP, no auth)."""
    return {
        "SMTP_HOST": host,
        "SMTP_PORT": str(port),
        "SMTP_USER": "",
        "SMTP_PASSWORD": "",
        "SMTP_TLS": "false",
        "SMTP_SSL": "false",
    }
