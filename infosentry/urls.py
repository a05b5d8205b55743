"""URL canonicalisation, url_hash and title_key (the fingerprints deduplication uses), source URL spellings (pure).
May import: the standard library only.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

# Query parameters that only track where a click came from; two links differing only by them are one story.
_TRACKING_PARAMS = frozenset({"spm", "from", "ref", "source"})
_DEFAULT_PORTS = {"http": 80, "https": 443}
# Characters left unescaped when re-encoding the query, so an already clean query string stays readable.
_QUERY_SAFE = "/:@!$'()*,;~"


def _is_tracking(key: str) -> bool:
    lowered = key.lower()
    return lowered.startswith("utm_") or lowered in _TRACKING_PARAMS


def canonical_url(url: str) -> str:
    """Return the canonical form of ``url`` used for deduplication.

    Lowercase scheme and host, no ``www.``, no default port, no credentials, no fragment, no tracking
    parameters (``utm_*``, ``spm``, ``from``, ``ref``, ``source``), remaining parameters sorted, and no
    trailing slash. The path keeps its case: paths are case-sensitive on most servers.
    """
    raw = url.strip()
    parts = urlsplit(raw)
    scheme = parts.scheme.lower()
    if not parts.netloc:
        # Not an absolute network URL (e.g. "mailto:" or a bare path): only the fragment can safely go.
        return urlunsplit((scheme, "", parts.path, parts.query, ""))
    host = (parts.hostname or "").rstrip(".")
    if host.startswith("www."):
        host = host[4:]
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    netloc = host if port is None or port == _DEFAULT_PORTS.get(scheme) else f"{host}:{port}"
    path = parts.path.rstrip("/")
    pairs = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if not _is_tracking(k)]
    query = urlencode(sorted(pairs), quote_via=quote, safe=_QUERY_SAFE)
    return urlunsplit((scheme, netloc, path, query, ""))


def url_hash(url: str) -> str:
    """First 32 hex digits of the SHA-256 of :func:`canonical_url` (the items.url_hash column)."""
    return canonical_hash(canonical_url(url))


def canonical_hash(canonical: str) -> str:
    """url_hash of a URL already in canonical form (saves canonicalising it twice)."""
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()[:32]


_SPACES = re.compile(r"\s+")


class _PunctuationTable(dict[int, int | None]):
    """str.translate table dropping punctuation and symbols (categories P*, S*), filled in as characters are
    met: a generator asking unicodedata about every character cost more than the rest of title_key. Bounded:
    common text needs a few thousand characters, a hostile feed could bring a million."""

    LIMIT = 16_384

    def __missing__(self, code: int) -> int | None:
        kept = None if unicodedata.category(chr(code))[0] in "PS" else code
        if len(self) < self.LIMIT:
            self[code] = kept
        return kept


_DROP_PUNCTUATION = _PunctuationTable()


def title_key(title: str) -> str:
    """Fingerprint of a title for near-duplicate detection: equal for titles that differ only in case,
    punctuation, symbols, full/half width or spacing (16 hex of an MD5)."""
    # Punctuation and symbols are dropped so "U.S. jobs" and "US jobs" agree.
    text = unicodedata.normalize("NFKC", title).casefold().translate(_DROP_PUNCTUATION)
    text = _SPACES.sub(" ", text).strip()
    return hashlib.md5(text.encode("utf-8"), usedforsecurity=False).hexdigest()[:16]


def is_http_url(url: str) -> bool:
    """A plain absolute http(s) URL with a host and no whitespace or control characters: the only kind we
    ever link to in an email or redirect to (never javascript:, data: or a relative path)."""
    if not url or any(ch.isspace() or unicodedata.category(ch) == "Cc" for ch in url):
        return False
    try:
        parts = urlsplit(url)
    except ValueError:
        return False
    return parts.scheme.lower() in ("http", "https") and bool(parts.hostname)


def placeholder_name(url: str) -> str:
    """The name a source gets when none is given (replaced by the feed's own title at the first fetch)."""
    parts = urlsplit(url)
    host = (parts.hostname or url).removeprefix("www.")
    path = parts.path.rstrip("/")
    return (host + path)[:200] or url[:200]


def normalise_source_url(url: str) -> str:
    """Light normalisation so trivially different spellings are one source: lowercase scheme and host, no
    fragment. Path and query are kept as they are (feeds depend on them), and so is any user info."""
    parts = urlsplit(url.strip())
    userinfo, at, hostport = parts.netloc.rpartition("@")
    return urlunsplit((parts.scheme.lower(), f"{userinfo}{at}{hostport.lower()}", parts.path, parts.query, ""))
