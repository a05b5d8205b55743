"""Where each instant alert's time went on a scale day: `python -m tests.bench.alert_path DATA_DIR [--last 660]`.

DATA_DIR is the data directory `bin/bench scale` kept (the /tmp/infosentry-bench-scale-* it prints). For every
IMMEDIATE email sent for an item stored in the last `--last` seconds of the run (the day, not the warm-up), the
path from the fetch to `sent` is cut at the times the tables keep, and each leg is printed at p50/p90/p95/p99:

- fetch → embedding claim: `items.ingested_at` → `embedded_at` (the start of the embedding batch's transaction)
- embedding claim → decision: embedding, matching, the hop to `decide_pending` and the decide round
- decision → notification: the flush that writes the ledger row and the email
- notification → send nudge: the first `send_emails` job deferred after it (from the bench's job log)
- notification → send claim: the outbox lease (`next_attempt_at` − the lease) gives the claim's time
- send claim → sent: the SMTP dialogue and `mark_sent`

The legs are quantiles of their own, so they do not add up to the total's.
"""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import asyncpg

from infosentry import db, push

LEGS = {
    "total": "sent_at - ingested_at",
    "fetch → embedding claim": "embedded_at - ingested_at",
    "embedding claim → decision": "decided_at - embedded_at",
    "decision → notification": "notified_at - decided_at",
    "notification → send nudge": "nudged_at - notified_at",
    "notification → send claim": "claimed_at - notified_at",
    "send claim → sent": "sent_at - claimed_at",
}
QUANTILES = [0.5, 0.9, 0.95, 0.99]

PATHS = """
SELECT i.ingested_at, i.embedded_at, d.decided_at, n.created_at AS notified_at,
       e.next_attempt_at - make_interval(secs => $2) AS claimed_at, e.sent_at,
       (SELECT min(b.at) FROM bench_job_log b
        WHERE b.task_name = 'send_emails' AND b.type = 'deferred' AND b.at >= n.created_at) AS nudged_at
FROM notifications n
JOIN emails e ON e.id = n.email_id
JOIN items i ON i.id = n.item_id
JOIN decisions d ON d.goal_id = n.goal_id AND d.item_id = n.item_id
WHERE n.tier = 'IMMEDIATE' AND e.status = 'sent'
  AND i.ingested_at >= (SELECT max(ingested_at) FROM items) - make_interval(secs => $1)"""


async def legs(data_dir: Path, last: float) -> tuple[int, dict[str, list[float]]]:
    leg_sql = ",\n".join(
        f'percentile_cont(ARRAY{QUANTILES}) WITHIN GROUP (ORDER BY extract(epoch FROM {expr})) AS "{name}"'
        for name, expr in LEGS.items()
    )
    conn = await asyncpg.connect(db.embedded_server_uri(data_dir))
    try:
        row = await conn.fetchrow(f"SELECT count(*) AS n, {leg_sql} FROM ({PATHS}) p", last, push.LEASE_SECONDS)
    finally:
        await conn.close()
    assert row is not None
    return int(row["n"]), {name: list(row[name] or []) for name in LEGS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--last", type=float, default=660.0, help="seconds before the newest item (the day)")
    args = parser.parse_args()
    n, found = asyncio.run(legs(args.data_dir, args.last))
    print(f"{n} instant alerts sent; seconds at " + " / ".join(f"p{round(q * 100)}" for q in QUANTILES))
    for name, values in found.items():
        print(f"  {name:28s} " + " / ".join(f"{v:6.2f}" for v in values))


if __name__ == "__main__":
    main()
