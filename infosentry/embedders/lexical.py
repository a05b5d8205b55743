"""Lexical similarity: a model-free relevance signal for when embeddings are missing or text is CJK.

Pure functions over strings: CJK text becomes character bigrams (no word segmenter needed), other
scripts become lowercase word tokens; scores are in [0, 1].
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter

# Scripts written without spaces between words (Han, kana), plus Hangul, whose syllable bigrams work the
# same way. CJK punctuation (U+3000-303F) is deliberately not included: it separates runs.
_CJK_CLASS = (
    "\u1100-\u11ff"  # Hangul Jamo
    "\u3040-\u309f"  # Hiragana
    "\u30a0-\u30ff"  # Katakana
    "\u3130-\u318f"  # Hangul compatibility Jamo
    "\u31f0-\u31ff"  # Katakana phonetic extensions
    "\u3400-\u4dbf"  # CJK unified ideographs extension A
    "\u4e00-\u9fff"  # CJK unified ideographs
    "\uac00-\ud7af"  # Hangul syllables
    "\uf900-\ufaff"  # CJK compatibility ideographs
    "\U00020000-\U0003134f"  # CJK extensions B-H
)
CJK_CLASS = _CJK_CLASS  # for other modules' patterns (a regex character-class body)
_CJK_RE = re.compile(f"[{_CJK_CLASS}]")
# A run of CJK characters, or a run of letters/digits that are not CJK.
_TOKEN_RE = re.compile(f"(?P<cjk>[{_CJK_CLASS}]+)|(?P<word>(?:(?![{_CJK_CLASS}])[^\\W_])+)")

# Function words that make two unrelated English texts look alike; only lexical_similarity drops them
# (cjk_ngram_similarity stays a plain bag of tokens).
_STOPWORDS = frozenset(
    """a about after again against all also am an and any are as at be because been before being between
    both but by can could did do does doing down during each few for from further had has have having he
    her here hers him his how i if in into is it its itself just me more most my no nor not now of off on
    once only or other our ours out over own same she should so some such than that the their theirs them
    then there these they this those through to too under until up very was we were what when where which
    while who whom why will with would you your yours new says said say""".split()
)


def has_cjk(text: str) -> bool:
    """True if text contains any Han, kana or Hangul character."""
    return bool(_CJK_RE.search(text or ""))


def _normalise(text: str) -> str:
    # NFKC folds full-width Latin/digits (common in CJK text) to ASCII; casefold for case-insensitive match.
    return unicodedata.normalize("NFKC", text or "").casefold()


def _tokens(text: str) -> list[str]:
    """CJK runs as character bigrams (a lone character as itself); other words as lowercase tokens."""
    out: list[str] = []
    for m in _TOKEN_RE.finditer(_normalise(text)):
        run = m.group("cjk")
        if run is None:
            out.append(m.group("word"))
        elif len(run) == 1:
            out.append(run)
        else:
            out.extend(run[i : i + 2] for i in range(len(run) - 1))
    return out


def _cosine(a: Counter[str], b: Counter[str]) -> float:
    if not a or not b:
        return 0.0
    small, large = (a, b) if len(a) <= len(b) else (b, a)
    dot = sum(count * large[token] for token, count in small.items() if token in large)
    if not dot:
        return 0.0
    norm = math.sqrt(sum(c * c for c in a.values())) * math.sqrt(sum(c * c for c in b.values()))
    return min(1.0, dot / norm)  # counts are non-negative, so only rounding can push it past 1


def cjk_ngram_similarity(a: str, b: str) -> float:
    """Cosine of token-count vectors (CJK character bigrams + lowercase words), in [0, 1]."""
    return _cosine(Counter(_tokens(a)), Counter(_tokens(b)))


def _stem(token: str) -> str:
    # Just enough English folding that "markets"/"market" and "companies"/"company" meet; CJK untouched.
    if not token.isascii() or len(token) <= 3:
        return token
    if token.endswith("ies") and len(token) > 4:
        return token[:-3] + "y"
    if token.endswith("s") and not token.endswith(("ss", "us", "is")):
        return token[:-1]
    return token


def _terms(text: str) -> Counter[str]:
    return Counter(_stem(t) for t in _tokens(text) if t not in _STOPWORDS)


def lexical_similarity(query_text: str, doc_text: str) -> float:
    """How well doc_text matches query_text (e.g. a goal description vs a news item), in [0, 1].

    The mean of two views: the share of the query's distinct terms that occur in the doc (coverage: a
    short query fully present in a long article should score high, which cosine alone punishes) and the
    cosine of the term counts (rewards docs that dwell on the query's terms). English stopwords are
    dropped and plurals folded; CJK text is compared by character bigrams.
    """
    q = _terms(query_text)
    d = _terms(doc_text)
    if not q or not d:
        return 0.0
    coverage = sum(1 for term in q if term in d) / len(q)
    return 0.5 * coverage + 0.5 * _cosine(q, d)


def keywords(text: str) -> set[str]:
    """The distinct content words of a text (lower case; no stopwords, numbers or Latin words under 3 letters),
    CJK runs as bigrams: candidate search terms (the goal form's suggestions)."""
    return {
        t
        for t in _tokens(text)
        if t not in _STOPWORDS and not t.isdigit() and (len(t) >= 3 or (has_cjk(t) and len(t) == 2))
    }
