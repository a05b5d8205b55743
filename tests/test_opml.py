"""OPML parsing and emitting: nested folders, attribute spellings, invalid outlines, unsafe XML, round trip."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from infosentry.opml import emit_opml, parse_opml

NESTED = """<?xml version="1.0" encoding="utf-8"?>
<opml version="2.0">
  <head><title>My feeds</title></head>
  <body>
    <outline text="News">
      <outline text="World" title="World">
        <outline text="Le Monde" type="rss" xmlUrl="https://www.lemonde.fr/rss/une.xml" htmlUrl="https://lemonde.fr"/>
      </outline>
      <outline title="Only a title" type="rss" XMLURL="https://title.example/feed"/>
    </outline>
    <outline text="Top level" type="rss" xmlUrl=" https://top.example/rss "/>
    <outline text="A folder with a feed of its own" xmlUrl="https://folder.example/rss">
      <outline text="Child" xmlUrl="https://child.example/rss"/>
    </outline>
    <outline text="No URL here"/>
  </body>
</opml>"""


def test_nested_outlines_are_flattened_with_their_folder() -> None:
    doc = parse_opml(NESTED)
    assert doc.title == "My feeds"
    got = [(e.url, e.name, e.category, e.type) for e in doc.entries]
    assert got == [
        ("https://www.lemonde.fr/rss/une.xml", "Le Monde", "News/World", "rss"),
        ("https://title.example/feed", "Only a title", "News", "rss"),
        ("https://top.example/rss", "Top level", "", "rss"),
        ("https://folder.example/rss", "A folder with a feed of its own", "", "rss"),
        ("https://child.example/rss", "Child", "A folder with a feed of its own", "rss"),
    ]
    assert doc.invalid == []


def test_invalid_outlines_are_reported_not_raised() -> None:
    doc = parse_opml(b"""<opml><body>
      <outline text="ftp" xmlUrl="ftp://x.example/feed"/>
      <outline text="type" xmlUrl="https://x.example/a" infosentryType="podcast"/>
      <outline text="json" xmlUrl="https://x.example/b" infosentryType="site" infosentryConfig="{nope"/>
      <outline text="array" xmlUrl="https://x.example/c" infosentryType="site" infosentryConfig="[1]"/>
      <outline text="interval" xmlUrl="https://x.example/d" infosentryInterval="soon"/>
      <outline text="fine" xmlUrl="https://x.example/e"/>
    </body></opml>""")
    assert [e.url for e in doc.entries] == ["https://x.example/e"]
    reasons = {i["name"]: i["reason"] for i in doc.invalid}
    assert set(reasons) == {"ftp", "type", "json", "array", "interval"}
    assert "http(s)" in reasons["ftp"] and "JSON" in reasons["json"]


@pytest.mark.parametrize(
    "document, message",
    [
        ('<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY x "y">]><opml><body/></opml>', "DTD"),
        ('<?xml version="1.0"?><!DOCTYPE opml SYSTEM "http://evil.example/x.dtd"><opml><body/></opml>', "DTD"),
        ("<rss><channel/></rss>", "not an OPML"),
        ("<opml><head/></opml>", "no <body>"),
        ("<opml><body>", "not well-formed"),
        ("   ", "empty"),
    ],
)
def test_unsafe_or_foreign_documents_are_refused(document: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_opml(document)


def test_billion_laughs_is_not_expanded() -> None:
    entities = "".join(f'<!ENTITY l{i} "{f"&l{i - 1};" * 10}">' for i in range(1, 10))
    doc = (
        f'<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY l0 "lol">{entities}]><opml><body>'
        '<outline text="&l9;" xmlUrl="https://x.example/"/></body></opml>'
    )
    with pytest.raises(ValueError, match="DTD"):
        parse_opml(doc)


def test_deep_nesting_does_not_exhaust_the_stack() -> None:
    depth = 5000
    doc = (
        "<opml><body>"
        + '<outline text="f">' * depth
        + '<outline text="x" xmlUrl="https://deep.example/"/>'
        + "</outline>" * depth
        + "</body></opml>"
    )
    (entry,) = parse_opml(doc).entries
    assert entry.url == "https://deep.example/" and entry.category.count("/") == depth - 1


def test_round_trip_keeps_types_settings_and_odd_characters() -> None:
    sources = [
        {
            "type": "rss",
            "url": "https://a.example/rss?x=1&y=2",
            "name": 'Quotes " & <angles> 中文',
            "fetch_interval_sec": 900,
            "config": {},
        },
        {
            "type": "site",
            "url": "https://s.example/list",
            "name": "Site",
            "fetch_interval_sec": 7200,
            "config": {"selectors": {"item": "li > a", "title": "a"}, "headers": {"X-Key": "v  w"}},
        },
        {
            "type": "hotlist",
            "url": "https://n.example/api/s?id=weibo",
            "name": "Weibo\x01",
            "fetch_interval_sec": 600,
            "config": {"base_url": "https://n.example", "source_id": "weibo"},
        },
    ]
    text = emit_opml(sources, now=datetime(2024, 5, 1, tzinfo=UTC))
    assert "Wed, 01 May 2024 00:00:00 GMT" in text and '<outline text="Quotes' in text
    doc = parse_opml(text.encode())
    assert [(e.type, e.url, e.interval, e.config) for e in doc.entries] == [
        (s["type"], s["url"], s["fetch_interval_sec"], s["config"]) for s in sources
    ]
    assert [e.name for e in doc.entries] == ['Quotes " & <angles> 中文', "Site", "Weibo"]
    # plain readers see RSS outlines as ordinary feeds
    assert 'type="rss" xmlUrl="https://a.example/rss?x=1&amp;y=2"' in text
