"""Plain text from feed and page fragments: strip tags, decode entities, collapse spaces, truncate (pure).
May import: the standard library only.
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

ELLIPSIS = "…"
# Elements whose content is never readable text.
_SKIPPED = frozenset({"script", "style", "noscript", "template", "iframe", "svg", "math", "head", "title"})
# Elements that separate words; without a space "<p>a</p><p>b</p>" would read "ab".
_BLOCKS = frozenset(
    {
        "address",
        "article",
        "aside",
        "blockquote",
        "br",
        "dd",
        "details",
        "div",
        "dl",
        "dt",
        "figcaption",
        "figure",
        "footer",
        "form",
        "h1",
        "h2",
        "h3",
        "h4",
        "h5",
        "h6",
        "header",
        "hr",
        "img",
        "li",
        "main",
        "nav",
        "ol",
        "p",
        "pre",
        "section",
        "summary",
        "table",
        "td",
        "th",
        "tr",
        "ul",
    }
)
# Input beyond this is never needed for a 500-char snippet; it bounds the cost of huge content:encoded bodies.
_MAX_INPUT_CHARS = 64 * 1024
# Zero-width and control characters that survive str.split() and pollute titles.
_INVISIBLE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f\u200b-\u200d\u2060\ufeff]")
_MARKUP_HINT = re.compile(r"<[A-Za-z!/?]|&(?:#\d+|#x[0-9A-Fa-f]+|[A-Za-z][A-Za-z0-9]*);?")
# What an HTML tokenizer reads as the start of a tag, comment, CDATA or processing instruction ("<" then an
# ASCII letter, "/", "!" or "?"); "a < b" and "x<3" are text to it.
_TAG_OPEN = re.compile(r"<(?=[A-Za-z!/?])")
# Each pass peels one layer (tags, then the tags that decoding "&lt;" exposed, ...); real feeds need two.
_MAX_STRIP_PASSES = 4


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self._skip_depth = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _SKIPPED:
            self._skip_depth += 1
        elif tag in _BLOCKS:
            self.parts.append(" ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in _BLOCKS:
            self.parts.append(" ")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIPPED:
            self._skip_depth = max(0, self._skip_depth - 1)
        elif tag in _BLOCKS:
            self.parts.append(" ")

    def handle_data(self, data: str) -> None:
        if not self._skip_depth:
            self.parts.append(data)


def _names(names: frozenset[str]) -> str:
    """A regex matching any of ``names`` (non-empty) in any case, as a trie: an alternation of 38 words under
    re.IGNORECASE, tried at every "<", cost more than the rest of the fast path."""
    heads: dict[str, list[str]] = {}
    for name in sorted(names):
        heads.setdefault(name[0], []).append(name[1:])
    branches = []
    for head, tails in heads.items():
        letter = f"[{head.lower()}{head.upper()}]" if head.isalpha() else re.escape(head)
        longer = frozenset(t for t in tails if t)
        rest = _names(longer) if longer else ""
        branches.append(letter + (f"{rest}?" if rest and "" in tails else rest))
    return "(?:" + "|".join(branches) + ")"


# The fast path reads plain tags only: no comments, CDATA, declarations or processing instructions, no "</" that
# is not an end tag, and none of the elements whose content is dropped; anything else goes to html.parser.
_NOT_PLAIN = re.compile(r"<(?:[!?]|/(?![A-Za-z])|/?" + _names(_SKIPPED) + r"(?![A-Za-z0-9]))")
# A plain tag: its name, then attributes, whose quoted values may hold ">". A "<" ends the attempt, so a fragment
# of unclosed tags costs one pass, not one pass per "<" (64 KiB of "<a " took seconds).
_ATTRIBUTES = r"""(?:[^<>"']|"[^"<]*"|'[^'<]*')*>"""
_BLOCK_TAG = re.compile(r"</?" + _names(_BLOCKS) + r"(?![A-Za-z0-9])" + _ATTRIBUTES)
_ANY_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*" + _ATTRIBUTES)
# Tags the fast path could not read (a "<" inside a quoted value) go to html.parser when there are a few; when
# there are many the fragment is hostile, and html.parser takes time quadratic in their number.
_FEW_LEFT = 8


def _strip_plain(fragment: str) -> str | None:
    """Tags removed by two regex substitutions (a space for a block element's, nothing for others) and entities
    decoded: what html.parser gives for plain markup, at a sixth of its cost. None when a few tag openers are
    left that the regexes could not read."""
    text = _ANY_TAG.sub("", _BLOCK_TAG.sub(" ", fragment))
    if _TAG_OPEN.search(text) and text.count("<") <= _FEW_LEFT:
        return None
    return html.unescape(text)


def strip_tags(fragment: str) -> str:
    """Readable text of an HTML fragment: tags removed (script/style content too), entities decoded."""
    if not _MARKUP_HINT.search(fragment):
        return fragment
    fragment = fragment[:_MAX_INPUT_CHARS]
    if not _NOT_PLAIN.search(fragment) and (text := _strip_plain(fragment)) is not None:
        return text
    parser = _TextExtractor()
    parser.feed(fragment)
    parser.close()
    return "".join(parser.parts)


def collapse_whitespace(text: str) -> str:
    return " ".join(_INVISIBLE.sub("", text).split())


def truncate(text: str, limit: int) -> str:
    """Cut ``text`` to at most ``limit`` characters, at a word boundary when one is near, ending in "…"."""
    if len(text) <= limit:
        return text
    if limit <= 1:
        return ELLIPSIS[:limit]
    cut = text[: limit - 1]
    space = cut.rfind(" ")
    # Only back up to a space in the last fifth: CJK text has no spaces and must be cut mid-run.
    if space >= (limit - 1) * 4 // 5:
        cut = cut[:space]
    return cut.rstrip(" ,;:.-–—、，。；：") + ELLIPSIS


def defuse_markup(text: str) -> str:
    """``text`` with every tag opener broken by a space ("<b" -> "< b"): still readable, never markup.

    Titles and snippets go to API clients, mail and web pages; one that renders them as HTML must not
    meet a tag, whatever the feed nested or escaped to smuggle one through.
    """
    return _TAG_OPEN.sub("< ", text)


def clean_text(html_or_text: str | None, limit: int = 500, *, is_html: bool = True) -> str:
    """Plain, single-line text of at most ``limit`` characters, with no markup left in it.

    ``is_html=False`` is for content declared ``text/plain``: its angle brackets are text, not tags, so
    they are kept, only defused. HTML is stripped again while decoding revealed new tags ("&lt;b&gt;",
    a CDATA section the first pass left as text); whatever still looks like a tag after that is defused.
    """
    if not html_or_text:
        return ""
    if is_html:
        text = strip_tags(html_or_text)
        for _ in range(_MAX_STRIP_PASSES - 1):
            if not _TAG_OPEN.search(text):
                break
            text = strip_tags(text)
    else:
        text = html_or_text[:_MAX_INPUT_CHARS]
    # After collapse_whitespace: removing a zero-width character can join "<" to a letter.
    return truncate(defuse_markup(collapse_whitespace(text)), limit)


def clean_title(title: str | None, limit: int = 300) -> str:
    """A title as one line of plain text (feeds often put markup and entities in titles)."""
    return clean_text(title, limit)
