"""Why an item matched a goal, written for the person reading it, in the goal's language (en or zh).

Pure text: the matcher stores these with every match (the API's `reasons`, the inbox and emails show them).
Thresholds and rule names are not reasons a reader needs: they live in the decision run's record.
"""

from __future__ import annotations

TEXTS: dict[str, dict[str, str]] = {
    "en": {
        "blocked": "from a source you blocked for this goal",
        "excluded": "mentions {terms}, which you excluded",
        "mentions": "mentions {terms}",
        "strict_miss": "none of your priority terms appear (strict goal: not an instant alert)",
        "very_close": "very close to your goal",
        "close": "close to your goal",
        "somewhat": "somewhat related to your goal",
        "loose": "only loosely related to your goal",
        "liked": "similar to items you liked",
        "disliked": "similar to items you disliked",
        "source_liked": "from a source you liked",
        "source_disliked": "from a source whose items you often disliked",
        "days_one": "published {n} day ago",
        "days_other": "published {n} days ago",
        "goal_backfill": "found when the goal was created, changed or resumed",
        "source_backfill": "from the back catalogue of a newly added source",
        "keywords_only": "scored by keywords only: {why}",
        "embedding pending": "embedding pending",
        "embedding failed": "embedding failed",
        "goal embedding pending": "goal embedding pending",
        "and": " and ",
        "sep": ", ",
        "more": " (+{n} more)",
        "quote": "'{w}'",
    },
    "zh": {
        "blocked": "来自你为此目标屏蔽的来源",
        "excluded": "提到了你排除的{terms}",
        "mentions": "提到了{terms}",
        "strict_miss": "没有出现任何优先关键词（严格模式：不会即时推送）",
        "very_close": "与你的目标高度相关",
        "close": "与你的目标相关",
        "somewhat": "与你的目标有些相关",
        "loose": "与你的目标关系不大",
        "liked": "与你喜欢的内容相似",
        "disliked": "与你不喜欢的内容相似",
        "source_liked": "来自你喜欢的来源",
        "source_disliked": "来自你常不喜欢的来源",
        "days_one": "发布于 {n} 天前",
        "days_other": "发布于 {n} 天前",
        "goal_backfill": "在创建、修改或恢复目标时找到",
        "source_backfill": "来自新添加来源的历史内容",
        "keywords_only": "仅按关键词评分：{why}",
        "embedding pending": "语义向量尚未生成",
        "embedding failed": "语义向量生成失败",
        "goal embedding pending": "目标的语义向量尚未生成",
        "and": "和",
        "sep": "、",
        "more": "（另有 {n} 个）",
        "quote": "“{w}”",
    },
}


# How close the meaning is, from the calibrated meaning score (calibrate.py: 0.92 is a goal's best 1 % of items,
# 0.75 the push level): "very close" only near the goal's best items. On the bench's tuning half, narrow English
# goals' items scoring 0.90 and up were on topic 81-91 % of the time; 0.85-0.90, 60 % (a neighbouring topic).
VERY_CLOSE, CLOSE, SOMEWHAT = 0.9, 0.75, 0.5


def _t(lang: str, key: str) -> str:
    return TEXTS.get(lang, TEXTS["en"]).get(key) or TEXTS["en"][key]


def quote_list(words: list[str], lang: str = "en", limit: int = 3) -> str:
    shown = [_t(lang, "quote").format(w=w) for w in words[:limit]]
    more = len(words) - limit
    text = shown[0] if len(shown) == 1 else _t(lang, "sep").join(shown[:-1]) + _t(lang, "and") + shown[-1]
    return text + (_t(lang, "more").format(n=more) if more > 0 else "")


def reasons_for(
    *,
    hits: list[str],
    negatives: list[str],
    blocked: bool,
    strict_miss: bool,
    semantic: float,
    lexical_only: bool,
    pending: str,
    feedback: float,
    trust: float,
    age_hours: float,
    backfill: str,
    lang: str = "en",
) -> list[str]:
    """Readable reasons, most important first ("mentions 'OpenAI' and 'funding'", "very close to your goal").
    `semantic` is the calibrated meaning score (calibrate.py; VERY_CLOSE, CLOSE, SOMEWHAT above);
    `backfill` is "", "goal_backfill" or "source_backfill"; `pending` why there is no vector."""
    out: list[str] = []
    if blocked:
        out.append(_t(lang, "blocked"))
    if negatives:
        out.append(_t(lang, "excluded").format(terms=quote_list(negatives, lang)))
    if hits:
        out.append(_t(lang, "mentions").format(terms=quote_list(hits, lang)))
    elif strict_miss:
        out.append(_t(lang, "strict_miss"))
    if semantic >= VERY_CLOSE:
        out.append(_t(lang, "very_close"))
    elif semantic >= CLOSE:
        out.append(_t(lang, "close"))
    elif semantic >= SOMEWHAT:
        out.append(_t(lang, "somewhat"))
    elif not hits:
        out.append(_t(lang, "loose"))
    if feedback >= 0.15:
        out.append(_t(lang, "liked"))
    elif feedback <= -0.15:
        out.append(_t(lang, "disliked"))
    if trust >= 0.15:
        out.append(_t(lang, "source_liked"))
    elif trust <= -0.15:
        out.append(_t(lang, "source_disliked"))
    if age_hours >= 24:
        days = round(age_hours / 24)
        out.append(_t(lang, "days_one" if days == 1 else "days_other").format(n=days))
    if backfill:
        out.append(_t(lang, backfill))
    if lexical_only:
        out.append(_t(lang, "keywords_only").format(why=_t(lang, pending or "embedding pending")))
    return out
