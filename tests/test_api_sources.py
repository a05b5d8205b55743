"""/api/v1/sources: per-user subscriptions over shared sources, validation, tenancy, health, OPML in and out."""

from __future__ import annotations

from typing import Any

from infosentry.api.http import RT
from infosentry.ingest import run as ingest
from tests.conftest import bearer, make_user
from tests.fakes.feeds import FakeFeedServer

RSS = """<?xml version="1.0"?><rss version="2.0"><channel><title>Fake</title>
<item><title>One</title><link>https://fake.example/1</link></item></channel></rss>"""


async def _users(api: Any) -> tuple[dict[str, str], dict[str, str]]:
    rt = api.app[RT]
    _, alice = await make_user(rt, "alice@example.com")
    _, bob = await make_user(rt, "bob@example.com")
    return bearer(alice), bearer(bob)


async def test_create_list_get_and_shared_subscription(api: Any) -> None:
    alice, bob = await _users(api)
    resp = await api.post(
        "/api/v1/sources", json={"url": "HTTPS://Feeds.Example.com/rss.xml#x", "name": "Ex"}, headers=alice
    )
    assert resp.status == 201, await resp.text()
    src = await resp.json()
    assert src["url"] == "https://feeds.example.com/rss.xml" and src["type"] == "rss"
    assert src["fetch_interval_sec"] == 900 and src["enabled"] is True and src["name"] == "Ex"
    for key in ("last_fetch_at", "next_fetch_at", "error_streak", "last_error", "last_error_kind", "last_success_at"):
        assert key in src
    # the same (type, url) from another user subscribes them to the same source: fetched once
    resp = await api.post(
        "/api/v1/sources", json={"url": "https://feeds.example.com/rss.xml", "type": "rss"}, headers=bob
    )
    assert resp.status == 200
    assert (await resp.json())["id"] == src["id"]
    rt = api.app[RT]
    assert await rt.pool.fetchval("SELECT count(*) FROM sources") == 1
    assert await rt.pool.fetchval("SELECT count(*) FROM subscriptions") == 2
    # posting again is idempotent
    resp = await api.post("/api/v1/sources", json={"url": "https://feeds.example.com/rss.xml"}, headers=bob)
    assert resp.status == 200
    listed = await (await api.get("/api/v1/sources", headers=bob)).json()
    assert [s["id"] for s in listed["items"]] == [src["id"]] and listed["next_cursor"] is None
    got = await (await api.get(f"/api/v1/sources/{src['id']}", headers=bob)).json()
    assert got["recent_fetches"] == [] and got["items_24h"] == 0
    # creating nudges the ingest job
    assert await rt.pool.fetchval("SELECT count(*) FROM procrastinate_jobs WHERE task_name = 'ingest_due'") == 1


async def test_validation(api: Any) -> None:
    alice, _ = await _users(api)
    cases = [
        ({"url": "ftp://x.example/feed"}, "url"),
        ({"url": "not a url"}, "url"),
        ({"url": "https://x.example/f", "type": "podcast"}, "type"),
        ({"url": "https://x.example/f", "fetch_interval_sec": 30}, "fetch_interval_sec"),
        ({"url": "https://x.example/f", "fetch_interval_sec": 90000}, "fetch_interval_sec"),
        ({"url": "https://x.example/f", "config": {"nope": 1}}, "config"),
        ({"url": "https://x.example/f", "type": "site", "config": {"selectors": {"item": "li"}}}, "config"),
        ({"url": "https://x.example/f", "type": "hotlist"}, "config"),
        ({"url": "https://x.example/f", "name": ""}, "name"),
        ({"url": "https://x.example/f", "colour": "red"}, "colour"),
        ({}, "url"),
    ]
    for body, field in cases:
        resp = await api.post("/api/v1/sources", json=body, headers=alice)
        assert resp.status == 422, (body, await resp.text())
        assert resp.content_type == "application/problem+json"
        assert field in {e["field"] for e in (await resp.json())["errors"]}, body
    resp = await api.post("/api/v1/sources", data=b"[1]", headers=alice)
    assert resp.status == 400


async def test_types_and_hotlist_url(api: Any) -> None:
    alice, _ = await _users(api)
    resp = await api.post(
        "/api/v1/sources",
        json={"type": "hotlist", "url": "https://newsnow.example", "config": {"source_id": "weibo"}},
        headers=alice,
    )
    assert resp.status == 201
    hot = await resp.json()
    assert hot["url"] == "https://newsnow.example/api/s?id=weibo" and hot["fetch_interval_sec"] == 1800
    # the API URL itself is the same hot list
    resp = await api.post(
        "/api/v1/sources", json={"type": "hotlist", "url": "https://newsnow.example/api/s?id=weibo"}, headers=alice
    )
    assert resp.status == 200 and (await resp.json())["id"] == hot["id"]
    site = {
        "type": "site",
        "url": "https://site.example/news",
        "fetch_interval_sec": 3600,
        "config": {"selectors": {"item": "li", "title": "a"}, "headers": {"Cookie": "secret=1"}},
    }
    resp = await api.post("/api/v1/sources", json=site, headers=alice)
    assert resp.status == 201
    assert (await resp.json())["config"]["headers"] == {"Cookie": "secret=1"}  # the creator sees their headers
    filtered = await (await api.get("/api/v1/sources?type=site", headers=alice)).json()
    assert [s["type"] for s in filtered["items"]] == ["site"]
    assert (await api.get("/api/v1/sources?type=nope", headers=alice)).status == 400


async def test_tenancy_and_scopes(api: Any) -> None:
    alice, bob = await _users(api)
    src = await (await api.post("/api/v1/sources", json={"url": "https://a.example/feed"}, headers=alice)).json()
    sid = src["id"]
    # bob does not follow it: every route is a 404
    assert (await api.get(f"/api/v1/sources/{sid}", headers=bob)).status == 404
    assert (await api.put(f"/api/v1/sources/{sid}", json={"name": "x"}, headers=bob)).status == 404
    assert (await api.delete(f"/api/v1/sources/{sid}", headers=bob)).status == 404
    assert (await api.post(f"/api/v1/sources/{sid}/enable", headers=bob)).status == 404
    assert (await api.post(f"/api/v1/sources/{sid}/disable", headers=bob)).status == 404
    assert (await api.get("/api/v1/sources/abc", headers=alice)).status == 404
    assert (await (await api.get("/api/v1/sources", headers=bob)).json())["items"] == []
    # scopes
    rt = api.app[RT]
    _, reader = await make_user(rt, "reader@example.com", scopes=["sources:read"])
    _, goals_only = await make_user(rt, "goals@example.com", scopes=["goals"])
    resp = await api.post("/api/v1/sources", json={"url": "https://b.example/feed"}, headers=bearer(reader))
    assert resp.status == 403
    assert (await api.get("/api/v1/sources", headers=bearer(reader))).status == 200
    assert (await api.get("/api/v1/sources", headers=bearer(goals_only))).status == 403
    assert (await api.get("/api/v1/sources")).status == 401


async def test_enable_disable_delete(api: Any) -> None:
    alice, bob = await _users(api)
    rt = api.app[RT]
    sid = (await (await api.post("/api/v1/sources", json={"url": "https://c.example/feed"}, headers=alice)).json())[
        "id"
    ]
    await api.post("/api/v1/sources", json={"url": "https://c.example/feed"}, headers=bob)
    resp = await api.post(f"/api/v1/sources/{sid}/disable", headers=alice)
    assert resp.status == 200 and (await resp.json())["enabled"] is False
    # bob's subscription is untouched
    assert (await (await api.get(f"/api/v1/sources/{sid}", headers=bob)).json())["enabled"] is True
    listed = await (await api.get("/api/v1/sources?enabled=false", headers=alice)).json()
    assert [s["id"] for s in listed["items"]] == [sid]
    assert (await api.delete(f"/api/v1/sources/{sid}", headers=bob)).status == 204
    assert (await api.get(f"/api/v1/sources/{sid}", headers=bob)).status == 404
    # nobody follows it with an enabled subscription: it is not due for fetching
    assert (
        await rt.pool.fetchval(
            "SELECT count(*) FROM sources s WHERE EXISTS (SELECT 1 FROM subscriptions x WHERE x.source_id = s.id "
            "AND x.enabled)"
        )
        == 0
    )
    resp = await api.post(f"/api/v1/sources/{sid}/enable", headers=alice)
    assert (await resp.json())["enabled"] is True
    resp = await api.put(f"/api/v1/sources/{sid}", json={"enabled": False}, headers=alice)
    assert (await resp.json())["enabled"] is False
    assert await rt.pool.fetchval("SELECT count(*) FROM sources") == 1  # unsubscribing never deletes the source


async def test_update_rules(api: Any) -> None:
    alice, bob = await _users(api)
    rt = api.app[RT]
    src = await (await api.post("/api/v1/sources", json={"url": "https://d.example/feed"}, headers=alice)).json()
    sid = src["id"]
    await rt.pool.execute("UPDATE sources SET etag = 'x', error_streak = 3, next_fetch_at = now() + interval '1 day'")
    resp = await api.put(f"/api/v1/sources/{sid}", json={"name": "Dee", "fetch_interval_sec": 600}, headers=alice)
    assert resp.status == 200, await resp.text()
    body = await resp.json()
    assert body["name"] == "Dee" and body["fetch_interval_sec"] == 600 and body["error_streak"] == 3
    row = await rt.pool.fetchrow("SELECT * FROM sources WHERE id = $1", sid)
    assert (row["next_fetch_at"] - row["updated_at"]).total_seconds() <= 601  # rescheduled within the new interval
    resp = await api.put(f"/api/v1/sources/{sid}", json={"url": "https://d.example/feed2"}, headers=alice)
    row = await rt.pool.fetchrow("SELECT * FROM sources WHERE id = $1", sid)
    assert row["url"] == "https://d.example/feed2" and row["etag"] is None and row["error_streak"] == 0
    assert (await api.put(f"/api/v1/sources/{sid}", json={"type": "site"}, headers=alice)).status == 422
    assert (await api.put(f"/api/v1/sources/{sid}", json={"fetch_interval_sec": 5}, headers=alice)).status == 422
    for config in ([["headers", {}]], "x", 3):  # not an object: a field error, never a server error (the fuzz)
        resp = await api.put(f"/api/v1/sources/{sid}", json={"config": config}, headers=alice)
        assert resp.status == 422 and "config" in await resp.text()
    # another source with that URL exists: 409
    await api.post("/api/v1/sources", json={"url": "https://d.example/other"}, headers=alice)
    resp = await api.put(f"/api/v1/sources/{sid}", json={"url": "https://d.example/other"}, headers=alice)
    assert resp.status == 409
    # bob follows it too: only alice (the creator) may change shared settings
    await api.post("/api/v1/sources", json={"url": "https://d.example/feed2"}, headers=bob)
    resp = await api.put(f"/api/v1/sources/{sid}", json={"name": "Bob's"}, headers=bob)
    assert resp.status == 409
    assert (await api.put(f"/api/v1/sources/{sid}", json={"enabled": False}, headers=bob)).status == 200
    # ... and not even alice may repoint the feed bob chose: a new url is a new source
    resp = await api.put(f"/api/v1/sources/{sid}", json={"url": "https://d.example/feed3"}, headers=alice)
    assert resp.status == 409
    assert (await rt.pool.fetchval("SELECT url FROM sources WHERE id = $1", sid)) == "https://d.example/feed2"
    assert (await api.put(f"/api/v1/sources/{sid}", json={"name": "Alice's"}, headers=alice)).status == 200


async def test_a_source_with_headers_is_private_to_the_user_who_set_them(api: Any) -> None:
    """Headers are often credentials: a source carrying them is never shared, so nobody else reads them, gets
    what they fetch, exports them or repoints them at another host."""
    alice, bob = await _users(api)
    body = {"url": "https://e.example/feed", "config": {"headers": {"Authorization": "Bearer s3cret"}}}
    mine = await (await api.post("/api/v1/sources", json=body, headers=alice)).json()
    assert mine["private"] and mine["config"]["headers"] == {"Authorization": "Bearer s3cret"}  # her own: shown
    resp = await api.post("/api/v1/sources", json={"url": "https://e.example/feed"}, headers=bob)
    theirs = await resp.json()
    assert resp.status == 201 and theirs["id"] != mine["id"]  # a shared source of its own, without her headers
    assert theirs["config"] == {} and not theirs["private"]
    assert (await api.get(f"/api/v1/sources/{mine['id']}", headers=bob)).status == 404
    for path in ("/api/v1/sources", "/api/v1/sources/export"):
        assert "s3cret" not in await (await api.get(path, headers=bob)).text()
    # her export keeps the feed, never the header values
    exported = await (await api.get("/api/v1/sources/export", headers=alice)).text()
    assert "https://e.example/feed" in exported and "s3cret" not in exported
    # a third user with headers of their own gets yet another source
    carol = bearer((await make_user(api.app[RT], "carol@example.com"))[1])
    body3 = {"url": "https://e.example/feed", "config": {"headers": {"Authorization": "Bearer other"}}}
    third = await (await api.post("/api/v1/sources", json=body3, headers=carol)).json()
    assert len({mine["id"], theirs["id"], third["id"]}) == 3


async def test_headers_on_a_shared_source_make_it_private_or_are_refused(api: Any) -> None:
    alice, bob = await _users(api)
    shared = await (await api.post("/api/v1/sources", json={"url": "https://s.example/feed"}, headers=alice)).json()
    await api.post("/api/v1/sources", json={"url": "https://s.example/feed"}, headers=bob)
    with_headers = {"config": {"headers": {"X-Api-Key": "k"}}}
    refused = await api.put(f"/api/v1/sources/{shared['id']}", json=with_headers, headers=alice)
    assert refused.status == 409  # bob follows it: it cannot become alice's credentialed feed
    await api.delete(f"/api/v1/sources/{shared['id']}", headers=bob)
    done = await (await api.put(f"/api/v1/sources/{shared['id']}", json=with_headers, headers=alice)).json()
    assert done["private"] and done["config"]["headers"] == {"X-Api-Key": "k"}
    again = await api.post("/api/v1/sources", json={"url": "https://s.example/feed"}, headers=bob)
    assert (await again.json())["id"] != shared["id"] and "X-Api-Key" not in await again.text()


async def test_repointing_drops_headers_someone_else_set(api: Any) -> None:
    rt = api.app[RT]
    alice, bob = await _users(api)
    body = {"url": "https://h.example/feed", "config": {"headers": {"Cookie": "session=1"}}}
    source = await (await api.post("/api/v1/sources", json=body, headers=alice)).json()
    # bob inherits the subscription (e.g. the private source of a user who left, handed over by an operator)
    bob_id = await rt.pool.fetchval("SELECT id FROM users WHERE email = 'bob@example.com'")
    await rt.pool.execute("UPDATE sources SET owner_id = $1 WHERE id = $2", bob_id, source["id"])
    await rt.pool.execute("INSERT INTO subscriptions (user_id, source_id) VALUES ($1, $2)", bob_id, source["id"])
    await api.delete(f"/api/v1/sources/{source['id']}", headers=alice)
    moved = await api.put(f"/api/v1/sources/{source['id']}", json={"url": "https://evil.example/x"}, headers=bob)
    assert moved.status == 200
    config = await rt.pool.fetchval("SELECT config FROM sources WHERE id = $1", source["id"])
    assert "headers" not in config  # alice's cookie never goes to bob's new host


async def test_pagination(api: Any) -> None:
    alice, _ = await _users(api)
    for i in range(5):
        await api.post("/api/v1/sources", json={"url": f"https://p{i}.example/feed"}, headers=alice)
    seen, cursor = [], None
    while True:
        url = "/api/v1/sources?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = await (await api.get(url, headers=alice)).json()
        seen += [s["url"] for s in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert seen == [f"https://p{i}.example/feed" for i in range(5)]
    assert (await api.get("/api/v1/sources?cursor=!!", headers=alice)).status == 400
    assert (await api.get("/api/v1/sources?limit=500", headers=alice)).status == 400


async def test_health_fields_after_a_fetch(api: Any) -> None:
    alice, _ = await _users(api)
    rt = api.app[RT]
    async with FakeFeedServer() as server:
        server.add("/ok.xml", RSS)
        server.add("/bad.xml", "down", status=503, content_type="text/plain")
        ok_id = (await (await api.post("/api/v1/sources", json={"url": server.url("/ok.xml")}, headers=alice)).json())[
            "id"
        ]
        bad_id = (
            await (await api.post("/api/v1/sources", json={"url": server.url("/bad.xml")}, headers=alice)).json()
        )["id"]
        await ingest.run_due(rt)
    good = await (await api.get(f"/api/v1/sources/{ok_id}", headers=alice)).json()
    assert good["name"] == "Fake" and good["last_success_at"] and good["items_24h"] == 1
    assert good["recent_fetches"][0]["status"] == "ok" and good["recent_fetches"][0]["new"] == 1
    bad = await (await api.get(f"/api/v1/sources/{bad_id}", headers=alice)).json()
    assert bad["error_streak"] == 1 and bad["last_error_kind"] == "http_status" and "503" in bad["last_error"]
    assert bad["recent_fetches"][0]["status"] == "error" and bad["last_success_at"] is None


OPML = """<?xml version="1.0" encoding="UTF-8"?>
<opml version="1.0"><head><title>Mine</title></head><body>
  <outline text="Tech" title="Tech">
    <outline text="Feed A" type="rss" xmlUrl="https://a.example/rss"/>
    <outline text="Nested" ><outline text="Feed B" type="rss" xmlurl="https://b.example/atom"/></outline>
  </outline>
  <outline text="Feed A again" type="rss" xmlUrl="https://a.example/rss"/>
  <outline text="Bad" type="rss" xmlUrl="javascript:alert(1)"/>
  <outline text="Bad interval" type="rss" xmlUrl="https://c.example/rss" infosentryInterval="5"/>
  <outline text="Just a link" type="link" url="https://d.example/"/>
</body></opml>"""


async def test_opml_import_export_round_trip(api: Any) -> None:
    alice, bob = await _users(api)
    await api.post("/api/v1/sources", json={"url": "https://b.example/atom"}, headers=alice)
    resp = await api.post("/api/v1/sources/import", data=OPML.encode(), headers=alice)
    assert resp.status == 200, await resp.text()
    report = await resp.json()
    assert [a["url"] for a in report["added"]] == ["https://a.example/rss"]
    assert sorted(s["url"] for s in report["skipped"]) == ["https://a.example/rss", "https://b.example/atom"]
    assert sorted(i["url"] for i in report["invalid"]) == ["https://c.example/rss", "javascript:alert(1)"]
    site = {
        "type": "site",
        "url": "https://s.example/list",
        "fetch_interval_sec": 7200,
        "config": {"selectors": {"item": "li", "title": "a"}, "timezone": "Asia/Shanghai"},
    }
    await api.post("/api/v1/sources", json=site, headers=alice)

    resp = await api.get("/api/v1/sources/export", headers=alice)
    assert resp.status == 200 and resp.content_type == "text/x-opml"
    exported = await resp.read()
    # bob imports alice's export and ends up with the same sources, settings included
    report = await (await api.post("/api/v1/sources/import", data=exported, headers=bob)).json()
    assert len(report["added"]) == 3 and not report["invalid"] and not report["skipped"]
    assert all(not a["new_source"] for a in report["added"])  # the same shared sources
    mine = await (await api.get("/api/v1/sources", headers=alice)).json()
    theirs = await (await api.get("/api/v1/sources", headers=bob)).json()
    assert [s["id"] for s in mine["items"]] == [s["id"] for s in theirs["items"]]
    assert await api.app[RT].pool.fetchval("SELECT count(*) FROM sources") == 3


async def test_opml_import_refuses_bad_documents(api: Any) -> None:
    alice, _ = await _users(api)
    laughs = (
        '<?xml version="1.0"?><!DOCTYPE opml [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;">]>'
        '<opml version="2.0"><body><outline text="&b;" xmlUrl="https://x.example/"/></body></opml>'
    )
    for body, status in ((laughs, 422), ("<html><body/></html>", 422), ("not xml at all <", 422), ("", 400)):
        resp = await api.post("/api/v1/sources/import", data=body.encode(), headers=alice)
        assert resp.status == status, body
    assert await api.app[RT].pool.fetchval("SELECT count(*) FROM sources") == 0
