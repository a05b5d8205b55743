"""OPML in and out (pure): parse subscription lists with nested folders, emit ours.

XML is parsed with defusedxml and any DTD, entity declaration or external reference is refused (an OPML file
never needs one; billion-laughs files are rejected, not expanded). Site and hot-list sources round-trip through
extra attributes (infosentryType, infosentryConfig, infosentryInterval); other readers ignore them.
Imports defusedxml and the standard library only.
"""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import format_datetime
from typing import Any

import defusedxml
import defusedxml.ElementTree as SafeET

MAX_OUTLINES = 10_000
SOURCE_TYPES = ("rss", "site", "hotlist")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


@dataclass
class OpmlEntry:
    """One feed outline: where it is, what it is called, and (for our own exports) its type and settings."""

    url: str
    name: str = ""
    type: str = "rss"
    interval: int | None = None
    config: dict[str, Any] = field(default_factory=dict)
    category: str = ""  # the folder path, "Tech/Python"


@dataclass
class OpmlDocument:
    title: str = ""
    entries: list[OpmlEntry] = field(default_factory=list)
    invalid: list[dict[str, str]] = field(default_factory=list)  # {"url", "name", "reason"}


def _attr(node: ET.Element, name: str) -> str:
    """Attribute by name, case-insensitively (xmlUrl, xmlurl and XMLURL all occur in the wild)."""
    value = node.get(name)
    if value is None:
        lowered = name.lower()
        value = next((v for k, v in node.attrib.items() if k.lower() == lowered), None)
    return (value or "").strip()


def _tag(node: ET.Element) -> str:
    return node.tag.rsplit("}", 1)[-1].lower() if isinstance(node.tag, str) else ""


def parse_opml(data: bytes | str) -> OpmlDocument:
    """Every feed outline of an OPML document, folders flattened into `category`.

    Raises ValueError when the document is not well-formed XML, not OPML, or declares a DTD or entities.
    Outlines with a bad URL or bad infosentry attributes are listed in `invalid`, not raised.
    """
    raw = data.encode("utf-8") if isinstance(data, str) else data
    if not raw.strip():
        raise ValueError("the OPML document is empty")
    try:
        root = SafeET.fromstring(raw, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except defusedxml.DefusedXmlException:
        raise ValueError("OPML documents with a DTD or entity declarations are refused") from None
    except ET.ParseError as exc:
        raise ValueError(f"not well-formed XML: {exc}") from None
    if _tag(root) != "opml":
        raise ValueError(f"not an OPML document (root element <{_tag(root) or '?'}>)")
    body = next((child for child in root if _tag(child) == "body"), None)
    if body is None:
        raise ValueError("OPML document has no <body>")
    head = next((child for child in root if _tag(child) == "head"), None)
    title_node = next((c for c in head if _tag(c) == "title"), None) if head is not None else None
    doc = OpmlDocument(title=_clean((title_node.text or "") if title_node is not None else ""))
    # iterative walk: a deeply nested file must not exhaust the Python stack
    stack: list[tuple[ET.Element, str]] = [(child, "") for child in reversed(list(body))]
    seen = 0
    while stack:
        node, category = stack.pop()
        if _tag(node) != "outline":
            continue
        seen += 1
        if seen > MAX_OUTLINES:
            raise ValueError(f"OPML document has more than {MAX_OUTLINES} outlines")
        label = _clean(_attr(node, "text") or _attr(node, "title"))
        url = _attr(node, "xmlUrl")
        if url:
            _add_entry(doc, node, url, label, category)
        children = [c for c in node if _tag(c) == "outline"]
        if children:
            path = f"{category}/{label}" if category and label else (label or category)
            stack.extend((child, path) for child in reversed(children))
    return doc


def _add_entry(doc: OpmlDocument, node: ET.Element, url: str, label: str, category: str) -> None:
    def bad(reason: str) -> None:
        doc.invalid.append({"url": url, "name": label, "reason": reason})

    if not re.match(r"(?i)^https?://", url):
        bad("xmlUrl must be an http(s) URL")
        return
    kind = (_attr(node, "infosentryType") or "rss").lower()
    if kind not in SOURCE_TYPES:
        bad(f"unknown infosentryType {kind!r}")
        return
    config: dict[str, Any] = {}
    raw_config = _attr(node, "infosentryConfig")
    if raw_config:
        try:
            config = json.loads(raw_config)
        except ValueError:
            bad("infosentryConfig is not valid JSON")
            return
        if not isinstance(config, dict):
            bad("infosentryConfig must be a JSON object")
            return
    interval = None
    raw_interval = _attr(node, "infosentryInterval")
    if raw_interval:
        if not raw_interval.isdigit():
            bad("infosentryInterval must be a whole number of seconds")
            return
        interval = int(raw_interval)
    doc.entries.append(OpmlEntry(url=url, name=label, type=kind, interval=interval, config=config, category=category))


def _clean(text: str) -> str:
    return " ".join(_CONTROL.sub("", text).split())


def emit_opml(
    sources: Iterable[Mapping[str, Any]], *, title: str = "infosentry subscriptions", now: datetime | None = None
) -> str:
    """An OPML 2.0 document for sources given as mappings with type, url, name, and optionally
    fetch_interval_sec and config. RSS outlines are plain (any reader imports them)."""
    root = ET.Element("opml", version="2.0")
    head = ET.SubElement(root, "head")
    ET.SubElement(head, "title").text = _clean(title)
    ET.SubElement(head, "dateCreated").text = format_datetime(now or datetime.now(UTC), usegmt=True)
    body = ET.SubElement(root, "body")
    for src in sources:
        name = _clean(str(src.get("name") or src["url"]))
        attrs = {"text": name, "title": name, "type": "rss", "xmlUrl": _clean(str(src["url"]))}
        if src.get("type", "rss") != "rss":
            attrs["type"] = "infosentry"
            attrs["infosentryType"] = str(src["type"])
        if src.get("config"):
            # json.dumps escapes control characters, so the value is always a legal XML attribute
            attrs["infosentryConfig"] = json.dumps(src["config"], ensure_ascii=False, sort_keys=True)
        if src.get("fetch_interval_sec"):
            attrs["infosentryInterval"] = str(int(src["fetch_interval_sec"]))
        ET.SubElement(body, "outline", attrs)
    ET.indent(root)
    return '<?xml version="1.0" encoding="UTF-8"?>\n' + ET.tostring(root, encoding="unicode") + "\n"
