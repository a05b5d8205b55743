"""The layering of the package, as a test: every `import` is read with ast (also those inside functions and
under TYPE_CHECKING), so a forbidden dependency cannot hide in a lazy import; and SQL text is looked for in
every string of every module, so a query cannot hide outside store/.

Levels, bottom to top (README, "Architecture"):
  leaf            imports nothing of ours but errors
  infrastructure  leaves and infrastructure; the pure ones (fetch, mail, opml, sources, embedders) never touch
                  db or store
  step            the pipeline (ingest, embed, match, decide, judge, push, budget, alerts, health): leaves,
                  infrastructure, and only the listed step -> step edges
  jobs            the task wiring: steps and below
  domain          one function per user action: steps and below, never jobs
  entry           api, web, cli, demo, ops, __main__: anything below, but api, web and cli never reach past the
                  domain into steps or store (their rules would be a second copy)
A new module must be placed in one of the tables below.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "infosentry"

LEVELS: dict[str, set[str]] = {
    "leaf": {"", "settings", "errors", "paths", "logs", "metrics", "auth", "urls", "text", "hotconfig", "openapi"}
    | {"models", "retry", "reasons", "tuning", "fetch_errors"},
    "infrastructure": {"db", "migrate", "runtime", "queue", "fetch", "mail", "opml", "store.*", "sources.*"}
    | {"embedders.*", "links"},
    "step": {
        "ingest.*",
        "embed",
        "match",
        "calibrate",
        "windows",
        "decide",
        "judge",
        "push",
        "budget",
        "alerts",
        "health",
        "retention",
    },
    "jobs": {"jobs"},
    "domain": {"domain.*"},
    "entry": {"api.*", "web.*", "cli.*", "demo", "ops.*", "__main__"},
}
ORDER = ["leaf", "infrastructure", "step", "jobs", "domain", "entry"]
PURE = {"fetch", "mail", "opml", "sources.*", "embedders.*"}  # network or text only: never db or store
STEP_EDGES = {
    ("embed", "budget"),
    ("embed", "match"),  # the embedding step scores what it just embedded, in the same batch
    ("embed", "calibrate"),  # a goal's calibration prior is measured when it is embedded
    ("match", "calibrate"),  # matching turns raw similarities into calibrated scores
    ("match", "windows"),  # matching keeps the goals' calibration windows, written behind
    ("windows", "calibrate"),
    ("decide", "budget"),
    ("decide", "judge"),
    ("judge", "budget"),
    ("health", "alerts"),
    ("alerts", "budget"),
}
LEAF_EXTRAS = {"settings": {"hotconfig"}}
FRONT_ENDS = {"api.*", "web.*", "cli.*"}  # call the domain; never steps or store
# SQL outside store/: the migration runner executes the SQL files, db creates the embedded database.
SQL_ALLOWED = {"migrate", "db"}
SQL = re.compile(
    r"\bSELECT\b[\s\S]+\bFROM\b|\bINSERT\s+INTO\b|\bUPDATE\s+\w+\s+SET\b|\bDELETE\s+FROM\b|\bpg_\w+lock\(",
)


def _in(module: str, group: set[str]) -> bool:
    return any(module == g or (g.endswith(".*") and (module == g[:-2] or module.startswith(g[:-1]))) for g in group)


def level(module: str) -> str | None:
    for name in ORDER:
        if _in(module, LEVELS[name]):
            return name
    return None


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _resolve(name: str) -> str:
    """infosentry.X.Y -> the module it names: 'X.Y' when that is a module, else 'X' (Y is an attribute)."""
    parts = name.split(".")[1:]
    while parts:
        candidate = ROOT.joinpath(*parts)
        if candidate.with_suffix(".py").exists() or (candidate / "__init__.py").exists():
            return ".".join(parts)
        parts = parts[:-1]
    return ""


def imports_of(path: Path) -> set[str]:
    module = module_name(path)
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                prefix = ".".join(["infosentry", *base, *([node.module] if node.module else [])])
            else:
                prefix = node.module or ""
            names = [f"{prefix}.{a.name}" for a in node.names]
        else:
            continue
        found.update(_resolve(n) for n in names if n == "infosentry" or n.startswith("infosentry."))
    found.discard(module)
    return found


def graph() -> dict[str, set[str]]:
    return {module_name(p): imports_of(p) for p in sorted(ROOT.rglob("*.py"))}


def _package(module: str) -> str:
    return module.split(".")[0]


def violations(deps: dict[str, set[str]]) -> list[str]:
    out = []
    for module, imported in sorted(deps.items()):
        mine = level(module)
        if mine is None:
            out.append(f"{module or 'infosentry'}: not placed in a level (add it to a table in tests/test_layout.py)")
            continue
        for dep in sorted(imported):
            theirs = level(dep)
            why = None
            if theirs is None:
                continue  # reported as unplaced on its own line
            if _in(dep, {"cli.*"}) and not _in(module, {"cli.*", "__main__"}):
                why = "nothing imports cli"
            elif _in(dep, {"api.*"}) and not (_in(module, {"api.*"}) or dep in ("api", "api.http")):
                why = "a rule imported from api would be a second copy: move it to the domain"
            elif ORDER.index(theirs) > ORDER.index(mine) or (mine == theirs == "jobs"):
                why = f"a {mine} module cannot import a {theirs} module"
            elif mine == "leaf" and dep not in {"errors"} | LEAF_EXTRAS.get(module, set()):
                why = "leaves import nothing of ours but errors"
            elif mine == "infrastructure" and _in(module, PURE) and (dep == "db" or _in(dep, {"store.*"})):
                why = f"{module} never imports db or store"
            elif (
                mine == "step"
                and theirs == "step"
                and _package(module) != _package(dep)
                and (module, dep) not in STEP_EDGES
            ):
                why = "steps never import each other (except the listed edges)"
            elif mine == "domain" and theirs == "jobs":
                why = "the domain nudges jobs by name (Runtime.nudge), never imports them"
            elif (_in(module, FRONT_ENDS) and theirs == "step") or (_in(module, FRONT_ENDS) and _in(dep, {"store.*"})):
                why = "api, web and cli go through the domain, never to steps or store"
            if why:
                out.append(f"{module} imports {dep}: {why}")
    return out


def sql_outside_store() -> list[str]:
    found = []
    for path in sorted(ROOT.rglob("*.py")):
        module = module_name(path)
        if _in(module, {"store.*"}) or module in SQL_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and SQL.search(node.value):
                found.append(f"{module}:{node.lineno}: {node.value.strip()[:60]!r}")
    return found


def test_the_package_follows_the_layering() -> None:
    deps = graph()
    assert "domain.goals" in deps and "store.goals" in deps["domain.goals"]
    problems = violations(deps)
    assert problems == [], "\n".join(problems)


def test_sql_lives_in_store() -> None:
    assert sql_outside_store() == []


def test_the_checker_catches_violations() -> None:
    fake = {
        "fetch": {"store.items"},
        "errors": {"settings"},
        "ingest.run": {"decide"},
        "ingest.items": {"ingest.dedupe"},  # inside one step package: fine
        "jobs": {"api.http"},
        "api.goals": {"cli", "store.goals"},
        "web.pages": {"api.goals", "api.http", "push"},
        "domain.goals": {"jobs"},
        "store.x": {"ingest.run"},
        "health": {"alerts"},
        "mystery": set(),
    }
    assert violations(fake) == [
        "api.goals imports cli: nothing imports cli",
        "api.goals imports store.goals: api, web and cli go through the domain, never to steps or store",
        "domain.goals imports jobs: the domain nudges jobs by name (Runtime.nudge), never imports them",
        "errors imports settings: leaves import nothing of ours but errors",
        "fetch imports store.items: fetch never imports db or store",
        "ingest.run imports decide: steps never import each other (except the listed edges)",
        "jobs imports api.http: a jobs module cannot import a entry module",
        "mystery: not placed in a level (add it to a table in tests/test_layout.py)",
        "store.x imports ingest.run: a infrastructure module cannot import a step module",
        "web.pages imports api.goals: a rule imported from api would be a second copy: move it to the domain",
        "web.pages imports push: api, web and cli go through the domain, never to steps or store",
    ]


def test_the_sql_finder_sees_queries_and_nothing_else(tmp_path: Path) -> None:
    assert SQL.search("SELECT id FROM goals WHERE x = $1")
    assert SQL.search("UPDATE goals SET status = 'paused'")
    assert SQL.search("SELECT pg_try_advisory_xact_lock($1)")
    assert not SQL.search("select the goals you want from the list")  # prose, lower case
    assert not SQL.search("UPDATE the README")


def test_lazy_imports_are_seen() -> None:
    assert "budget" in imports_of(ROOT / "domain" / "admin.py")
    assert "runtime" in imports_of(ROOT / "store" / "workers.py")  # imported under TYPE_CHECKING
