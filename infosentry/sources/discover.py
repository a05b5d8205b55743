"""Feed discovery: the URL itself when it serves a feed, else the <link rel="alternate"> feed its page
advertises. May import selectolax, infosentry.fetch and infosentry.sources — never the database.
"""

from __future__ import annotations

import asyncio
import re

from selectolax.lexbor import LexborHTMLParser

from infosentry.fetch import Fetcher
from infosentry.fetch_errors import FetchError
from infosentry.sources import rss
from infosentry.sources.base import absolute_http_url, decode_body

FEED_LINK_TYPES = (
    "application/rss+xml",
    "application/atom+xml",
    "application/feed+json",
    "application/rdf+xml",
)
ACCEPT = "text/html;q=0.9, application/xhtml+xml;q=0.9, " + rss.ACCEPT
# Feed discovery reads only the page head; a smaller cap than the fetcher default is plenty.
MAX_PAGE_BYTES = 5 * 1024 * 1024
_FEED_SNIFF = re.compile(rb"<(?:rss|feed|rdf:RDF|RDF)[\s>]")
_HTML_SNIFF = re.compile(rb"<(?:!doctype\s+html|html[\s>]|head[\s>]|body[\s>])", re.IGNORECASE)


def looks_like_feed(body: bytes, content_type: str | None) -> bool:
    """Cheap sniff: a feed media type, a JSON Feed marker, or a feed root element near the start."""
    media = (content_type or "").split(";")[0].strip().lower()
    head = body[:4096]
    if media in FEED_LINK_TYPES:
        return True
    if "json" in media or head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] == b"{":
        return b"jsonfeed.org/version/" in head
    html = _HTML_SNIFF.search(head)
    feed = _FEED_SNIFF.search(head)
    return feed is not None and (html is None or feed.start() < html.start())


def feed_links(body: bytes, content_type: str | None, base_url: str) -> list[str]:
    """Absolute URLs of the feeds an HTML page advertises, in document order, without duplicates."""
    tree = LexborHTMLParser(decode_body(body, content_type, sniff_meta=True))
    base = base_url
    if (base_node := tree.css_first("base[href]")) is not None:
        base = absolute_http_url(base_node.attributes.get("href"), base_url) or base_url
    found: list[str] = []
    for node in tree.css("link[href]"):
        rel = (node.attributes.get("rel") or "").lower().split()
        media = (node.attributes.get("type") or "").split(";")[0].strip().lower()
        if "alternate" not in rel or media not in FEED_LINK_TYPES:
            continue
        url = absolute_http_url(node.attributes.get("href"), base)
        if url and url not in found:
            found.append(url)
    return found


async def discover_feed(fetcher: Fetcher, url: str) -> tuple[str, str]:
    """Return ``(source_type, feed_url)`` for ``url``: the URL itself when it serves a feed, else the first
    feed its HTML advertises. Raises FetchError(kind="parse") when there is none."""
    response = await fetcher.get(url, headers={"Accept": ACCEPT}, max_bytes=MAX_PAGE_BYTES)
    body, content_type = response.body, response.content_type
    if looks_like_feed(body, content_type):
        # Confirm it parses, so a broken feed is reported now rather than at the first refresh.
        await asyncio.to_thread(rss.parse, body, content_type, response.url, {})
        return "rss", url
    if _HTML_SNIFF.search(body[:4096]) or "html" in (content_type or "").lower():
        links = feed_links(body, content_type, response.url)
        if links:
            return "rss", links[0]
        raise FetchError(
            "parse",
            f'{url} is an HTML page that advertises no feed (<link rel="alternate">); '
            "add it as a site source with CSS selectors instead",
            url=url,
        )
    raise FetchError(
        "parse", f"{url} is neither a feed nor an HTML page (Content-Type: {content_type or 'none'})", url=url
    )
