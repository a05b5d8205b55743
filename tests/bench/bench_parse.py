"""Where a parse worker's CPU goes, per feed, in one process: `bin/bench parse [--feeds 200] [--items 20]
[--rounds 3]`.

bench_ingest's feeds (same generator), each stage timed alone over every feed (best of `rounds`, CPU time of
this process): feedparser.parse with infosentry's flags; infosentry.sources.rss.parse (feedparser plus the item
drafts: link resolution, HTML snippet cleaning, titles, dates, tags); ingest.prepare (URL canonicalisation,
url_hash, title_key, caps); pickling the body to the worker and the PreparedFeed back (what the process pool
adds, besides the pipe). Also the size of both pickles.
"""

from __future__ import annotations

import argparse
import copy
import io
import pickle
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from tests.bench import results
from tests.bench.bench_ingest import make_feed


def cpu_per_feed(fn: Callable[[Any], Any], inputs: list[Any], rounds: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        started = time.process_time()
        for x in inputs:
            fn(x)
        best = min(best, time.process_time() - started)
    return best / len(inputs) * 1000


def main() -> None:
    import feedparser

    from infosentry.ingest import parsing as ingest
    from infosentry.sources import rss
    from infosentry.text import clean_text
    from infosentry.urls import canonical_url, title_key, url_hash

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--feeds", type=int, default=200)
    parser.add_argument("--items", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    results.add_argument(parser)
    args = parser.parse_args()
    with results.session("parse", args):
        now = datetime.now(UTC)
        bodies = [make_feed(n, args.items, now) for n in range(args.feeds)]
        url = "http://127.0.0.1:8000/feed/1.xml"
        ctype = "application/rss+xml"

        def fp(body: bytes) -> Any:
            return feedparser.parse(
                io.BytesIO(body),
                response_headers={"content-type": ctype},  # no xml:base: no base URI, as in rss.parse,
                sanitize_html=False,
                resolve_relative_uris=False,
            )

        parsed = [rss.parse(b, ctype, url, {}) for b in bodies]
        prepared = [ingest.prepare(rss.parse(b, ctype, url, {})) for b in bodies]
        docs = [fp(b) for b in bodies]
        urls = [d.url for p in parsed for d in p.items]
        titles = [d.title for p in parsed for d in p.items]
        stages = {
            "feedparser": cpu_per_feed(fp, bodies, args.rounds),
            "rss_parse": cpu_per_feed(lambda b: rss.parse(b, ctype, url, {}), bodies, args.rounds),
            "parse_and_prepare": cpu_per_feed(
                lambda b: ingest.parse_and_prepare(rss.parse, b, ctype, url, {}), bodies, args.rounds
            ),
            "pickle_body": cpu_per_feed(
                lambda b: pickle.loads(pickle.dumps((rss.parse, b, ctype, url, {}))), bodies, 3
            ),
            "pickle_result": cpu_per_feed(lambda p: pickle.loads(pickle.dumps(p)), prepared, args.rounds),
        }
        per_item = len(urls) / len(bodies)
        stages["canonical_url+url_hash"] = (
            cpu_per_feed(lambda u: (canonical_url(u), url_hash(u)), urls, args.rounds) * per_item
        )
        stages["canonical_url_once"] = cpu_per_feed(canonical_url, urls, args.rounds) * per_item
        stages["title_key"] = cpu_per_feed(title_key, titles, args.rounds) * per_item
        # measured on their own (differences of noisy totals can even come out negative)
        stages["entry_drafts"] = cpu_per_feed(
            lambda d: [rss._entry_draft(e, url, now) for e in d.entries], docs, args.rounds
        )
        stages["clean_text"] = cpu_per_feed(
            lambda d: [clean_text(e.get("summary"), rss.SNIPPET_LIMIT) for e in d.entries], docs, args.rounds
        )
        best = float("inf")
        for _ in range(args.rounds):
            fresh = [copy.deepcopy(p) for p in parsed]  # prepare() edits its drafts in place
            started = time.process_time()
            for p in fresh:
                ingest.prepare(p)
            best = min(best, time.process_time() - started)
        stages["prepare"] = best / len(parsed) * 1000
        body_kib = sum(len(pickle.dumps((rss.parse, b, ctype, url, {}))) for b in bodies) / len(bodies) / 1024
        result_kib = sum(len(pickle.dumps(p)) for p in prepared) / len(prepared) / 1024
        print(f"{args.feeds} feeds × {args.items} items; CPU ms per feed (best of {args.rounds}):")
        for name, ms in stages.items():
            print(f"  {name:<24} {ms:7.3f} ms")
            results.record(f"{name}.cpu_per_feed", ms, "ms")
        print(f"  pickles: body to the worker {body_kib:.1f} KiB, PreparedFeed back {result_kib:.1f} KiB per feed")
        results.record("pickle_body_size", body_kib, "KiB")
        results.record("pickle_result_size", result_kib, "KiB")


if __name__ == "__main__":
    main()
