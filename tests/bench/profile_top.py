"""Top functions of a py-spy profile: `python -m tests.bench.profile_top FILE.raw [--top 25] [--role ROLE]
[--grep TEXT]`.

FILE.raw comes from `py-spy record --subprocesses --format raw -o FILE.raw -- COMMAND` (collapsed stacks, one
"frame;frame;... count" per line, each stack prefixed by the chain of processes it ran in). Samples are split
by the role of the process that took them (main = the command itself; forkserver; parse worker = a child of
the forkserver; spawned = a multiprocessing spawn child such as a benchmark's feed server), then per role the
functions with the most samples: self (the sampled frame itself) and total (anywhere on the stack). py-spy
samples 100 times a second by default, so 100 samples ≈ 1 CPU second of a busy process.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

_LINE = re.compile(r"\s*\(([^()]*?)(?::\d+)?\)$")
_PROCESS = re.compile(r'process \d+:"[^"]*";')


def role(chain: list[str]) -> str:
    leaf = chain[-1]
    if len(chain) == 1:
        return "main"
    if "forkserver import main" in leaf:
        return "parse worker" if any("forkserver import main" in c for c in chain[:-1]) else "forkserver"
    if "spawn_main" in leaf or "multiprocessing.spawn" in leaf:
        return "spawned"
    if "resource_tracker" in leaf:
        return "resource tracker"
    return f"child depth {len(chain)}"


def function(frame: str) -> str:
    """'name (file:line)' -> 'name (file)'."""
    return _LINE.sub(lambda m: f" ({m.group(1)})", frame)


def load(path: Path) -> dict[str, list[tuple[list[str], int]]]:
    by_role: dict[str, list[tuple[list[str], int]]] = defaultdict(list)
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        chain = []
        while match := _PROCESS.match(stack):  # a command line may hold ";" (forkserver's -c code)
            chain.append(match.group(0))
            stack = stack[match.end() :]
        parts = stack.split(";")
        by_role[role(chain or ["?"])].append(([function(f) for f in parts], int(count)))
    return by_role


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", type=Path)
    parser.add_argument("--top", type=int, default=25)
    parser.add_argument("--role", default="", help="only this role (main, parse worker, ...)")
    parser.add_argument("--grep", default="", help="only functions whose name or file contains TEXT")
    args = parser.parse_args()
    by_role = load(args.file)
    total_all = sum(c for stacks in by_role.values() for _, c in stacks)
    print(f"{args.file}: {total_all} samples")
    for name, stacks in sorted(by_role.items(), key=lambda kv: -sum(c for _, c in kv[1])):
        if args.role and name != args.role:
            continue
        samples = sum(c for _, c in stacks)
        own: Counter[str] = Counter()
        inclusive: Counter[str] = Counter()
        for frames, count in stacks:
            if frames:
                own[frames[-1]] += count
            for f in set(frames):
                inclusive[f] += count
        print(f"\n== {name}: {samples} samples ({samples / max(total_all, 1):.0%})")
        print(f"   {'total':>6} {'%':>4}  {'self':>6} {'%':>4}  function")
        ranked = sorted(inclusive.items(), key=lambda kv: -kv[1])
        shown = 0
        for fn, n in ranked:
            if args.grep and args.grep not in fn:
                continue
            print(f"   {n:>6} {n / samples:>4.0%}  {own[fn]:>6} {own[fn] / samples:>4.0%}  {fn}")
            shown += 1
            if shown >= args.top:
                break


if __name__ == "__main__":
    main()
