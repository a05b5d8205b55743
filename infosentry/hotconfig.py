"""Hot switches and tunables: their definitions and validation, and a live view of the config table.

Every process holds one HotConfig. It learns of changes through LISTEN/NOTIFY on the
`infosentry_config` channel (a trigger on the table notifies) and re-reads the table every
second as a safety net, so a change is seen everywhere within 2 s without restart.
Imports errors only; the rows are read through the callable given to start() (store.config.values).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import math
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import asyncpg

from infosentry.errors import Invalid

log = logging.getLogger(__name__)

_HHMM = re.compile(r"^([01]\d|2[0-3]):[0-5]\d$")


def parse_hhmm_list(raw: str, *, max_items: int = 3) -> list[str]:
    """'12:30, 18:30' -> ['12:30', '18:30']; accepts H:MM; at most max_items distinct times."""
    values = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        values.append(normalise_hhmm(part))
    if not values:
        raise Invalid("at least one HH:MM time is required")
    if len(values) > max_items:
        raise Invalid(f"at most {max_items} times are allowed")
    return sorted(set(values))


def normalise_hhmm(value: str) -> str:
    value = value.strip()
    if re.fullmatch(r"\d:[0-5]\d", value):
        value = "0" + value
    if not _HHMM.match(value):
        raise Invalid(f"{value!r} is not a time of day in HH:MM form")
    return value


@dataclass(frozen=True)
class Key:
    name: str
    kind: type  # bool, int, float or str
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    check: Callable[[Any], Any] | None = None  # extra validation/normalisation for str values


KEYS: dict[str, Key] = {
    k.name: k
    for k in (
        Key("LLM_ENABLED", bool, True, "LLM boundary judge on; off sends boundary items to BATCH"),
        Key("EMBEDDING_ENABLED", bool, True, "embed new items; off keeps them pending (lexical scoring)"),
        Key("IMMEDIATE_ENABLED", bool, True, "IMMEDIATE pushes; off turns them into BATCH"),
        Key("EMAIL_ENABLED", bool, True, "send emails; off keeps pushes in the in-app inbox only"),
        Key("DAILY_USD_BUDGET", float, 0.33, "daily spend cap for embeddings + LLM, USD", 0, 10000),
        Key("JUDGE_PER_DAY", int, 200, "LLM judge calls per budget day", 0, 1_000_000),
        Key("EMBED_PER_MIN", int, 300, "embedding requests per minute", 1, 1_000_000),
        Key("IMMEDIATE_THRESHOLD", float, 0.93, "score at or above which an item is IMMEDIATE", 0, 1),
        Key("BOUNDARY_LOW", float, 0.88, "lower edge of the LLM-judged boundary band", 0, 1),
        Key("BATCH_THRESHOLD", float, 0.75, "score at or above which an item is BATCH", 0, 1),
        Key("DIGEST_MIN_SCORE", float, 0.60, "lowest score that can reach a digest", 0, 1),
        Key("IMMEDIATE_COALESCE_MINUTES", float, 5.0, "coalescing window of IMMEDIATE emails", 0, 1440),
        Key("IMMEDIATE_MAX_ITEMS", int, 3, "items per IMMEDIATE email", 1, 50),
        Key("BATCH_MAX_ITEMS", int, 8, "items per BATCH email", 1, 100),
        Key("DIGEST_MAX_ITEMS", int, 10, "items per digest (per goal)", 1, 100),
        Key("DEFAULT_BATCH_WINDOWS", str, "12:30,18:30", "batch windows of new goals", check=parse_hhmm_list),
        Key("DEFAULT_DIGEST_TIME", str, "09:00", "digest time of new goals", check=normalise_hhmm),
        Key("EMBED_BATCH_SIZE", int, 128, "items embedded per job", 1, 2048),
        Key("MAX_SOURCES_PER_USER", int, 500, "sources one user may follow", 1, 100_000),
        Key("MAX_GOALS_PER_USER", int, 100, "goals one user may have", 1, 10_000),
        Key("MAX_TOKENS_PER_USER", int, 50, "live API tokens one user may have (sessions not counted)", 1, 10_000),
        Key("MAX_OPML_LINES", int, 1000, "feeds one OPML import may add", 1, 100_000),
        Key("LIVE_REPLAYS_PER_HOUR", int, 10, "live LLM replays one non-admin user may run per hour", 0, 10_000),
        Key("RETENTION_ITEMS_DAYS", float, 30.0, "items nobody was sent or rated are kept this long", 0.001, 3650),
        Key("RETENTION_INBOX_DAYS", float, 180.0, "items in an inbox or rated are kept this long", 0.001, 3650),
        Key("RETENTION_LOGS_DAYS", float, 7.0, "ingest logs, external calls, decision runs, sent emails", 0.001, 3650),
    )
}


def parse_value(name: str, raw: Any) -> Any:
    """Validate one value (JSON-typed or a string from the CLI/env) and return it in its type."""
    key = KEYS.get(name)
    if key is None:
        raise Invalid(f"unknown config key {name!r}", errors=[{"field": name, "message": "unknown key"}])
    try:
        value = _coerce(key, raw)
    except Invalid as exc:
        raise Invalid(f"{name}: {exc.detail}", errors=[{"field": name, "message": exc.detail}]) from None
    return value


def _coerce(key: Key, raw: Any) -> Any:
    if key.kind is bool:
        if isinstance(raw, bool):
            return raw
        if isinstance(raw, str) and raw.strip().lower() in ("true", "1", "yes", "on", "false", "0", "no", "off"):
            return raw.strip().lower() in ("true", "1", "yes", "on")
        raise Invalid(f"expected true or false, got {raw!r}")
    if key.kind in (int, float):
        if isinstance(raw, bool):
            raise Invalid(f"expected a number, got {raw!r}")
        try:
            number = float(raw) if isinstance(raw, (int, float, str)) else math.nan
        except ValueError:
            number = math.nan
        if math.isnan(number) or math.isinf(number):
            raise Invalid(f"expected a number, got {raw!r}")
        if key.kind is int:
            if number != int(number):
                raise Invalid(f"expected an integer, got {raw!r}")
            number = int(number)
        if (key.low is not None and number < key.low) or (key.high is not None and number > key.high):
            raise Invalid(f"must be between {key.low:g} and {key.high:g}, got {raw!r}")
        return number
    if not isinstance(raw, str):
        raise Invalid(f"expected a string, got {raw!r}")
    if key.check is not None:
        checked = key.check(raw)
        return ",".join(checked) if isinstance(checked, list) else checked
    return raw


def check_consistency(values: Mapping[str, Any]) -> None:
    """Cross-key rules: DIGEST_MIN_SCORE <= BATCH_THRESHOLD <= BOUNDARY_LOW <= IMMEDIATE_THRESHOLD."""
    order = ["DIGEST_MIN_SCORE", "BATCH_THRESHOLD", "BOUNDARY_LOW", "IMMEDIATE_THRESHOLD"]
    for lower, upper in itertools.pairwise(order):
        if values[lower] > values[upper]:
            raise Invalid(
                f"{lower} ({values[lower]}) must not exceed {upper} ({values[upper]})",
                errors=[{"field": lower, "message": f"must be <= {upper}"}],
            )


def defaults(env_defaults: Mapping[str, str] | None = None) -> dict[str, Any]:
    values = {name: key.default for name, key in KEYS.items()}
    for name, raw in (env_defaults or {}).items():
        values[name] = parse_value(name, raw)
    check_consistency(values)
    return values


class HotConfig:
    """The current switches and tunables of this process: env defaults overlaid by the config table."""

    RELOAD_SECONDS = 1.0

    def __init__(self, env_defaults: Mapping[str, str] | None = None) -> None:
        self._defaults = defaults(env_defaults)
        self._values = dict(self._defaults)
        self._dsn: str | None = None
        self._read: Callable[[], Awaitable[Mapping[str, Any]]] | None = None
        self._listener: asyncpg.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        self.version = 0  # bumps on every observed change (tests wait on it)

    def __getitem__(self, name: str) -> Any:
        return self._values[name]

    def snapshot(self) -> dict[str, Any]:
        return dict(self._values)

    @property
    def defaults(self) -> dict[str, Any]:
        return dict(self._defaults)

    def apply_rows(self, rows: Mapping[str, Any]) -> None:
        values = dict(self._defaults)
        for name, raw in rows.items():
            if name not in KEYS:
                continue  # a key a newer release wrote; ignore rather than crash
            try:
                values[name] = parse_value(name, raw)
            except Invalid as exc:
                log.warning("ignoring bad config value", extra={"action": "config_invalid", "detail": exc.detail})
        if values != self._values:
            changed = {k: v for k, v in values.items() if self._values.get(k) != v}
            self._values = values
            self.version += 1
            log.info("config changed: %s", changed, extra={"action": "config_changed", "changed": changed})

    async def reload(self) -> None:
        assert self._read is not None
        self.apply_rows(await self._read())

    async def start(self, read: Callable[[], Awaitable[Mapping[str, Any]]], dsn: str, *, live: bool = True) -> None:
        """Read the rows now (`read` returns key -> value), then, when live, again on every NOTIFY
        infosentry_config and at least every RELOAD_SECONDS."""
        self._read, self._dsn = read, dsn
        await self.reload()
        if live:
            self._task = asyncio.create_task(self._run(), name="hotconfig")

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._close_listener()

    async def _close_listener(self) -> None:
        if self._listener is not None:
            with contextlib.suppress(Exception):
                await self._listener.close()
            self._listener = None

    def _on_notify(self, *_: Any) -> None:
        self._changed.set()

    async def _run(self) -> None:
        while True:
            try:
                if self._listener is None or self._listener.is_closed():
                    assert self._dsn is not None
                    self._listener = await asyncpg.connect(self._dsn, timeout=5)
                    await self._listener.add_listener("infosentry_config", self._on_notify)
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), self.RELOAD_SECONDS)
                self._changed.clear()
                await self.reload()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # database restarting: keep the last values, retry soon
                log.debug("config reload failed: %s", exc)
                await self._close_listener()
                await asyncio.sleep(self.RELOAD_SECONDS)
