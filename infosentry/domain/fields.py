"""Validation of what users send (JSON bodies, CLI options, web forms): field by field, every error collected
into one Invalid (422) that names each bad field. Imports errors only.
"""

from __future__ import annotations

import math
import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from infosentry.errors import Invalid

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s.]+$")


def valid_timezone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return False
    return True


def valid_email(address: str) -> bool:
    return bool(EMAIL.match(address))


_MISSING = object()


class Fields:
    """Validates a JSON object field by field, collecting every error before raising one 422."""

    def __init__(self, body: dict[str, Any], allowed: set[str]) -> None:
        self.body = body
        self.errors: list[dict[str, str]] = []
        for key in sorted(set(body) - allowed):
            self.errors.append({"field": key, "message": "unknown field"})

    def _bad(self, name: str, message: str) -> None:
        self.errors.append({"field": name, "message": message})

    def has(self, name: str) -> bool:
        return name in self.body

    def str(
        self,
        name: str,
        *,
        required: bool = False,
        default: Any = None,
        max_len: int = 1000,
        min_len: int = 0,
        choices: tuple[str, ...] | None = None,
        nullable: bool = False,
    ) -> Any:
        value = self.body.get(name, _MISSING)
        if value is _MISSING:
            if required:
                self._bad(name, "is required")
            return default
        if value is None and nullable:
            return None
        if not isinstance(value, str):
            self._bad(name, "must be a string")
            return default
        value = value.strip()
        if choices is not None:
            folded = {c.lower(): c for c in choices}
            if value.lower() not in folded:
                self._bad(name, f"must be one of {', '.join(choices)}")
                return default
            return folded[value.lower()]
        if len(value) < min_len:
            self._bad(name, "must not be empty" if min_len == 1 else f"must be at least {min_len} characters")
        elif len(value) > max_len:
            self._bad(name, f"must be at most {max_len} characters")
        return value

    def int(
        self, name: str, *, required: bool = False, default: Any = None, low: int | None = None, high: int | None = None
    ) -> Any:
        value = self.body.get(name, _MISSING)
        if value is _MISSING:
            if required:
                self._bad(name, "is required")
            return default
        if isinstance(value, bool) or not isinstance(value, int):
            self._bad(name, "must be an integer")
            return default
        if (low is not None and value < low) or (high is not None and value > high):
            self._bad(name, f"must be between {low} and {high}")
        return value

    def float(self, name: str, *, default: Any = None, low: float = -math.inf, high: float = math.inf) -> Any:
        value = self.body.get(name, _MISSING)
        if value is _MISSING:
            return default
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self._bad(name, "must be a number")
            return default
        if not low <= value <= high:
            self._bad(name, f"must be between {low:g} and {high:g}")
        return float(value)

    def bool(self, name: str, *, default: Any = None) -> Any:
        value = self.body.get(name, _MISSING)
        if value is _MISSING:
            return default
        if not isinstance(value, bool):
            self._bad(name, "must be true or false")
            return default
        return value

    def str_list(self, name: str, *, default: Any = None, max_items: int = 50, max_len: int = 100) -> Any:
        value = self.body.get(name, _MISSING)
        if value is _MISSING:
            return default
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self._bad(name, "must be a list of strings")
            return default
        cleaned = []
        for v in value:
            v = v.strip()
            if v and v not in cleaned:
                cleaned.append(v)
        if len(cleaned) > max_items:
            self._bad(name, f"must have at most {max_items} entries")
        if any(len(v) > max_len for v in cleaned):
            self._bad(name, f"entries must be at most {max_len} characters")
        return cleaned

    def dict(self, name: str, *, default: Any = None) -> Any:
        value = self.body.get(name, _MISSING)
        if value is _MISSING:
            return default
        if not isinstance(value, dict):
            self._bad(name, "must be a JSON object")
            return default
        return value

    def check(self, condition: bool, name: str, message: str) -> None:
        if not condition:
            self._bad(name, message)

    def done(self) -> None:
        if self.errors:
            summary = "; ".join(f"{e['field']}: {e['message']}" for e in self.errors)
            raise Invalid(summary, errors=self.errors)
