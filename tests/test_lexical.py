"""Lexical fallback similarity: CJK bigrams, Latin words, bounds and the relevance ordering it gives."""

from __future__ import annotations

import math
from collections import Counter

import pytest

from infosentry.embedders.lexical import _tokens, cjk_ngram_similarity, has_cjk, lexical_similarity


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("央行宣布降息", True),
        ("東京で地震", True),  # kanji + kana
        ("カタカナ", True),
        ("한국어 뉴스", True),
        ("Apple 发布 iPhone", True),
        ("plain English, café, naïve", False),
        ("Ünïcödé Ελληνικά кириллица", False),
        ("。，！", False),  # CJK punctuation alone is not CJK text
        ("", False),
    ],
)
def test_has_cjk(text: str, expected: bool) -> None:
    assert has_cjk(text) is expected


def test_tokens_bigrams_for_cjk_words_for_latin() -> None:
    assert _tokens("央行宣布降息") == ["央行", "行宣", "宣布", "布降", "降息"]
    # Full-width Latin is folded by NFKC; punctuation splits runs; a lone Han character stays a unigram.
    assert _tokens("Apple发布ＩＰＨＯＮＥ，售价9999元！") == ["apple", "发布", "iphone", "售价", "9999", "元"]
    assert _tokens("The U.S. Fed's rate-cut") == ["the", "u", "s", "fed", "s", "rate", "cut"]


def test_cjk_ngram_similarity_is_the_cosine_of_counts() -> None:
    a, b = "降息降息 bank", "降息 bank bank"
    ca, cb = Counter(_tokens(a)), Counter(_tokens(b))
    dot = sum(ca[t] * cb[t] for t in ca)
    expected = dot / (math.sqrt(sum(v * v for v in ca.values())) * math.sqrt(sum(v * v for v in cb.values())))
    assert cjk_ngram_similarity(a, b) == pytest.approx(expected)


def test_cjk_ngram_similarity_bounds_and_symmetry() -> None:
    assert cjk_ngram_similarity("央行宣布降息", "央行宣布降息") == pytest.approx(1.0)
    assert cjk_ngram_similarity("Oil Prices", "oil prices") == pytest.approx(1.0)  # case-insensitive
    assert cjk_ngram_similarity("央行宣布降息", "国足击败对手") == 0.0
    assert cjk_ngram_similarity("", "anything") == 0.0
    assert cjk_ngram_similarity("!!!", "???") == 0.0
    pairs = [("央行降息", "央行宣布降息刺激经济"), ("oil prices rise", "prices of oil fall"), ("a", "a b")]
    for x, y in pairs:
        s = cjk_ngram_similarity(x, y)
        assert 0.0 < s < 1.0
        assert s == pytest.approx(cjk_ngram_similarity(y, x))


def test_related_chinese_headlines_beat_unrelated() -> None:
    related = [
        ("央行宣布降息以刺激经济增长", "央行下调利率 降息支持经济"),
        ("台风登陆广东造成严重损失", "强台风袭击广东沿海地区"),
        ("华为发布最新芯片打破技术封锁", "华为自研芯片取得重大突破"),
    ]
    for i, (a, b) in enumerate(related):
        pos = cjk_ngram_similarity(a, b)
        for j, (_, other) in enumerate(related):
            if j != i:
                assert pos > cjk_ngram_similarity(a, other), (a, other)


def test_lexical_similarity_ranks_topical_docs_first() -> None:
    goal = "Business and economy: companies, markets, stocks, oil prices, earnings, mergers and trade"
    on_topic = "Oil prices climb as stock markets rally on strong company earnings"
    off_topic = "The team won the championship after a dramatic match against their rivals"
    assert lexical_similarity(goal, on_topic) > lexical_similarity(goal, off_topic)
    assert lexical_similarity(goal, off_topic) == 0.0  # shares only stopwords ("and", "the")
    # Plurals fold: "company" in the doc meets "companies" in the goal.
    assert lexical_similarity("companies", "a company") == pytest.approx(1.0)


def test_lexical_similarity_cjk_goal() -> None:
    goal = "关注央行利率政策和降息"
    assert lexical_similarity(goal, "央行今日宣布降息25个基点") > lexical_similarity(goal, "国足在预选赛中击败对手")
    assert lexical_similarity(goal, "国足在预选赛中击败对手") == 0.0


def test_lexical_similarity_bounds() -> None:
    assert lexical_similarity("", "doc") == 0.0
    assert lexical_similarity("the and of", "the and of") == 0.0  # stopwords only: no evidence either way
    assert lexical_similarity("oil", "oil") == pytest.approx(1.0)
    assert 0.0 <= lexical_similarity("oil prices", "oil oil oil and gas prices everywhere") <= 1.0
    # Coverage: a short query fully present in a long doc scores well above a partial match.
    long_doc = "Oil prices rose today. " + "Analysts discussed many unrelated details at length. " * 5
    assert lexical_similarity("oil prices", long_doc) > lexical_similarity("oil gold silver copper", long_doc)
