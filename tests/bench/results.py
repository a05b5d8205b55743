"""Benchmark results as JSON, one format for every benchmark in tests/bench/.

A benchmark adds the common `--json [PATH]` option, opens a session around its run and records its headline
figures; the session writes one JSON document when it ends (also when the run fails: status says so)::

    parser = argparse.ArgumentParser()
    results.add_argument(parser)
    args = parser.parse_args()
    with results.session("ingest", args, params={"feeds": args.feeds}):
        ...
        results.record("first_pass.wall", 20.6, "s")                      # better="lower" is the default
        results.record("first_pass.items_per_s", 969, "items/s", better="higher")
        results.detail("anything_else", {...})                            # kept in the file, not compared

Without `--json` the file is tests/bench/results/NAME-YYYYmmdd-HHMMSS.json (git-ignored), with NAME-latest.json
pointing at the newest one; `--json -` prints the document on stdout instead. `bin/bench all` merges the files
of one run into one document; `bin/bench compare OLD.json NEW.json` compares two documents (tests/bench/harness.py).

Metric names are dotted (`first_pass.wall`); the unit is free text ("s", "ms", "MiB", "items/s", "count");
`better` is "lower", "higher" or None for a figure that is context only (a count of rows, a setting).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA = 1
BETTER = ("lower", "higher", None)

_current: dict[str, Any] | None = None


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json",
        metavar="PATH",
        nargs="?",
        const="-",
        default=None,
        help="write the results as JSON to PATH ('-' or no PATH: stdout); default tests/bench/results/NAME-*.json",
    )


def record(metric: str, value: float | int | None, unit: str, better: str | None = "lower") -> None:
    """Record one figure of the current session (a second record of the same name replaces the first)."""
    if better not in BETTER:
        raise ValueError(f"better must be one of {BETTER}, not {better!r}")
    doc = _require()
    if value is not None:
        value = float(value)
        if math.isnan(value) or math.isinf(value):
            value = None
    doc["metrics"][metric] = {"value": value, "unit": unit, "better": better}


def detail(key: str, value: Any) -> None:
    """Free-form data kept in the document (not compared)."""
    _require()["details"][key] = value


def metrics() -> dict[str, dict[str, Any]]:
    return dict(_require()["metrics"])


def _require() -> dict[str, Any]:
    if _current is None:
        raise RuntimeError("no results session: wrap the run in `with results.session(name, args):`")
    return _current


def environment() -> dict[str, Any]:
    """Where and on what the numbers were taken (the git commit, the machine, its load)."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        try:
            out = subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.SubprocessError):
            return ""
        return out.stdout.strip()

    return {
        "git_commit": git("rev-parse", "HEAD"),
        "git_branch": git("rev-parse", "--abbrev-ref", "HEAD"),
        "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no")),
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_avg": list(os.getloadavg()),
    }


def default_path(name: str) -> Path:
    return RESULTS_DIR / f"{name}-{datetime.now().strftime('%Y%m%d-%H%M%S')}.json"


@contextlib.contextmanager
def session(name: str, args: argparse.Namespace | None = None, params: dict[str, Any] | None = None) -> Iterator[dict]:
    """Collect the records of one benchmark run and write them when it ends (status "failed: ..." on an error)."""
    global _current
    if _current is not None:
        raise RuntimeError("a results session is already open")
    target = getattr(args, "json", None) if args is not None else None
    if params is None and args is not None:
        params = {k: v for k, v in vars(args).items() if k != "json"}
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "bench": name,
        "argv": sys.argv[1:],
        "params": params or {},
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "env": environment(),
        "status": "ok",
        "metrics": {},
        "details": {},
    }
    _current = doc
    started = time.perf_counter()
    try:
        yield doc
    except SystemExit as exc:
        if exc.code not in (None, 0):
            doc["status"] = f"failed: exit {exc.code}"[:500]
        raise
    except BaseException as exc:
        doc["status"] = f"failed: {type(exc).__name__}: {exc}"[:500]
        raise
    finally:
        _current = None
        doc["finished_at"] = datetime.now(UTC).isoformat(timespec="seconds")
        doc["seconds"] = round(time.perf_counter() - started, 2)
        doc["env"]["load_avg_end"] = list(os.getloadavg())
        write(doc, target)


def write(doc: dict[str, Any], target: str | None) -> Path | None:
    text = json.dumps(doc, indent=2, default=str) + "\n"
    if target == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return None
    path = Path(target) if target else default_path(doc["bench"])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    if not target:  # the newest default file of this benchmark, for `bin/bench compare`
        latest = path.with_name(f"{doc['bench']}-latest.json")
        with contextlib.suppress(OSError):
            latest.unlink(missing_ok=True)
            latest.symlink_to(path.name)
    print(f"results: {path}", file=sys.stderr)
    return path


# --- reading ------------------------------------------------------------------------------------------------


def load(path: str | Path) -> dict[str, Any]:
    doc = json.loads(Path(path).read_text())
    if not isinstance(doc, dict) or "metrics" not in doc:
        raise ValueError(f"{path}: not a benchmark results file (no 'metrics')")
    return doc


def flat_metrics(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Metrics named `bench.metric`: a merged `bin/bench all` document already names them so."""
    if doc.get("bench") == "all":
        return dict(doc["metrics"])
    return {f"{doc['bench']}.{k}": v for k, v in doc["metrics"].items()}


def format_value(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value == int(value) and abs(value) < 1e12:
        return f"{int(value)}"
    magnitude = abs(value)
    if magnitude >= 100:
        return f"{value:.1f}"
    if magnitude >= 1:
        return f"{value:.2f}"
    return f"{value:.4g}"


def summary_line(name: str, m: dict[str, Any], width: int = 48) -> str:
    hint = {"lower": "lower is better", "higher": "higher is better"}.get(m.get("better"), "context")
    return f"{name:<{width}} {format_value(m.get('value')):>12} {m.get('unit', ''):<10} ({hint})"
