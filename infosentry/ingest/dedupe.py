"""One item per story (pure): whether two items from different sources with the same title fingerprint tell
the same story, judged on their text.

Imports nothing of ours.
"""

from __future__ import annotations

import difflib
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

DEDUPE_WINDOW = timedelta(hours=72)
TITLE_ONLY_MIN_CHARS = 12  # two sources' identical titles without text to compare merge only if this long
TEXT_SIMILARITY = 0.85


def _norm(text: str) -> str:
    text = unicodedata.normalize("NFKC", text or "").casefold()
    text = "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PS")  # also drops "…"
    return " ".join(text.split())


def same_story_text(snippet_a: str, snippet_b: str, title: str) -> bool:
    """Whether two items with the same title fingerprint (from different sources) tell the same story.

    Both texts present: equal, one a truncation of the other, or ≥ 85 % similar. A text missing on either
    side (hot lists carry none): the title alone decides, and only when it is long enough to be specific.
    """
    a, b = _norm(snippet_a), _norm(snippet_b)
    if not a or not b:
        return len(_norm(title).replace(" ", "")) >= TITLE_ONLY_MIN_CHARS
    if a == b:
        return True
    short, long = sorted((a, b), key=len)
    if len(short) >= 40 and long.startswith(short):
        return True
    matcher = difflib.SequenceMatcher(None, a[:400], b[:400], autojunk=False)
    return matcher.quick_ratio() >= TEXT_SIMILARITY and matcher.ratio() >= TEXT_SIMILARITY


@dataclass
class Candidate:
    """An item that a draft from another source may be the same story as."""

    target: int | str  # item id, or the url_hash of an item inserted in this batch
    snippet: str
    published_at: datetime | None
    source_ids: set[int]


def find_same_story(
    cands: list[Candidate] | None, source_id: int, snippet: str, title: str, published: datetime | None
) -> Candidate | None:
    for cand in cands or ():
        if source_id in cand.source_ids:
            continue  # never merge two items of one source on title alone
        if published and cand.published_at and abs(published - cand.published_at) > DEDUPE_WINDOW:
            continue
        if same_story_text(cand.snippet, snippet, title):
            return cand
    return None
