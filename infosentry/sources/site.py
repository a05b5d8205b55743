"""HTML list pages read with CSS selectors (selectolax), and parse_time for the absolute and relative
English/Chinese dates such pages print. May import selectolax, infosentry.fetch/.text/.sources.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, tzinfo
from email.utils import parsedate_to_datetime
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from selectolax.lexbor import LexborHTMLParser, LexborNode, SelectolaxError

from infosentry.fetch_errors import FetchError
from infosentry.sources.base import (
    ItemDraft,
    ParsedFeed,
    absolute_http_url,
    check_headers,
    check_http_url,
    check_keys,
    decode_body,
    fetch_source,
    to_utc,
)
from infosentry.text import clean_text, clean_title

ACCEPT = "text/html, application/xhtml+xml;q=0.9, */*;q=0.5"
CONFIG_KEYS = frozenset({"selectors", "headers", "timezone"})
SELECTOR_KEYS = frozenset({"item", "title", "link", "snippet", "time"})
REQUIRED_SELECTORS = ("item", "title")
MAX_ITEMS = 200
SNIPPET_LIMIT = 500


def validate_config(url: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """``{"selectors": {"item", "title", "link"?, "snippet"?, "time"?}, "headers"?, "timezone"?}``.

    ``link`` defaults to the title element when it is a link, else the first ``a[href]`` in the item.
    ``timezone`` (IANA name, default UTC) is how dates printed without an offset are read.
    """
    check_http_url(url, "url")
    check_keys(config, CONFIG_KEYS)
    selectors = config.get("selectors")
    if selectors is None:
        raise ValueError("selectors: required, an object with at least 'item' and 'title' CSS selectors")
    check_keys(selectors, SELECTOR_KEYS, prefix="selectors.")
    clean_selectors: dict[str, str] = {}
    probe = LexborHTMLParser("<html><body></body></html>")
    for key in sorted(SELECTOR_KEYS):
        value = selectors.get(key)
        if value is None:
            if key in REQUIRED_SELECTORS:
                raise ValueError(f"selectors.{key}: required, a CSS selector")
            continue
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"selectors.{key}: must be a non-empty CSS selector string")
        try:
            probe.css(value)
        except SelectolaxError as exc:
            raise ValueError(f"selectors.{key}: invalid CSS selector {value!r}") from exc
        clean_selectors[key] = value.strip()
    clean: dict[str, Any] = {"selectors": clean_selectors}
    if "headers" in config:
        clean["headers"] = check_headers(config["headers"])
    if "timezone" in config:
        name = config["timezone"]
        try:
            ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError, TypeError) as exc:
            raise ValueError(f"timezone: unknown time zone {name!r} (use an IANA name like Asia/Shanghai)") from exc
        clean["timezone"] = name
    return clean


# ---- parsing ---------------------------------------------------------------------------------------------


def _node_text(node: LexborNode) -> str:
    return node.text(deep=True, separator=" ", strip=True)


def _href(node: LexborNode | None) -> str | None:
    if node is None:
        return None
    if node.tag == "a" and node.attributes.get("href"):
        return node.attributes["href"]
    inner = node.css_first("a[href]")
    return inner.attributes.get("href") if inner is not None else None


def _page_base(tree: LexborHTMLParser, base_url: str) -> str:
    base = tree.css_first("base[href]")
    if base is not None:
        joined = absolute_http_url(base.attributes.get("href"), base_url)
        if joined:
            return joined
    return base_url


def parse(
    body: bytes,
    content_type: str | None,
    base_url: str,
    config: Mapping[str, Any],
    *,
    now: datetime | None = None,
) -> ParsedFeed:
    """Extract items from an HTML list page with the configured selectors. Pure and picklable."""
    selectors: Mapping[str, str] = config["selectors"]
    tz = ZoneInfo(config["timezone"]) if config.get("timezone") else UTC
    now = now or datetime.now(UTC)
    text = decode_body(body, content_type, sniff_meta=True)
    if not text.strip():
        raise FetchError("parse", "empty response body: no page to parse")
    tree = LexborHTMLParser(text)
    base = _page_base(tree, base_url)
    nodes = tree.css(selectors["item"])
    if not nodes:
        raise FetchError("parse", f"selectors.item {selectors['item']!r} matched nothing on the page")
    items: list[ItemDraft] = []
    seen: set[str] = set()
    for node in nodes[:MAX_ITEMS]:
        title_node = node.css_first(selectors["title"])
        if title_node is None:
            continue
        title = clean_title(_node_text(title_node))
        if "link" in selectors:
            link_node = node.css_first(selectors["link"])
            href = None if link_node is None else (link_node.attributes.get("href") or _href(link_node))
        else:
            href = _href(title_node) or _href(node)
        url = absolute_http_url(href, base)
        if not title or url is None or url in seen:
            continue
        seen.add(url)
        snippet = ""
        if "snippet" in selectors and (snippet_node := node.css_first(selectors["snippet"])) is not None:
            snippet = clean_text(_node_text(snippet_node), SNIPPET_LIMIT, is_html=False)
        published = None
        if "time" in selectors and (time_node := node.css_first(selectors["time"])) is not None:
            attrs = time_node.attributes
            raw = attrs.get("datetime") or attrs.get("data-time") or attrs.get("title") or _node_text(time_node)
            published = parse_time(raw, now, tz)
        items.append(ItemDraft(url=url, title=title, snippet=snippet, published_at=published))
    if not items:
        raise FetchError(
            "parse",
            f"selectors.item matched {len(nodes)} elements but none had a title "
            f"({selectors['title']!r}) and an http(s) link",
        )
    page_title = tree.css_first("title")
    return ParsedFeed(
        items=items,
        title=(clean_title(_node_text(page_title)) or None) if page_title is not None else None,
        link=base_url,
    )


# ---- time parsing ----------------------------------------------------------------------------------------

_UNIT_SECONDS = {
    "second": 1,
    "sec": 1,
    "s": 1,
    "minute": 60,
    "min": 60,
    "m": 60,
    "hour": 3600,
    "hr": 3600,
    "h": 3600,
    "day": 86400,
    "d": 86400,
    "week": 604800,
    "w": 604800,
    "month": 30 * 86400,
    "year": 365 * 86400,
    "秒": 1,
    "秒钟": 1,
    "分": 60,
    "分钟": 60,
    "小时": 3600,
    "个小时": 3600,
    "钟头": 3600,
    "个钟头": 3600,
    "天": 86400,
    "日": 86400,
    "周": 604800,
    "星期": 604800,
    "个星期": 604800,
    "个月": 30 * 86400,
    "月": 30 * 86400,
    "年": 365 * 86400,
}
_ZH_NUMBERS = {"一": 1, "两": 2, "二": 2, "三": 3, "四": 4, "五": 5, "六": 6, "七": 7, "八": 8, "九": 9, "十": 10}
_MONTHS = {m: i for i, m in enumerate("jan feb mar apr may jun jul aug sep oct nov dec".split(), start=1)}

# Counts and month-name tails are bounded ({1,6}, {0,6}) and counts start after a non-digit, so each start
# position costs a constant: an open "\d+" or "[a-z]*" rescanned the rest of the text from every start.
_REL_EN = re.compile(
    r"\b(\d{1,6}|an?|one)\s*(seconds?|secs?|minutes?|mins?|hours?|hrs?|days?|weeks?|months?|years?|[smhdw])\.?\s+ago\b",
    re.IGNORECASE,
)
_REL_ZH = re.compile(
    r"(?<!\d)(\d{1,6}|半|[一两二三四五六七八九十])\s*(秒钟?|分钟|分|个?小时|个?钟头|天|日|周|个?星期|个月|月|年)\s*(?:之|以)?前"
)
_NOW_WORDS = re.compile(r"^(?:just now|now|moments? ago|a moment ago|刚刚|刚才|片刻前)$", re.IGNORECASE)
_DAY_WORDS = (
    (re.compile(r"day before yesterday|前天", re.IGNORECASE), 2),
    (re.compile(r"yesterday|昨天|昨日", re.IGNORECASE), 1),
    (re.compile(r"today|今天|今日", re.IGNORECASE), 0),
)
_CLOCK = re.compile(r"(\d{1,2})[:时点](\d{2})?(?::(\d{2}))?\s*(am|pm)?", re.IGNORECASE)
_YMD = re.compile(
    r"(\d{4})\s*[-/.年]\s*(\d{1,2})\s*[-/.月]\s*(\d{1,2})\s*日?"
    r"(?:[\sT]*(\d{1,2})[:时](\d{2})(?::(\d{2}))?\s*(am|pm)?)?",
    re.IGNORECASE,
)
_MD = re.compile(r"(?<!\d)(\d{1,2})\s*[-/月]\s*(\d{1,2})\s*日?(?:\s+(\d{1,2}):(\d{2}))?(?!\d)")
_MONTH_NAME = r"(jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]{0,6}\.?"  # month name, full or abbreviated
_EN_MDY = re.compile(
    _MONTH_NAME + r"\s+(\d{1,2})(?:st|nd|rd|th)?,?\s+(\d{4})(?:,?\s+(?:at\s+)?(\d{1,2}):(\d{2})\s*(am|pm)?)?",
    re.IGNORECASE,
)
_EN_DMY = re.compile(
    r"(\d{1,2})(?:st|nd|rd|th)?\s+" + _MONTH_NAME + r",?\s+(\d{4})(?:,?\s+(\d{1,2}):(\d{2})\s*(am|pm)?)?",
    re.IGNORECASE,
)
_EPOCH = re.compile(r"^\d{10}(?:\d{3})?$")
# Every format above fits easily; a node whose text runs on (a whole paragraph picked by a loose selector)
# is read from its start, and no pattern ever sees more than this.
TIME_TEXT_LIMIT = 100
_RAW_TIME_TEXT_LIMIT = 4096  # before whitespace is collapsed: indentation can pad a short date a lot


def _hour(hour: int, meridiem: str | None) -> int:
    if meridiem:
        hour = hour % 12 + (12 if meridiem.lower() == "pm" else 0)
    return hour


def _local(tz: tzinfo, year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> datetime:
    return datetime(year, month, day, hour, minute, second, tzinfo=tz)


def _relative(text: str, now: datetime) -> datetime | None:
    if match := _REL_EN.search(text):
        amount = match.group(1).lower()
        count = 1 if amount in ("a", "an", "one") else int(amount)
        unit = match.group(2).lower().rstrip(".")
        unit = unit if unit in _UNIT_SECONDS else unit.rstrip("s")
        return now - timedelta(seconds=count * _UNIT_SECONDS[unit])
    if match := _REL_ZH.search(text):
        amount, unit = match.groups()
        if amount == "半":
            return now - timedelta(seconds=_UNIT_SECONDS[unit] // 2)
        count = _ZH_NUMBERS.get(amount) or int(amount)
        return now - timedelta(seconds=count * _UNIT_SECONDS[unit])
    return None


def _day_word(text: str, now: datetime, tz: tzinfo) -> datetime | None:
    for pattern, days_back in _DAY_WORDS:
        if pattern.search(text):
            local_now = now.astimezone(tz)
            if clock := _CLOCK.search(text):
                day = (local_now - timedelta(days=days_back)).date()
                hour, minute, second = int(clock.group(1)), int(clock.group(2) or 0), int(clock.group(3) or 0)
                return _local(tz, day.year, day.month, day.day, _hour(hour, clock.group(4)), minute, second)
            return now - timedelta(days=days_back)
    return None


def _absolute(text: str, now: datetime, tz: tzinfo) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        pass
    else:
        return parsed if parsed.tzinfo else parsed.replace(tzinfo=tz)
    if match := _YMD.search(text):
        year, month, day, hour, minute, second, meridiem = match.groups()
        return _local(
            tz, int(year), int(month), int(day), _hour(int(hour or 0), meridiem), int(minute or 0), int(second or 0)
        )
    if match := _EN_MDY.search(text):
        month, day, year, hour, minute, meridiem = match.groups()
        return _local(
            tz, int(year), _MONTHS[month[:3].lower()], int(day), _hour(int(hour or 0), meridiem), int(minute or 0)
        )
    if match := _EN_DMY.search(text):
        day, month, year, hour, minute, meridiem = match.groups()
        return _local(
            tz, int(year), _MONTHS[month[:3].lower()], int(day), _hour(int(hour or 0), meridiem), int(minute or 0)
        )
    try:
        return parsedate_to_datetime(text)  # RFC 2822, as in "Wed, 01 May 2024 10:00:00 GMT"
    except (TypeError, ValueError, IndexError):
        pass
    local_now = now.astimezone(tz)
    if match := _MD.search(text):
        month, day, hour, minute = match.groups()
        candidate = _local(tz, local_now.year, int(month), int(day), int(hour or 0), int(minute or 0))
        # A date without a year that would lie ahead is last year's ("12-31" read on January 2nd).
        return candidate if candidate <= now + timedelta(days=1) else candidate.replace(year=local_now.year - 1)
    if match := re.fullmatch(r"(\d{1,2}):(\d{2})(?::(\d{2}))?", text):
        hour, minute, second = (int(g or 0) for g in match.groups())
        candidate = _local(tz, local_now.year, local_now.month, local_now.day, hour, minute, second)
        # Lists show only a clock time for today's entries; a time still ahead is yesterday's.
        return candidate if candidate <= now else candidate - timedelta(days=1)
    return None


def parse_time(text: str | None, now: datetime, tz: tzinfo = UTC) -> datetime | None:
    """The moment a list page's date text denotes, as an aware UTC datetime (future dates clamp to ``now``).

    Understands ISO 8601, RFC 2822, "2024-05-01 10:00", "2024/5/1", "May 1, 2024", "1 May 2024",
    "2024年5月1日 10:00", "5月1日", "05-01 10:00", "10:30", epoch seconds or milliseconds, and relative
    phrases: "just now", "5 minutes ago", "2 hours ago", "yesterday 10:00", "刚刚", "5分钟前", "3小时前",
    "半小时前", "昨天", "前天", "2天前". Dates without an offset are read in ``tz``. None when unreadable.
    """
    if not text:
        return None
    text = " ".join(unicodedata.normalize("NFKC", text.strip()[:_RAW_TIME_TEXT_LIMIT]).split())[:TIME_TEXT_LIMIT]
    if not text:
        return None
    if now.tzinfo is None:
        now = now.replace(tzinfo=UTC)
    try:
        if _EPOCH.match(text):
            value = int(text)
            return to_utc(datetime.fromtimestamp(value / 1000 if value > 10**11 else value, UTC), now)
        if _NOW_WORDS.match(text):
            return now.astimezone(UTC)
        result = _relative(text, now) or _day_word(text, now, tz) or _absolute(text, now, tz)
    except (ValueError, OverflowError, OSError):
        return None  # e.g. "2024-13-45": matched a pattern but is no date
    return to_utc(result, now)


# The type's fetch (see SourceType): validate the config, GET the URL conditionally, parse off the loop.
fetch = functools.partial(fetch_source, validate=validate_config, parse=parse, accept=ACCEPT)
