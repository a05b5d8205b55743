"""Where Postgres spends its time while a benchmark runs: `python -m tests.bench.pg_activity DATA_DIR [--seconds
300] [--every 0.25] [--top 30]`.

DATA_DIR is the benchmark's data directory (for `bin/bench scale`, the /tmp/infosentry-bench-scale-* it prints
and keeps): the embedded server it runs is reached through its socket. Every `--every` seconds the active client
backends are read from pg_stat_activity; at the end each statement (its first 110 characters) is printed with
what it was doing (CPU, or the wait event) and how many backends did it on average. A statement at 0.12 kept an
eighth of a core busy the whole time: the sampling profiler of the database side, as py-spy is of ours.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import time
from collections import Counter
from pathlib import Path

import asyncpg

from infosentry import db

ACTIVE = """SELECT query, coalesce(wait_event_type || ':' || wait_event, 'CPU') AS doing
            FROM pg_stat_activity
            WHERE state = 'active' AND backend_type = 'client backend' AND pid <> pg_backend_pid()"""


async def sample(data_dir: Path, seconds: float, every: float) -> tuple[Counter[tuple[str, str]], int]:
    conn = await asyncpg.connect(db.embedded_server_uri(data_dir))
    counts: Counter[tuple[str, str]] = Counter()
    samples = 0
    try:
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for r in await conn.fetch(ACTIVE):
                counts[(re.sub(r"\s+", " ", r["query"]).strip()[:110], r["doing"])] += 1
            samples += 1
            await asyncio.sleep(every)
    finally:
        await conn.close()
    return counts, samples


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data_dir", type=Path)
    parser.add_argument("--seconds", type=float, default=300.0)
    parser.add_argument("--every", type=float, default=0.25)
    parser.add_argument("--top", type=int, default=30)
    args = parser.parse_args()
    counts, samples = asyncio.run(sample(args.data_dir, args.seconds, args.every))
    print(f"{samples} samples; backends on average, doing what, in which statement:")
    for (query, doing), n in counts.most_common(args.top):
        print(f"{n / max(samples, 1):6.3f}  {doing:28s} {query}")


if __name__ == "__main__":
    main()
