"""The outbox → SMTP send path alone: `bin/bench send [--emails 2000] [--rounds 3] [--items 3] [--lang zh]`.

A fresh embedded database gets `--emails` rendered IMMEDIATE emails (the real templates, `--items` items each,
Chinese or English) waiting in the outbox; `push.send_due` then sends them all to an SMTP sink (aiosmtpd on
127.0.0.1) running in a process of its own, so the CPU measured here is the sender's: building each MIME
message, the SMTP dialogue, and the outbox bookkeeping in Postgres. Repeated `--rounds` times with new rows;
prints emails/s and CPU per email (ours and Postgres'), and records the median round.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from infosentry import db, mail, migrate, push
from infosentry.runtime import open_runtime
from infosentry.settings import load_settings
from infosentry.store import emails as emails_store
from tests.bench import results
from tests.bench.common import SinkProcess, postgres_cpu, self_cpu

PUBLIC = "https://sentry.example.com"
TITLES = {
    "zh": "国产芯片取得突破，多家厂商发布新一代AI芯片",
    "en": "Chip makers unveil a new generation of AI accelerators",
}


def rendered(lang: str, n_items: int, k: int) -> mail.RenderedEmail:
    items = [
        mail.EmailItem(
            item_id=k * 100 + i,
            title=f"{TITLES[lang]} {k}.{i}",
            url=f"https://news{i}.example.org/story/{k}-{i}",
            link=f"{PUBLIC}/r/{k * 100 + i}?goal_id=7&channel=email&sig=s{k}x{i}",
            snippet=TITLES[lang] * 3,
            source_name=f"Source {i}",
            published_local="2026-12-05 09:05 CST",
            reason=TITLES[lang][:12],
            score=0.95,
        )
        for i in range(n_items)
    ]
    section = mail.Section(7, "半导体" if lang == "zh" else "Chips", items)
    return mail.render_push_email("immediate", lang, [section], public_url=PUBLIC, unsubscribe_url=f"{PUBLIC}/u?t=x")


def outbox_row(key: str, user_id: int, e: mail.RenderedEmail) -> emails_store.NewEmail:
    return emails_store.NewEmail(
        key, "immediate", user_id, None, "reader@example.com", e.subject, e.text, e.html, e.headers, "pending", None
    )


async def bench(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="infosentry-bench-send-"))
    sink = SinkProcess().__enter__()
    try:
        dsn = db.embedded_server_uri(data_dir)
        async with db.plain_connection(dsn) as conn:
            await migrate.upgrade(conn)
        settings = replace(
            load_settings({}),
            database_url=dsn,
            data_dir=data_dir,
            smtp_host="127.0.0.1",
            smtp_port=sink.port,
            smtp_tls=False,
            smtp_ssl=False,
            log_format="text",
        )
        async with open_runtime(settings) as rt:
            user = await rt.pool.fetchval("INSERT INTO users (email) VALUES ('reader@example.com') RETURNING id")
            emails = [rendered(args.lang, args.items, k) for k in range(args.emails)]
            rows = []
            for r in range(args.rounds):
                async with rt.pool.acquire() as conn:
                    await emails_store.insert_emails(
                        conn, [outbox_row(f"bench:{r}:{k}", user, e) for k, e in enumerate(emails)]
                    )
                cpu, pg, t = self_cpu(), postgres_cpu(data_dir / "pg"), time.perf_counter()
                report = await push.send_due(rt, budget=10**9)
                wall = time.perf_counter() - t
                if report.sent != args.emails:
                    raise RuntimeError(f"sent {report.sent} of {args.emails}: {report}")
                row = (
                    args.emails / wall,
                    (self_cpu() - cpu) / args.emails * 1000,
                    (postgres_cpu(data_dir / "pg") - pg) / args.emails * 1000,
                )
                rows.append(row)
                print(f"round {r + 1}: {row[0]:.0f} emails/s; CPU per email {row[1]:.2f} ms, Postgres {row[2]:.2f} ms")
        size = len(emails[0].text.encode()) + len(emails[0].html.encode())
        rate, ours, pg = (statistics.median(c) for c in zip(*rows, strict=True))
        print(
            f"send: {args.emails} emails × {args.rounds} rounds ({args.lang}, {args.items} items, {size} bytes of "
            f"bodies each), median: {rate:.0f} emails/s, CPU per email {ours:.2f} ms ours + {pg:.2f} ms Postgres"
        )
        results.record("emails_per_s", round(rate), "emails/s", better="higher")
        results.record("cpu_ms_per_email", round(ours, 2), "ms")
        results.record("postgres_cpu_ms_per_email", round(pg, 2), "ms")
    finally:
        sink.__exit__(None)
        db.stop_embedded(data_dir / "pg")
        shutil.rmtree(data_dir, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--emails", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--items", type=int, default=3, help="items per email")
    parser.add_argument("--lang", choices=mail.LANGS, default="zh")
    results.add_argument(parser)
    args = parser.parse_args()
    with results.session("send", args, params={"emails": args.emails, "items": args.items, "lang": args.lang}):
        asyncio.run(bench(args))


if __name__ == "__main__":
    main()
