"""The inbox, item, feedback, blocked-source, click and unsubscribe routes, over the real app."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import timedelta

from infosentry import links, push, retention
from infosentry.api.http import RT
from infosentry.runtime import open_runtime
from tests import pushkit as kit
from tests.conftest import bearer, make_user


async def pushed_world(rt):
    """Alice: two goals, three pushed items and one ignored; Bob: one pushed item."""
    await kit.set_hot(rt, LLM_ENABLED=False, IMMEDIATE_COALESCE_MINUTES=0)
    alice, a_token = await make_user(rt, "alice@example.com")
    bob, b_token = await make_user(rt, "bob@example.com")
    a_src = await kit.source(rt, alice, "Alice wire")
    b_src = await kit.source(rt, bob, "Bob wire")
    g1 = await kit.goal(rt, alice, "Chips", batch_windows=[])
    g2 = await kit.goal(rt, alice, "Batteries", batch_windows=[])
    gb = await kit.goal(rt, bob, "Bob goal", batch_windows=[])
    items = {}
    for name, goal, src, score in [
        ("a1", g1, a_src, 0.97),
        ("a2", g1, a_src, 0.98),
        ("a3", g2, a_src, 0.99),
        ("ignored", g1, a_src, 0.0),
        ("b1", gb, b_src, 0.97),
    ]:
        items[name] = await kit.item(rt, src, f"Title {name}", url=f"https://example.org/{name}")
        gate = "negative_term" if name == "ignored" else None
        await kit.match(rt, goal, items[name], score, gate=gate, components={"ungated_score": 0.9} if gate else None)
    await kit.decide_all(rt)
    await push.flush(rt)
    return {
        "alice": (alice, a_token),
        "bob": (bob, b_token),
        "goals": (g1, g2, gb),
        "items": items,
        "sources": (a_src, b_src),
    }


async def test_inbox_lists_pushed_items_only_with_reasons_and_pages(api) -> None:
    rt = api.app[RT]
    w = await pushed_world(rt)
    (_, token), (g1, g2, _) = w["alice"], w["goals"]
    resp = await api.get("/api/v1/notifications", headers=bearer(token))
    assert resp.status == 200
    body = await resp.json()
    titles = [n["item"]["title"] for n in body["items"]]
    # newest first (Batteries was flushed last); the ignored item is not there
    assert titles[0] == "Title a3" and sorted(titles) == ["Title a1", "Title a2", "Title a3"]
    first = body["items"][0]
    assert first["tier"] == "IMMEDIATE" and first["goal_name"] == "Batteries"
    assert first["reason"] and "THRESHOLD" not in first["reason"]  # why it matched, for a reader
    assert first["item"]["source_name"] == "Alice wire" and first["item"]["url"] == "https://example.org/a3"
    assert first["click_url"] == (await links.signer(rt)).click_url(w["items"]["a3"], g2, "in_app")
    assert first["read_at"] is None and first["score"] > 0.98
    page1 = await (await api.get("/api/v1/notifications?limit=2", headers=bearer(token))).json()
    assert len(page1["items"]) == 2 and page1["next_cursor"]
    page2 = await (
        await api.get(f"/api/v1/notifications?limit=2&cursor={page1['next_cursor']}", headers=bearer(token))
    ).json()
    assert [n["item"]["title"] for n in page2["items"]] == titles[2:] and page2["next_cursor"] is None
    only_g1 = await (await api.get(f"/api/v1/notifications?goal_id={g1}", headers=bearer(token))).json()
    assert {n["goal_id"] for n in only_g1["items"]} == {g1} and len(only_g1["items"]) == 2
    # mark read, filter by status; another user's notification is a 404
    resp = await api.post(f"/api/v1/notifications/{first['id']}/read", headers=bearer(token))
    assert resp.status == 200 and (await resp.json())["read_at"]
    read = await (await api.get("/api/v1/notifications?status=read", headers=bearer(token))).json()
    unread = await (await api.get("/api/v1/notifications?status=unread", headers=bearer(token))).json()
    assert [n["id"] for n in read["items"]] == [first["id"]] and len(unread["items"]) == 2
    bob_token = w["bob"][1]
    bob_list = await (await api.get("/api/v1/notifications", headers=bearer(bob_token))).json()
    assert [n["item"]["title"] for n in bob_list["items"]] == ["Title b1"]
    assert (await api.post(f"/api/v1/notifications/{first['id']}/read", headers=bearer(bob_token))).status == 404
    assert (await api.get("/api/v1/notifications?status=new", headers=bearer(token))).status == 400
    assert (await api.get("/api/v1/notifications?cursor=!!", headers=bearer(token))).status == 400


async def test_items_are_visible_only_to_their_goals_or_followers(api) -> None:
    rt = api.app[RT]
    w = await pushed_world(rt)
    token, bob_token = w["alice"][1], w["bob"][1]
    a1 = w["items"]["a1"]
    resp = await api.get(f"/api/v1/items/{a1}", headers=bearer(token))
    assert resp.status == 200
    body = await resp.json()
    assert body["title"] == "Title a1" and body["goals"][0]["tier"] == "IMMEDIATE"
    assert body["goals"][0]["decision_status"] == "pushed" and body["goals"][0]["notification_id"]
    assert (await api.get(f"/api/v1/items/{a1}", headers=bearer(bob_token))).status == 404
    assert (await api.get("/api/v1/items/999999", headers=bearer(token))).status == 404
    # an item of a followed source that matched no goal is visible too
    loose = await kit.item(rt, w["sources"][0], "Unmatched")
    assert (await api.get(f"/api/v1/items/{loose}", headers=bearer(token))).status == 200


async def test_feedback_like_dislike_undo(api) -> None:
    rt = api.app[RT]
    w = await pushed_world(rt)
    token, (g1, g2, gb) = w["alice"][1], w["goals"]
    a1 = w["items"]["a1"]
    url = f"/api/v1/items/{a1}/feedback"
    resp = await api.post(url, json={"goal_id": g1, "feedback": "like"}, headers=bearer(token))
    assert resp.status == 200 and (await resp.json())["feedback"] == "like"
    await api.post(url, json={"goal_id": g1, "feedback": "dislike"}, headers=bearer(token))
    assert (
        await rt.pool.fetchval("SELECT feedback FROM feedback WHERE goal_id = $1 AND item_id = $2", g1, a1) == "dislike"
    )
    inbox = await (await api.get(f"/api/v1/notifications?goal_id={g1}", headers=bearer(token))).json()
    assert {n["item"]["id"]: n["feedback"] for n in inbox["items"]}[a1] == "dislike"
    assert (await api.delete(f"{url}?goal_id={g1}", headers=bearer(token))).status == 204
    assert (await api.delete(f"{url}?goal_id={g1}", headers=bearer(token))).status == 404
    assert await rt.pool.fetchval("SELECT count(*) FROM feedback") == 0
    # validation, and goals or items that are not the caller's
    bad = await api.post(url, json={"goal_id": g1, "feedback": "love"}, headers=bearer(token))
    assert bad.status == 422 and (await bad.json())["errors"][0]["field"] == "feedback"
    assert (await api.post(url, json={"goal_id": g1}, headers=bearer(token))).status == 422
    assert (await api.post(url, json={"feedback": "like"}, headers=bearer(token))).status == 422
    assert (await api.post(url, json={"goal_id": gb, "feedback": "like"}, headers=bearer(token))).status == 404
    # an item the goal lists without a stored pair (its owner follows the source) can be rated; once she no
    # longer follows it, an item that only reached her other goal cannot be rated for this one
    other = f"/api/v1/items/{w['items']['a3']}/feedback"
    assert (await api.post(other, json={"goal_id": g1, "feedback": "like"}, headers=bearer(token))).status == 200
    assert (await api.delete(f"{other}?goal_id={g1}", headers=bearer(token))).status == 204
    await rt.pool.execute("UPDATE subscriptions SET enabled = false WHERE source_id = $1", w["sources"][0])
    assert (await api.post(other, json={"goal_id": g1, "feedback": "like"}, headers=bearer(token))).status == 404
    assert (await api.post(other, json={"goal_id": g2, "feedback": "like"}, headers=bearer(token))).status == 200


async def test_block_source_cancels_pending_at_once_and_can_be_undone(api) -> None:
    rt = api.app[RT]
    w = await pushed_world(rt)
    token, (g1, _, _), (a_src, _) = w["alice"][1], w["goals"], w["sources"]
    await kit.set_hot(rt, IMMEDIATE_COALESCE_MINUTES=5)
    waiting = await kit.item(rt, a_src, "Waiting in the coalescing window")
    await kit.match(rt, g1, waiting, 0.99)
    await kit.decide_all(rt)
    resp = await api.post(
        f"/api/v1/items/{w['items']['a1']}/feedback", json={"goal_id": g1, "block_source": True}, headers=bearer(token)
    )
    assert resp.status == 200
    body = await resp.json()
    assert body["blocked_source"] == {"source_id": a_src, "source_name": "Alice wire"} and body["cancelled"] == 1
    assert body["feedback"] is None
    assert (await push.flush(rt, push.utcnow() + timedelta(minutes=10))).immediate == 0
    assert await rt.pool.fetchval("SELECT status FROM decisions WHERE item_id = $1", waiting) == "cancelled"
    listed = await (await api.get(f"/api/v1/goals/{g1}/blocked_sources", headers=bearer(token))).json()
    assert [b["source_id"] for b in listed["items"]] == [a_src]
    # a new item from the blocked source is not pushed either (the decide step sees the block)
    later = await kit.item(rt, a_src, "After the block")
    await kit.match(rt, g1, later, 0.99)
    await kit.decide_all(rt)
    assert await rt.pool.fetchval("SELECT tier FROM decisions WHERE item_id = $1", later) == "IGNORE"
    # unblock: the next item is pushed again
    assert (await api.delete(f"/api/v1/goals/{g1}/blocked_sources/{a_src}", headers=bearer(token))).status == 204
    assert (await api.delete(f"/api/v1/goals/{g1}/blocked_sources/{a_src}", headers=bearer(token))).status == 404
    fresh = await kit.item(rt, a_src, "After the unblock")
    await kit.match(rt, g1, fresh, 0.99)
    await kit.decide_all(rt)
    assert (await push.flush(rt, push.utcnow() + timedelta(minutes=10))).immediate == 1
    bob_token = w["bob"][1]
    assert (await api.get(f"/api/v1/goals/{g1}/blocked_sources", headers=bearer(bob_token))).status == 404


async def test_click_links_are_signed_and_redirect_only_to_the_items_own_url(api) -> None:
    rt = api.app[RT]
    w = await pushed_world(rt)
    a1, a2, g1 = w["items"]["a1"], w["items"]["a2"], w["goals"][0]
    signer = await links.signer(rt)
    signed = signer.click_url(a1, g1, "email").removeprefix(rt.settings.public_url)
    browser = {"User-Agent": "Mozilla/5.0 (X11; Linux x86_64) Firefox/128.0"}
    resp = await api.get(signed + "&url=https://evil.example/", allow_redirects=False, headers=browser)
    assert resp.status == 302 and resp.headers["Location"] == "https://example.org/a1"
    resp = await api.head(signed, allow_redirects=False, headers=browser)
    assert resp.status == 302
    # unsigned, altered (another item, goal or channel under the same signature), or forged: 404, nothing stored
    forged = [
        f"/r/{a1}?goal_id={g1}&channel=email",
        signed.replace(f"/r/{a1}?", f"/r/{a2}?"),
        signed.replace(f"goal_id={g1}", f"goal_id={w['goals'][1]}"),
        signed.replace("channel=email", "channel=in_app"),
        signed[:-1] + ("0" if signed[-1] != "0" else "1"),
        f"/r/{a1}?goal_id={g1}&channel=email&sig=%C3%A9t%C3%A9",
    ]
    for path in forged:
        assert (await api.get(path, allow_redirects=False, headers=browser)).status == 404, path
    clicks = await rt.pool.fetch("SELECT * FROM clicks ORDER BY id")
    # the HEAD in the same minute as the GET is the same click: counted once
    assert [(c["goal_id"], c["channel"], c["is_scanner"]) for c in clicks] == [(g1, "email", False)]
    scanner = signer.click_url(a2, g1, "email").removeprefix(rt.settings.public_url)
    resp = await api.get(scanner, allow_redirects=False, headers={"User-Agent": "Barracuda Sentinel (EE)"})
    assert resp.status == 302
    assert await rt.pool.fetchval("SELECT is_scanner FROM clicks WHERE item_id = $1", a2) is True
    assert (await api.get("/r/999999", allow_redirects=False)).status == 404
    assert (await api.get("/r/abc", allow_redirects=False)).status == 404
    evil = await kit.item(rt, w["sources"][0], "Evil", url="javascript:alert(1)")
    await kit.match(rt, g1, evil, 0.5)
    evil_link = signer.click_url(evil, g1, "email").removeprefix(rt.settings.public_url)
    assert (await api.get(evil_link, allow_redirects=False)).status == 404


async def test_old_clicks_are_pruned(api) -> None:
    rt = api.app[RT]
    w = await pushed_world(rt)
    await rt.pool.execute(
        """INSERT INTO clicks (item_id, goal_id, channel, clicked_at, minute)
           SELECT $1, $2, 'email', now() - make_interval(days => d), d FROM generate_series(1, 200) d""",
        w["items"]["a1"],
        w["goals"][0],
    )
    assert (await retention.prune(rt)).clicks == 111  # 90 days old and older (90..200)
    assert await rt.pool.fetchval("SELECT max(minute) FROM clicks") == 89


async def test_unsubscribe_get_confirms_post_pauses(api) -> None:
    rt = api.app[RT]
    w = await pushed_world(rt)
    g1, g2, _ = w["goals"]
    mail = next(m for m in await kit.emails(rt) if m["goal_id"] == g1)
    link = re.search(r"<([^>]+)>", mail["headers"]["List-Unsubscribe"]).group(1)
    path = link.removeprefix(rt.settings.public_url)
    resp = await api.get(path)
    assert resp.status == 200 and '<form method="post"' in await resp.text()
    assert await rt.pool.fetchval("SELECT status FROM goals WHERE id = $1", g1) == "active"  # GET changed nothing
    assert (await api.get(path[:-4] + "0000")).status == 404
    assert (await api.get(f"/api/v1/goals/{g1}/unsubscribe?token=%C3%A9t%C3%A9")).status == 404
    assert (await api.post(f"/api/v1/goals/{g2}/unsubscribe?token={path.rsplit('=', 1)[1]}")).status == 404
    resp = await api.post(
        path, data="List-Unsubscribe=One-Click", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert resp.status == 200 and "paused" in await resp.text()
    assert await rt.pool.fetchval("SELECT status FROM goals WHERE id = $1", g1) == "paused"
    assert await rt.pool.fetchval("SELECT status FROM goals WHERE id = $1", g2) == "active"
    # the combined-digest link pauses every goal of the user
    alice = w["alice"][0]
    user_link = (await links.signer(rt)).unsubscribe_url("user", alice)
    user_path = user_link.removeprefix(rt.settings.public_url)
    assert (await api.get(user_path)).status == 200
    assert (await api.post(user_path)).status == 200
    assert await rt.pool.fetchval("SELECT count(*) FROM goals WHERE user_id = $1 AND status = 'active'", alice) == 0


async def test_retention_forgets_what_nobody_needs_and_keeps_the_inbox(api) -> None:
    """Items nobody was sent or rated go after RETENTION_ITEMS_DAYS (with their matches and runs); items in an
    inbox stay until RETENTION_INBOX_DAYS; logs, runs and finished emails go after RETENTION_LOGS_DAYS."""
    rt = api.app[RT]
    w = await pushed_world(rt)
    pushed = await rt.pool.fetchval("SELECT item_id FROM notifications LIMIT 1")
    stale = await kit.item(rt, w["sources"][0], "Nobody cared")
    await kit.match(rt, w["goals"][0], stale, 0.3)
    await rt.pool.execute("UPDATE items SET ingested_at = now() - interval '40 days'")
    await rt.pool.execute("UPDATE emails SET created_at = now() - interval '10 days'")
    await rt.pool.execute("UPDATE agent_runs SET created_at = now() - interval '10 days'")
    before = await rt.pool.fetchval("SELECT count(*) FROM items")
    pruned = await retention.prune(rt)
    kept = {r["id"] for r in await rt.pool.fetch("SELECT id FROM items")}
    assert pushed in kept and stale not in kept and pruned.items == before - len(kept)
    assert await rt.pool.fetchval("SELECT count(*) FROM matches WHERE item_id = $1", stale) == 0
    assert pruned.emails > 0 and await rt.pool.fetchval("SELECT count(*) FROM emails") == 0
    assert pruned.runs > 0 and await rt.pool.fetchval("SELECT count(*) FROM agent_runs") == 0
    assert await rt.pool.fetchval("SELECT count(*) FROM notifications") > 0  # the inbox outlives its emails
    await kit.set_hot(rt, RETENTION_INBOX_DAYS=35)
    await retention.prune(rt)
    assert await rt.pool.fetchval("SELECT count(*) FROM items") == 0


async def test_secret_key_signs_the_links_and_links_signed_before_it_stay_valid(rt, settings) -> None:
    before = await links.signer(rt)  # no SECRET_KEY: the database's key
    old_link = before.click_url(1, 2, "email")
    sig = lambda url: url.rsplit("sig=", 1)[1]  # noqa: E731
    async with open_runtime(replace(settings, secret_key="k" * 32)) as keyed_rt:
        keyed = await links.signer(keyed_rt)
        new_link = keyed.click_url(1, 2, "email")
        assert sig(new_link) != sig(old_link)  # signed with SECRET_KEY
        assert keyed.check_click(1, 2, "email", sig(new_link)) and keyed.check_click(1, 2, "email", sig(old_link))
    assert not before.check_click(1, 2, "email", sig(new_link))  # without that key, its links mean nothing
    async with open_runtime(replace(settings, secret_key="another key entirely")) as other_rt:
        other = await links.signer(other_rt)
        assert not other.check_click(1, 2, "email", sig(new_link))
        assert not other.check_unsubscribe("goal", 2, keyed.unsubscribe_url("goal", 2).rsplit("token=", 1)[1])
