"""SQL for the email outbox (rendered messages with a unique dedupe key, leased while sending) and
the SMTP delivery state behind the smtp_failures alert. Scheduling takes `now` so tests can drive the clock."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import astuple, dataclass
from datetime import datetime
from typing import Any

import asyncpg

from infosentry.store import Conn, delete_in_batches


@dataclass(frozen=True)
class NewEmail:
    """A rendered email for the outbox; `dedupe_key` makes a retried step create it at most once."""

    dedupe_key: str
    kind: str
    user_id: int | None
    goal_id: int | None
    to_addr: str
    subject: str
    body_text: str
    body_html: str
    headers: dict[str, str]
    status: str
    last_error: str | None


async def insert_emails(conn: asyncpg.Connection, emails: Sequence[NewEmail]) -> dict[str, int]:
    """The emails in one statement; returns the ids of those created by dedupe key (an existing key is skipped)."""
    if not emails:
        return {}
    rows = await conn.fetch(
        """INSERT INTO emails (dedupe_key, kind, user_id, goal_id, to_addr, subject, body_text, body_html, headers,
                               status, last_error)
           SELECT * FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[], $5::text[], $6::text[],
                                $7::text[], $8::text[], $9::jsonb[], $10::text[], $11::text[])
           ON CONFLICT (dedupe_key) DO NOTHING RETURNING id, dedupe_key""",
        *(list(column) for column in zip(*(astuple(e) for e in emails), strict=True)),
    )
    return {r["dedupe_key"]: r["id"] for r in rows}


async def insert_email(conn: asyncpg.Connection, email: NewEmail) -> int | None:
    """One email (a sign-in link, an alert); None when its dedupe key exists."""
    return (await insert_emails(conn, [email])).get(email.dedupe_key)


async def suppress_due(conn: Conn, *, now: datetime, kinds: list[str], reason: str) -> int:
    status = await conn.execute(
        """UPDATE emails SET status = 'suppressed', last_error = $3
           WHERE status = 'pending' AND next_attempt_at <= $1 AND kind = ANY($2::text[])""",
        now,
        kinds,
        reason,
    )
    return int(status.split()[-1])


async def claim_due(conn: Conn, *, now: datetime, limit: int, lease_seconds: float) -> list[asyncpg.Record]:
    """Due rows (pending, or `sending` whose lease ran out: a crashed sender) move to `sending` with a lease.

    Instant alerts, sign-in links and operator alerts go first: a batch window or digest time fires hundreds of
    emails at once, and in due order an instant alert decided a second later waited behind all of them."""
    return await conn.fetch(
        """UPDATE emails e SET status = 'sending', attempts = e.attempts + 1,
                  next_attempt_at = $1 + make_interval(secs => $3::float8)
           WHERE e.id IN (SELECT id FROM emails
                          WHERE status IN ('pending', 'sending') AND next_attempt_at <= $1
                          ORDER BY kind IN ('batch', 'digest'), next_attempt_at, id LIMIT $2 FOR UPDATE SKIP LOCKED)
           RETURNING e.*""",
        now,
        limit,
        lease_seconds,
    )


async def mark_sent(conn: Conn, email_id: int, *, forget_body: bool = False) -> None:
    """Sent. With forget_body the bodies are cleared (a login email's body is a live credential until used)."""
    await conn.execute(
        """UPDATE emails SET status = 'sent', sent_at = now(), last_error = NULL,
                  body_text = CASE WHEN $2 THEN '' ELSE body_text END,
                  body_html = CASE WHEN $2 THEN '' ELSE body_html END
           WHERE id = $1 AND status = 'sending'""",
        email_id,
        forget_body,
    )


async def mark_retry(conn: Conn, email_id: int, *, at: datetime, error: str) -> None:
    await conn.execute(
        "UPDATE emails SET status = 'pending', next_attempt_at = $2, last_error = $3 WHERE id = $1",
        email_id,
        at,
        error[:1000],
    )


async def mark_failed(conn: Conn, email_id: int, *, error: str) -> None:
    await conn.execute(
        "UPDATE emails SET status = 'failed', last_error = $2 WHERE id = $1",
        email_id,
        error[:1000],
    )


async def mark_suppressed(conn: Conn, email_id: int, *, reason: str) -> None:
    await conn.execute("UPDATE emails SET status = 'suppressed', last_error = $2 WHERE id = $1", email_id, reason)


async def smtp_round(conn: Conn, *, sent: int, errors: Sequence[str]) -> None:
    """delivery_state('smtp') after a sending lane's batch: consecutive failures for the alert, reset by a
    success. Lanes run concurrently, in no meaningful order, so a batch's failures count as after its successes
    (an outage is never hidden by one lucky send)."""
    await conn.execute(
        """INSERT INTO delivery_state (channel, consecutive_failures, last_error, last_success_at, updated_at)
           VALUES ('smtp', $2, $3, CASE WHEN $1 > 0 THEN now() END, now())
           ON CONFLICT (channel) DO UPDATE SET
               consecutive_failures = CASE WHEN $1 > 0 THEN $2 ELSE delivery_state.consecutive_failures + $2 END,
               last_error = COALESCE($3, delivery_state.last_error),
               last_success_at = COALESCE(EXCLUDED.last_success_at, delivery_state.last_success_at),
               updated_at = now()""",
        sent,
        len(errors),
        errors[-1][:1000] if errors else None,
    )


async def release_stuck(conn: Conn, *, now: datetime) -> int:
    """`sending` rows whose lease ran out (the sender crashed mid-send) go back to pending."""
    status = await conn.execute(
        "UPDATE emails SET status = 'pending', last_error = 'sender lost (lease expired); retrying' "
        "WHERE status = 'sending' AND next_attempt_at <= $1",
        now,
    )
    return int(status.split()[-1])


async def due_email_count(conn: Conn, *, now: datetime) -> int:
    return await conn.fetchval(
        "SELECT count(*) FROM emails WHERE status IN ('pending', 'sending') AND next_attempt_at <= $1", now
    )


async def make_retries_due(conn: Conn) -> int:
    """Emails waiting out a retry backoff become due now (after an SMTP outage is over)."""
    return int(
        await conn.fetchval(
            """WITH due AS (UPDATE emails SET next_attempt_at = now()
                            WHERE status = 'pending' AND attempts > 0 AND next_attempt_at > now() RETURNING 1)
               SELECT count(*) FROM due"""
        )
    )


async def for_user(conn: Conn, user_id: int) -> list[dict[str, Any]]:
    rows = await conn.fetch(
        "SELECT id, kind, subject, status, dedupe_key FROM emails WHERE user_id = $1 ORDER BY id", user_id
    )
    return [dict(r) for r in rows]


async def prune(conn: Conn, *, older_than_days: float) -> int:
    """Emails that are done (sent, failed, suppressed) past the retention; the inbox keeps its entries."""
    return await delete_in_batches(
        conn,
        "emails",
        "status IN ('sent', 'failed', 'suppressed') AND created_at < now() - make_interval(secs => $1::float8 * 86400)",
        older_than_days,
    )
