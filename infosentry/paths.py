"""Where the SQL files live: top-level sql/ in a checkout, infosentry/sql inside an installed wheel.

Decided once: pyproject maps sql/ into the wheel as infosentry/sql (hatch force-include); a checkout
or editable install reads the repository's sql/ directly. Leaf module.
"""

from __future__ import annotations

from pathlib import Path

_PACKAGE_DIR = Path(__file__).resolve().parent


def sql_dir() -> Path:
    for candidate in (_PACKAGE_DIR / "sql", _PACKAGE_DIR.parent / "sql"):
        if (candidate / "migrations").is_dir():
            return candidate
    raise FileNotFoundError("infosentry's sql/ directory is missing from this installation")
