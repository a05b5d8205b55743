"""Narrow goals for `bin/bench relevance`: topics of 1-5 % of the items, carved out of the labelled sets by rules.

Real users mostly write narrow goals ("oil prices", "房价"), while the datasets' labels are categories of 20-25 %
of the items. So each topic here is labelled by a keyword rule over the item (and, for TNEWS, the publisher's
tags), fixed before any score was looked at:

- English (AG News: title and description run together): an item is ON topic when the topic's patterns occur at
  least twice in its text (a story about oil names oil, crude, barrels, OPEC... more than once), UNCLEAR when
  once (a market report that mentions oil in passing: neither counted right nor wrong), OFF topic otherwise.
- Chinese (TNEWS: one headline, plus the publisher's tags): ON topic when the headline matches, UNCLEAR when only
  the tags do, OFF topic otherwise.

The goals are written as users would write them, not from the rules: each topic three ways (a short label, a
sentence, a description with priority terms); unclear items are left out of every figure.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import numpy as np

ON, UNCLEAR, OFF = 1, 0, -1
_I = "(?i)"


@dataclass(frozen=True)
class Wording:
    name: str
    description: str
    terms: tuple[str, ...] = ()


@dataclass(frozen=True)
class Topic:
    key: str
    patterns: tuple[str, ...]  # regexes; English: occurrences summed over all patterns
    wordings: tuple[Wording, ...]  # label, sentence, description with priority terms
    exclude: str | None = None  # an item matching this is off topic whatever else it says


EN_TOPICS = [
    Topic(
        "oil",
        (
            _I + r"\boil\b(?!-for-food)",
            _I + r"\bcrude\b",
            r"\bOPEC\b|\bOpec\b",
            _I + r"\bpetrol(eum)?\b",
            _I + r"\bgasoline\b",
            _I + r"\bbarrels?\b",
            _I + r"\bnatural gas\b",
            _I + r"\brefiner(y|ies)\b",
            _I + r"\bheating fuel\b",
            _I + r"\benergy (prices|costs|markets?)\b",
            _I + r"\bfuel prices\b",
            r"\bYukos\b",
        ),
        (
            Wording("Oil prices", "Oil and energy prices"),
            Wording("Fuel costs", "I want to know what drives the cost of fuel and energy, and when it jumps or falls"),
            Wording(
                "Oil and energy prices",
                "Crude oil prices, OPEC production decisions, and what they mean for energy markets and petrol prices",
                ("oil", "OPEC", "crude"),
            ),
        ),
        exclude=_I + r"olive oil|energy drink",
    ),
    Topic(
        "space",
        (
            r"\bNASA\b|\bNasa\b",
            _I + r"\bastronauts?\b|\bcosmonauts?\b",
            _I + r"\bspace ?(station|craft|ship|flight|shuttles?|probe|capsule|agency|tourism|mission|center)\b",
            _I + r"\bspaceport\b",
            r"\bMars\b",
            _I + r"\borbit(s|ing|ed|al)?\b",
            _I + r"\bplanets?\b|\bplanetary\b",
            r"\bHubble\b",
            r"\bCassini\b",
            r"\bSaturn\b",
            _I + r"\bcomets?\b",
            _I + r"\basteroids?\b",
            _I + r"\bgalax(y|ies)\b",
            _I + r"\btelescopes?\b",
            _I + r"\bastronom(y|ers?|ical)\b",
            _I + r"\blunar\b",
            r"\bMoon\b|\bmoon\b",
            r"\bSoyuz\b",
            r"\bSPACE\.com\b",
            r"\bESA\b",
            _I + r"\brovers?\b",
            r"\bSpaceShipOne\b",
            _I + r"\bsolar system\b",
        ),
        (
            Wording("Space", "Space exploration"),
            Wording("Beyond Earth", "Tell me when people or robots are sent beyond Earth and what they find out there"),
            Wording(
                "Space exploration",
                "NASA and other space agencies: rocket launches, Mars rovers, the International Space Station, and "
                "discoveries about planets, moons and stars",
                ("NASA", "Mars", "space station"),
            ),
        ),
    ),
    Topic(
        "olympics",
        (
            _I + r"\bolympi(c|cs|an|ans)\b",
            _I + r"\bparalympi",
            r"\bIOC\b",
            _I + r"\bmedal(s|ist|ists)?\b",
            _I + r"\bAthens\b",
        ),
        (
            Wording("Olympics", "The Olympic Games"),
            Wording("The Games", "Who wins at the summer and winter games, the athletes' records and doping scandals"),
            Wording(
                "Olympic Games",
                "The Athens Olympic Games: medal results, athletes, records and doping cases",
                ("Olympic", "Athens", "gold medal"),
            ),
        ),
    ),
    Topic(
        "elections",
        (
            _I + r"\belections?\b",
            _I + r"\belectoral\b",
            _I + r"\bvoters?\b",
            _I + r"\bvot(e|es|ed|ing)\b",
            _I + r"\bballots?\b",
            _I + r"\bpolls?\b",
            _I + r"\bcandidates?\b",
            _I + r"\bcampaign(ing|s)?\b",
            _I + r"\breferendum\b",
            r"\bKerry\b",
            _I + r"\bpresidential race\b",
            _I + r"\bre-?elect",
        ),
        (
            Wording("Elections", "Elections"),
            Wording("Who governs", "Who is running for office, the campaigns, and the results when a country chooses"),
            Wording(
                "Elections and votes",
                "Presidential and parliamentary elections around the world: candidates, campaigns, polls and results",
                ("election", "vote", "polls"),
            ),
        ),
        exclude=_I + r"\bvote of confidence\b",
    ),
    Topic(
        "phones",
        (
            _I + r"\b(cell|mobile|camera|smart|wireless) ?phones?\b",
            _I + r"\bcellphones?\b|\bsmartphones?\b",
            _I + r"\bhandsets?\b",
            r"\bNokia\b",
            r"\bBlackBerry\b|\bBlackberry\b",
            r"\bTreo\b",
            r"\bMotorola\b",
            r"\bSony Ericsson\b",
            r"\bVodafone\b",
            r"\bCingular\b",
            r"\bT-Mobile\b",
            r"\bVerizon Wireless\b",
            _I + r"\bmobile operators?\b|\bwireless carriers?\b",
            r"\b3G\b",
            _I + r"\btext messag",
            r"\bSMS\b",
        ),
        (
            Wording("Mobile phones", "Mobile phones"),
            Wording("Handsets", "New handsets, the companies that make them and the networks that sell them"),
            Wording(
                "Smartphones and mobile phones",
                "Mobile phone makers and networks: new models, smartphones, sales and wireless operators",
                ("Nokia", "cell phone", "BlackBerry"),
            ),
        ),
    ),
]

ZH_TOPICS = [
    Topic(
        "football",
        (
            r"足球|中超|中甲|世界杯|英超|西甲|意甲|德甲|法甲|欧冠|亚冠|国足|梅西|C罗|内马尔|鲁能|申花|皇马|巴萨|曼联|"
            r"曼城|切尔西|利物浦|阿森纳|尤文|拜仁|点球|进球|射门|足协",
        ),
        (
            Wording("足球", "足球"),
            Wording("看足球", "我关心中超、欧洲联赛和国家队的比赛，还有球员转会"),
            Wording("足球赛事", "足球联赛和杯赛的赛果、球员与教练的动态", ("中超", "世界杯", "皇马")),
        ),
    ),
    Topic(
        "house_price",
        (
            r"房价|楼市|房地产|楼盘|二手房|买房|购房|卖房|房贷|限购|限售|商品房|开发商|房企|首付|学区房|公积金|地价|土拍|新房|炒房",
        ),
        (
            Wording("房价", "房价走势"),
            Wording("买房", "我想知道房子会涨还是会跌，以及各地的调控和贷款政策"),
            Wording("楼市", "楼市调控、新房和二手房成交、开发商动态", ("房价", "楼市", "限购")),
        ),
    ),
    Topic(
        "crypto",
        (r"比特币|区块链|数字货币|加密货币|虚拟货币|以太坊|挖矿|矿机|币圈|ICO|莱特币|瑞波|狗狗币|炒币|EOS",),
        (
            Wording("比特币", "数字货币"),
            Wording("币圈", "告诉我比特币这类加密资产的涨跌和监管消息"),
            Wording("区块链", "区块链技术、加密货币和挖矿", ("比特币", "区块链", "以太坊")),
        ),
    ),
    Topic(
        "exams",
        (r"高考|考研|中考|录取|分数线|填报志愿|志愿填报|考生|研究生|复试|自主招生|状元|小升初|招生",),
        (
            Wording("高考", "高考和升学"),
            Wording("孩子升学", "孩子明年要考试了，我想看升学政策、分数线和怎么选学校"),
            Wording("考试招生", "高考、中考、考研的招生政策与录取", ("高考", "中考", "考研")),
        ),
    ),
    Topic(
        "nev",
        (
            r"新能源(汽)?车|电动(汽)?车|纯电|混动|插电|特斯拉|比亚迪|蔚来|小鹏汽车|理想汽车|充电桩|续航|动力电池|锂电|燃料电池",
        ),
        (
            Wording("新能源车", "新能源汽车"),
            Wording("电动车", "我想买辆电动的车，关心能跑多远、怎么充电和各品牌的新车"),
            Wording("新能源汽车", "电动汽车、混动车型、电池技术和充电设施", ("新能源汽车", "特斯拉", "比亚迪")),
        ),
    ),
]


def _count(text: str, topic: Topic) -> int:
    if topic.exclude and re.search(topic.exclude, text):
        return 0
    return sum(len(re.findall(p, text)) for p in topic.patterns)


def truth(lang: str, texts: list[str], tags: list[str], topic: Topic) -> np.ndarray:
    """ON / UNCLEAR / OFF per item (module docstring): English by the number of mentions in the text, Chinese
    by the headline and then the publisher's tags."""
    out = np.full(len(texts), OFF)
    for i, text in enumerate(texts):
        if lang == "en":
            n = _count(text, topic)
            out[i] = ON if n >= 2 else UNCLEAR if n == 1 else OFF
        elif _count(text, topic):
            out[i] = ON
        elif tags[i] and _count(tags[i], topic):
            out[i] = UNCLEAR
    return out


def topics(lang: str) -> list[Topic]:
    return ZH_TOPICS if lang == "zh" else EN_TOPICS
