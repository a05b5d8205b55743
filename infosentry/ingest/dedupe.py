"""One item per story (pure): whether two items from different sources with the same title fingerprint tell
the same story, judged on their text; and, for Chinese titles, which differ between sources by a tag
(【快讯】), punctuation or an added clause, whether two titles are the same headline.

Imports nothing of ours.
"""

from __future__ import annotations

import difflib
import re
import unicodedata
from dataclasses import dataclass
from datetime import datetime, timedelta

DEDUPE_WINDOW = timedelta(hours=72)
# Chinese near-duplicate titles: at least this many characters after normalising (shorter titles are too
# generic: "股市收盘" is many stories), and the marks (first / last MARK_CHARS characters) that find candidates.
CJK_TITLE_MIN_CHARS = 7
MARK_CHARS = 6
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


_CJK = re.compile("[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff]")
_TAGS = re.compile(r"【[^】]{0,10}】|\[[^\]]{0,10}\]|（[^）]{0,10}）$|\([^)]{0,10}\)$")
_NUMBERS = re.compile(r"\d+(?:\.\d+)?")


def cjk_title_key(title: str) -> str:
    """A Chinese headline reduced to what two sources share: NFKC, casefold, bracketed tags (【快讯】, [视频],
    a trailing (图)) removed, then punctuation, symbols and spaces. "" when the title has no CJK character."""
    text = unicodedata.normalize("NFKC", title or "").casefold()
    if not _CJK.search(text):
        return ""
    text = _TAGS.sub("", text)
    return "".join(ch for ch in text if unicodedata.category(ch)[0] not in "PSZ")


def title_marks(title: str) -> list[str]:
    """Index keys that two copies of one Chinese headline share even when one adds a tag, a prefix or a tail:
    its first and its last MARK_CHARS characters (none for a short or non-Chinese title)."""
    key = cjk_title_key(title)
    if len(key) < CJK_TITLE_MIN_CHARS:
        return []
    return [f"p:{key[:MARK_CHARS]}", f"s:{key[-MARK_CHARS:]}"]


def same_cjk_headline(a: str, b: str) -> bool:
    """Two Chinese titles are one headline when, once normalised, one only ADDS characters to the other
    (a source's prefix, a tail clause: "央行宣布降准0.5个百分点" / "…，释放长期资金约1万亿"), never replaces any,
    and their numbers agree. A replacement is another story on the same template ("华为/小米发布新款折叠屏手机",
    "湖人险胜勇士" / "勇士险胜湖人", "降准0.5" / "加息0.25"), so it never merges."""
    ka, kb = cjk_title_key(a), cjk_title_key(b)
    if min(len(ka), len(kb)) < CJK_TITLE_MIN_CHARS:
        return False
    if ka == kb:
        return True
    na = set(_NUMBERS.findall(unicodedata.normalize("NFKC", a)))  # before punctuation goes: 0.5 is not 05
    nb = set(_NUMBERS.findall(unicodedata.normalize("NFKC", b)))
    if not (na <= nb or nb <= na):
        return False
    short, long = sorted((ka, kb), key=len)
    ops = difflib.SequenceMatcher(None, short, long, autojunk=False).get_opcodes()
    if any(op in ("replace", "delete") for op, *_ in ops):  # the longer must contain the shorter, in order
        return False
    kept = sum(i2 - i1 for op, i1, i2, _, _ in ops if op == "equal")
    # the shared text must be the bulk of the shorter title in a few runs, not scattered characters
    runs = sum(1 for op, *_ in ops if op == "equal")
    return kept == len(short) and runs <= 3


@dataclass
class Candidate:
    """An item that a draft from another source may be the same story as."""

    target: int | str  # item id, or the url_hash of an item inserted in this batch
    snippet: str
    published_at: datetime | None
    source_ids: set[int]
    title: str = ""


def find_same_story(
    cands: list[Candidate] | None,
    source_id: int,
    snippet: str,
    title: str,
    published: datetime | None,
    near: list[Candidate] | None = None,
) -> Candidate | None:
    """The item a draft from `source_id` is the same story as: among `cands` (same title fingerprint) one whose
    text agrees, else among `near` (Chinese titles sharing a mark) one with the same headline."""
    for cand in cands or ():
        if source_id in cand.source_ids:
            continue  # never merge two items of one source on title alone
        if published and cand.published_at and abs(published - cand.published_at) > DEDUPE_WINDOW:
            continue
        if same_story_text(cand.snippet, snippet, title):
            return cand
    for cand in near or ():
        if source_id in cand.source_ids:
            continue
        if published and cand.published_at and abs(published - cand.published_at) > DEDUPE_WINDOW:
            continue
        if same_cjk_headline(cand.title, title):
            return cand
    return None
