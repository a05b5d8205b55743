"""`bin/bench all` and `bin/bench compare` (see tests/bench/results.py for the JSON format).

    bin/bench all [--full] [--only a,b] [--skip a,b] [--json PATH] [--list]
        runs every benchmark, one after the other, each in its own process with its output passed through and
        its results written to tests/bench/results/all-STAMP/NAME.json; then merges them into
        tests/bench/results/all-STAMP.json (or PATH) and prints one summary line per metric. The default sizes
        are modest (the whole run takes about 10 minutes on 2 cores); --full uses each benchmark's own
        defaults (the big runs: 10,000 items for match, 30 s per API route, ...).

    bin/bench compare OLD.json NEW.json [--threshold 0.05] [--fail-worse]
        prints every metric of both files with NEW/OLD and whether that is better or worse (within the
        threshold: "same"). Files of one benchmark and merged `all` files can be mixed: metrics are compared
        by their `bench.metric` name. --fail-worse exits 1 when any metric is worse beyond the threshold.

The machine is shared and noisy: compare runs taken close together, repeat them, and read a ratio within
±5-10 % as noise unless it repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.bench import results

# (name, modest arguments for `all`, arguments for `all --full`, time bound in seconds)
PLAN: list[tuple[str, list[str], list[str], int]] = [
    ("ingest", ["--feeds", "1000", "--items", "20"], [], 600),
    ("ingest_baseline", ["--feeds", "1000", "--items", "20"], ["--repeat", "3"], 1200),
    ("ingest_sql", ["--items", "100000", "--logs", "300000", "--rounds", "3"], [], 900),
    ("parse", ["--feeds", "100"], [], 300),
    ("match", ["--items", "3000", "--local-items", "500"], [], 900),
    ("pipeline", ["--rate", "100", "--seconds", "15"], [], 600),
    ("send", ["--emails", "1000", "--rounds", "2"], [], 600),
    ("api", ["--seconds", "8", "--log-level", "WARNING"], [], 600),
    ("relevance", ["--provider", "fake"], ["--provider", "local"], 1200),
    ("memory", ["--feeds", "25", "--idle", "5", "--breakdown-texts", "500"], [], 1800),
    ("fuzz", ["--examples", "10", "--phases", "fuzzing"], [], 1800),
    ("recovery", [], [], 600),
    ("tail", ["--sizes", "10000,50000", "--rounds", "3"], [], 1200),
    ("scale", ["--sources", "1000", "--items", "10000", "--minutes", "2", "--drain", "300"], [], 3600),
    ("soak", ["--minutes", "6", "--sample", "30"], ["--minutes", "30"], 3600),
]
BENCH_DIR = Path(__file__).resolve().parent


def available() -> list[str]:
    return sorted(p.stem.removeprefix("bench_") for p in BENCH_DIR.glob("bench_*.py"))


def run_all(args: argparse.Namespace) -> int:
    names = [name for name, *_ in PLAN]
    missing = [n for n in available() if n not in names]
    plan = PLAN + [(n, [], [], 1800) for n in missing]  # a new benchmark runs with its defaults until listed
    if args.only:
        wanted = args.only.split(",")
        unknown = [w for w in wanted if w not in {p[0] for p in plan}]
        if unknown:
            raise SystemExit(f"unknown benchmark(s): {', '.join(unknown)}; known: {', '.join(p[0] for p in plan)}")
        plan = [p for p in plan if p[0] in wanted]
    if args.skip:
        plan = [p for p in plan if p[0] not in args.skip.split(",")]
    if args.list:
        for name, modest, full, bound in plan:
            print(f"{name:<16} {' '.join(full if args.full else modest) or '(defaults)'}  (bound {bound} s)")
        return 0

    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    out_dir = results.RESULTS_DIR / f"all-{stamp}"
    out_dir.mkdir(parents=True, exist_ok=True)
    merged: dict[str, Any] = {
        "schema": results.SCHEMA,
        "bench": "all",
        "argv": sys.argv[1:],
        "params": {"full": args.full},
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "env": results.environment(),
        "status": "ok",
        "runs": {},
        "metrics": {},
    }
    statuses: list[tuple[str, str, float]] = []
    started_all = time.perf_counter()
    for name, modest, full, bound in plan:
        extra = full if args.full else modest
        target = out_dir / f"{name}.json"
        log_path = out_dir / f"{name}.log"
        cmd = [sys.executable, "-m", f"tests.bench.bench_{name}", *extra, "--json", str(target)]
        print(f"\n=== {name}: {' '.join(cmd[2:])}", flush=True)
        started = time.perf_counter()
        status = run_one(cmd, log_path, bound)
        took = time.perf_counter() - started
        if target.exists():
            doc = results.load(target)
            merged["runs"][name] = doc
            merged["metrics"].update(results.flat_metrics(doc))
            if doc.get("status") != "ok" and status == "ok":
                status = doc["status"]
        elif status == "ok":
            status = "failed: no results file written"
        statuses.append((name, status, took))
        if status != "ok":
            merged["status"] = "failed"
    merged["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
    merged["seconds"] = round(time.perf_counter() - started_all, 1)
    merged["env"]["load_avg_end"] = list(os.getloadavg())
    merged["statuses"] = {n: {"status": s, "seconds": round(t, 1)} for n, s, t in statuses}
    path = Path(args.json) if args.json else results.RESULTS_DIR / f"all-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(merged, indent=2, default=str) + "\n")
    if not args.json:
        latest = results.RESULTS_DIR / "all-latest.json"
        latest.unlink(missing_ok=True)
        latest.symlink_to(path.name)

    print(f"\n=== summary ({merged['seconds']:.0f} s; results in {path})")
    for name, status, took in statuses:
        print(f"{name:<48} {status} in {took:.0f} s")
    width = max([48, *(len(k) for k in merged["metrics"])])
    for key, m in merged["metrics"].items():
        print(results.summary_line(key, m, width))
    return 0 if merged["status"] == "ok" else 1


def run_one(cmd: list[str], log_path: Path, bound: int) -> str:
    """Run one benchmark, its output passed through and kept in log_path; its status as a short text."""
    with log_path.open("w") as log:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        assert proc.stdout is not None
        deadline = time.monotonic() + bound
        try:
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                log.write(line)
                if time.monotonic() > deadline:
                    proc.terminate()
                    break
            code = proc.wait(timeout=max(5.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return f"failed: took longer than {bound} s"
        except KeyboardInterrupt:
            proc.terminate()
            proc.wait(30)
            raise
    if time.monotonic() > deadline:
        return f"failed: took longer than {bound} s"
    return "ok" if code == 0 else f"failed: exit {code}"


# --- compare ------------------------------------------------------------------------------------------------


def verdict(old: float | None, new: float | None, better: str | None, threshold: float) -> tuple[str, float | None]:
    if old is None or new is None:
        return "n/a", None
    if old == 0:
        return ("same" if new == 0 else "changed"), None
    if old < 0 or new < 0:  # a derived figure that went negative: no meaningful ratio
        return "n/a", None
    ratio = new / old
    if better is None:
        return "context", ratio
    if abs(ratio - 1) <= threshold:
        return "same", ratio
    improved = ratio < 1 if better == "lower" else ratio > 1
    return ("better" if improved else "WORSE"), ratio


def compare(args: argparse.Namespace) -> int:
    old_doc, new_doc = results.load(args.old), results.load(args.new)
    old, new = results.flat_metrics(old_doc), results.flat_metrics(new_doc)
    names = list(old) + [k for k in new if k not in old]
    width = max([40, *(len(n) for n in names)])
    for label, doc in (("old", old_doc), ("new", new_doc)):
        env = doc.get("env", {})
        print(
            f"{label}: {doc.get('bench')} {doc.get('started_at', '?')} commit {env.get('git_commit', '?')[:10]}"
            f"{' (dirty)' if env.get('git_dirty') else ''} load {env.get('load_avg', ['?'])[0]}"
        )
    print(f"{'metric':<{width}} {'old':>12} {'new':>12} {'unit':<10} {'new/old':>8}  verdict")
    worse = 0
    counts: dict[str, int] = {}
    for name in names:
        o, n = old.get(name), new.get(name)
        if o is None or n is None:
            side = "new" if o is None else "old"
            m = n or o
            assert m is not None
            print(f"{name:<{width}} {'':>12} {results.format_value(m.get('value')):>12} only in {side}")
            counts[f"only in {side}"] = counts.get(f"only in {side}", 0) + 1
            continue
        better = n.get("better", o.get("better"))
        v, ratio = verdict(o.get("value"), n.get("value"), better, args.threshold)
        counts[v] = counts.get(v, 0) + 1
        worse += v == "WORSE"
        hint = {"lower": "lower is better", "higher": "higher is better"}.get(better, "")
        print(
            f"{name:<{width}} {results.format_value(o.get('value')):>12} {results.format_value(n.get('value')):>12} "
            f"{n.get('unit', ''):<10} {'' if ratio is None else f'{ratio:.3f}':>8}  {v}{f' ({hint})' if hint else ''}"
        )
    print("; ".join(f"{k}: {v}" for k, v in counts.items()) + f" (threshold ±{args.threshold:.0%})")
    return 1 if args.fail_worse and worse else 0


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="bin/bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    a = sub.add_parser("all", help="run every benchmark and print one summary line per metric")
    a.add_argument("--full", action="store_true", help="each benchmark's own (big) default sizes")
    a.add_argument("--only", default="", help="comma-separated benchmark names")
    a.add_argument("--skip", default="", help="comma-separated benchmark names")
    a.add_argument("--json", default="", metavar="PATH", help="the merged results file")
    a.add_argument("--list", action="store_true", help="print the plan and exit")
    c = sub.add_parser("compare", help="compare two results files")
    c.add_argument("old")
    c.add_argument("new")
    c.add_argument("--threshold", type=float, default=0.05, help="relative change read as noise (default 0.05)")
    c.add_argument("--fail-worse", action="store_true", help="exit 1 when a metric is worse beyond the threshold")
    args = parser.parse_args()
    sys.exit(run_all(args) if args.command == "all" else compare(args))


if __name__ == "__main__":
    main()
