"""The web app in a real browser (headless Chromium from Debian's packages, through Selenium and the packaged
chromedriver), against the real app on 127.0.0.1 and the test database: sign-in through a captured email and
the confirmation page, goal create/edit with suggestions, feedback without a reload, inbox filter and
mark-read, source add with feed discovery, OPML import, the language switch, an admin switch, and a non-admin
refused the admin pages. Every page visited is saved as a screenshot at 390 and 1280 px (tests/screenshots/).

Skipped with one line where Chromium is not installed (bin/test installs it when apt-get is available).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from infosentry import push
from tests.browser import LiveServer, shoot
from tests.fakes.feeds import FakeFeedServer, make_rss
from tests.webkit import SESSION_COOKIE, seed_user

pytestmark = pytest.mark.slow
WAIT = 10


@pytest.fixture
def server(settings: Any, smtp_sink: Any) -> Iterator[LiveServer]:
    live = LiveServer(
        replace(
            settings,
            smtp_host=smtp_sink.host,
            smtp_port=smtp_sink.port,
            smtp_tls=False,
            smtp_ssl=False,
            smtp_user="",
            smtp_password="",
        )
    ).start()
    yield live
    live.stop()


@pytest.fixture
def browser(driver: Any, server: LiveServer) -> Any:
    driver.delete_all_cookies()
    driver.get(server.url + "/login")
    driver.delete_all_cookies()
    return driver


def wait(d: Any, condition: Any, timeout: float = WAIT) -> Any:
    """Until `condition(driver)` is true; elements of the page being replaced by a navigation are retried."""
    from selenium.common.exceptions import NoSuchElementException, StaleElementReferenceException, WebDriverException
    from selenium.webdriver.support.ui import WebDriverWait

    def attempt(driver: Any) -> Any:
        try:
            return condition(driver)
        except WebDriverException as exc:
            # Chromium sometimes reports an element of the document being replaced this way instead of as stale
            if "does not belong to the document" not in str(exc):
                raise
            return False

    ignored = (NoSuchElementException, StaleElementReferenceException)
    return WebDriverWait(d, timeout, ignored_exceptions=ignored).until(attempt)


def ready(d: Any) -> bool:
    """The page is loaded and its script has attached its handlers (clicking earlier would post the plain form)."""
    return bool(
        d.execute_script("return document.readyState === 'complete' && document.documentElement.dataset.js === 'ready'")
    )


def css(d: Any, selector: str) -> Any:
    from selenium.webdriver.common.by import By

    return d.find_element(By.CSS_SELECTOR, selector)


def css_all(d: Any, selector: str) -> list[Any]:
    from selenium.webdriver.common.by import By

    return d.find_elements(By.CSS_SELECTOR, selector)


def sign_in(browser: Any, server: LiveServer, token: str, path: str = "/goals") -> None:
    browser.get(server.url + "/login")
    browser.add_cookie({"name": SESSION_COOKIE, "value": token, "path": "/"})
    browser.get(server.url + path)
    wait(browser, ready)


def seed(server: LiveServer, **kw: Any) -> Any:
    return server.run(seed_user(server.rt, **kw))


def test_sign_in_through_the_emailed_link_and_the_confirmation_page(
    browser: Any, server: LiveServer, smtp_sink: Any
) -> None:
    browser.get(server.url + "/goals")
    assert "/login" in browser.current_url  # nothing but sign-in without a session
    shoot(browser, "login")
    css(browser, "#email").send_keys("new.reader@example.com")
    css(browser, "button[type=submit]").click()
    wait(browser, lambda d: "Check your email" in d.page_source)
    shoot(browser, "login-sent")
    server.run(push.send_due(server.rt))
    mail = smtp_sink.wait_for_sync(1)[0].message
    body = mail.get_body(preferencelist=("plain",)).get_content()
    link = re.search(r"http://127\.0\.0\.1:\d+/api/v1/auth/consume\?token=\S+", body).group(0)
    browser.get(link)  # what a mail scanner does too: it spends nothing
    browser.get(link)
    assert css(browser, "h1").text == "Confirm sign-in"
    assert server.run(server.rt.pool.fetchval("SELECT count(*) FROM users")) == 0
    shoot(browser, "confirm")
    css(browser, "#confirm").click()
    wait(browser, lambda d: d.current_url.endswith("/inbox"))
    cookie = browser.get_cookie(SESSION_COOKIE)
    assert cookie["httpOnly"] and cookie["sameSite"] == "Lax"
    assert css(browser, "h1").text == "Inbox"
    # sign out ends the session
    css(browser, "form[action='/logout'] button").click()
    wait(browser, lambda d: "/login" in d.current_url)
    browser.get(server.url + "/inbox")
    assert "/login" in browser.current_url


def test_goal_create_and_edit_with_suggestions(browser: Any, server: LiveServer) -> None:
    seeded = seed(server)
    sign_in(browser, server, seeded.token, "/goals")
    shoot(browser, "goals")
    css(browser, "a[href='/goals/new']").click()
    wait(browser, ready)
    css(browser, "#description").send_keys("New AI accelerator chips and GPU training")
    chip = wait(browser, lambda d: css_all(d, "#suggestions button[data-term]"))[0]
    shoot(browser, "goal-new")
    term = chip.get_attribute("data-term")
    chip.click()
    assert term in css(browser, "#terms").get_attribute("value")
    css(browser, "#terms").send_keys("\n-rumour")
    css(browser, "#save").click()
    wait(browser, lambda d: re.search(r"/goals/\d+\?msg=created$", d.current_url))
    goal_id = int(re.search(r"/goals/(\d+)", browser.current_url).group(1))
    row = server.run(server.rt.pool.fetchrow("SELECT * FROM goals WHERE id = $1", goal_id))
    assert row["name"] == "New AI accelerator chips and GPU training"
    assert term in row["priority_terms"] and row["negative_terms"] == ["rumour"]
    css(browser, f"a[href='/goals/{goal_id}/edit']").click()
    shoot(browser, "goal-edit")
    name = css(browser, "#name")
    name.clear()
    name.send_keys("AI chips")
    css(browser, "#digest_enabled").click()  # switch the daily digest off
    css(browser, "#save").click()
    wait(browser, lambda d: d.current_url.endswith("?msg=saved"))
    row = server.run(server.rt.pool.fetchrow("SELECT * FROM goals WHERE id = $1", goal_id))
    assert row["name"] == "AI chips" and row["digest_enabled"] is False and row["batch_enabled"] is True
    # the other pages of a goal
    chips = seeded.goal_ids[0]
    for path, name in (
        (f"/goals/{chips}", "goal"),
        (f"/goals/{chips}/preview/digest", "goal-preview"),
        (f"/goals/{chips}/delete", "goal-delete"),
    ):
        browser.get(server.url + path)
        shoot(browser, name)
    browser.get(server.url + f"/goals/{seeded.goal_ids[1]}/preview/batch")
    css(browser, "#send-now").click()
    wait(browser, lambda d: d.current_url.endswith("?msg=sent"))
    browser.get(server.url + f"/goals/{goal_id}/delete")
    css(browser, "#confirm-delete").click()
    wait(browser, lambda d: d.current_url.endswith("/goals?msg=deleted"))
    assert server.run(server.rt.pool.fetchval("SELECT count(*) FROM goals WHERE id = $1", goal_id)) == 0


def test_feedback_without_a_page_reload(browser: Any, server: LiveServer) -> None:
    seeded = seed(server)
    goal = seeded.goal_ids[0]
    sign_in(browser, server, seeded.token, f"/goals/{goal}")
    browser.execute_script("window.__sameDocument = 42")
    form = css_all(browser, "form[data-feedback]")[0]
    item_id = int(form.find_element("css selector", "input[name=item_id]").get_attribute("value"))
    like = form.find_element("css selector", "button[value=like]")
    like.click()
    wait(browser, lambda d: like.get_attribute("aria-pressed") == "true")
    assert browser.execute_script("return window.__sameDocument") == 42  # no reload
    query = "SELECT feedback FROM feedback WHERE goal_id = $1 AND item_id = $2"
    assert server.run(server.rt.pool.fetchval(query, goal, item_id)) == "like"
    form.find_element("css selector", "button[value=block]").click()
    wait(browser, lambda d: form.find_element("css selector", "button[value=block]").get_attribute("disabled"))
    assert server.run(server.rt.pool.fetchval("SELECT count(*) FROM blocked_sources WHERE goal_id = $1", goal)) == 1
    assert browser.execute_script("return window.__sameDocument") == 42
    wait(browser, lambda d: "Source blocked" in css(d, "#live").get_attribute("textContent"))  # announced


def test_inbox_filter_and_mark_read(browser: Any, server: LiveServer) -> None:
    seeded = seed(server, notifications=12)
    sign_in(browser, server, seeded.token, "/inbox")
    assert len(css_all(browser, "[data-entry]")) == 12
    shoot(browser, "inbox")
    shoot(browser, "inbox-top", max_height=1000)  # the README's picture (docs/)
    from selenium.webdriver.support.ui import Select

    Select(css(browser, "#f-goal")).select_by_value(str(seeded.goal_ids[0]))
    Select(css(browser, "#f-status")).select_by_value("unread")
    css(browser, "#apply-filters").click()
    wait(browser, lambda d: "status=unread" in d.current_url)
    wait(browser, ready)
    entries = css_all(browser, "[data-entry]")
    assert len(entries) == 4 and all("unread" in e.get_attribute("class") for e in entries)
    browser.execute_script("window.__sameDocument = 7")
    entries[0].find_element("css selector", "form[data-read] button").click()
    wait(browser, lambda d: "unread" not in entries[0].get_attribute("class"))
    assert browser.execute_script("return window.__sameDocument") == 7
    assert server.run(server.rt.pool.fetchval("SELECT count(*) FROM notifications WHERE read_at IS NULL")) == 7
    css(browser, "#read-all").click()
    wait(browser, lambda d: not css_all(d, "[data-entry]"))
    unread = "SELECT count(*) FROM notifications WHERE read_at IS NULL"
    assert server.run(server.rt.pool.fetchval(unread)) == 4  # the other goal's stay unread
    links = [a.get_attribute("href") for a in css_all(browser, "a.title")]
    browser.get(server.url + "/inbox")
    links = [a.get_attribute("href") for a in css_all(browser, "[data-entry] a.title")]
    assert links and all("/r/" in href and "channel=in_app" in href for href in links)


def test_source_add_with_discovery_and_opml_import(browser: Any, server: LiveServer, tmp_path: Path) -> None:
    seeded = seed(server, notifications=2)
    feeds = server.run(FakeFeedServer().start())
    try:
        feeds.add("/feed.xml", make_rss(5))
        link = f'<link rel="alternate" type="application/rss+xml" href="{feeds.url("/feed.xml")}">'
        page = f"<html><head>{link}</head><body>A blog</body></html>"
        feeds.add("/blog", page.encode(), content_type="text/html; charset=utf-8")
        sign_in(browser, server, seeded.token, "/sources")
        css(browser, "#url").send_keys(feeds.url("/blog"))
        css(browser, "#add-button").click()
        wait(browser, lambda d: "discovered feed" in d.page_source)
        shoot(browser, "sources")
        query = (
            "SELECT url FROM sources s JOIN subscriptions x ON x.source_id = s.id WHERE x.user_id = $1 ORDER BY s.id"
        )
        urls = server.run(server.rt.pool.fetch(query, seeded.user_id))
        assert feeds.url("/feed.xml") in [r["url"] for r in urls]
        # a site with selectors: the fields appear for that type only
        css(browser, "input[name=type][value=site]").click()
        assert css(browser, "#sel_item").is_displayed() and not css(browser, "#source_id").is_displayed()
        # OPML import with a per-line report
        opml = tmp_path / "subs.opml"
        opml.write_text(
            f"""<?xml version="1.0"?><opml version="2.0"><head><title>mine</title></head><body>
            <outline text="Tech"><outline type="rss" text="Feed A" xmlUrl="{feeds.url("/a.xml")}"/>
            <outline type="rss" text="Feed B" xmlUrl="{feeds.url("/b.xml")}"/></outline>
            <outline type="rss" text="Again" xmlUrl="{feeds.url("/feed.xml")}"/>
            <outline type="rss" text="Broken" xmlUrl="ftp://nope.example/feed"/></body></opml>""",
            encoding="utf-8",
        )
        css(browser, "a[href='/sources/import']").click()
        css(browser, "#opml").send_keys(str(opml))
        css(browser, "#import-button").click()
        report = wait(browser, lambda d: css_all(d, "#import-report"))[0]
        assert "2 added, 1 skipped, 1 invalid" in report.text
        assert "Feed A" in report.text and "already subscribed" in report.text
        shoot(browser, "sources-import")
        browser.get(server.url + "/sources")
        shoot(browser, "sources-after-import")
        source_id = seeded.source_id
        browser.get(server.url + f"/sources/{source_id}/delete")
        shoot(browser, "source-delete")
        css(browser, "#confirm-unsubscribe").click()
        wait(browser, lambda d: d.current_url.endswith("/sources?msg=removed"))
    finally:
        server.run(feeds.close())


def test_language_switch(browser: Any, server: LiveServer) -> None:
    seeded = seed(server)
    sign_in(browser, server, seeded.token, "/inbox")
    css(browser, "form[action='/settings/language'] button").click()
    wait(browser, lambda d: css(d, "h1").text == "收件箱")
    assert css(browser, "nav a[href='/goals']").text == "目标"
    assert browser.find_element("css selector", "html").get_attribute("lang") == "zh-CN"
    shoot(browser, "inbox-zh")
    assert server.run(server.rt.pool.fetchval("SELECT language FROM users WHERE id = $1", seeded.user_id)) == "zh"
    browser.get(server.url + "/settings")
    shoot(browser, "settings-zh")
    css(browser, "form[action='/settings/language'] button").click()
    wait(browser, lambda d: css(d, "h1").text == "Settings")
    shoot(browser, "settings")
    # before sign-in the language is a cookie
    browser.delete_all_cookies()
    browser.get(server.url + "/login")
    css(browser, "a[href^='/lang/zh']").click()
    wait(browser, lambda d: css(d, "h1").text == "登录")
    shoot(browser, "login-zh")


def test_an_admin_switch_and_a_non_admin_refused(browser: Any, server: LiveServer) -> None:
    admin = seed(server, email="boss@example.com", admin=True, notifications=0)
    reader = seed(server, email="reader2@example.com", notifications=0)
    sign_in(browser, server, reader.token, "/admin")
    assert "administrators only" in css(browser, "main").text
    assert not css_all(browser, "nav a[href='/admin']")
    shoot(browser, "admin-refused")
    browser.delete_all_cookies()
    sign_in(browser, server, admin.token, "/admin")
    shoot(browser, "admin")
    css(browser, "#toggle-EMAIL_ENABLED").click()
    wait(browser, lambda d: d.current_url.endswith("/admin?msg=saved"))
    assert "Turn on" in css(browser, "#toggle-EMAIL_ENABLED").text
    assert server.run(server.rt.pool.fetchval("SELECT value FROM config WHERE key = 'EMAIL_ENABLED'")) is False
    assert server.run(server.rt.pool.fetchval("SELECT changed_by FROM config_audit")) == "boss@example.com"
    value = css(browser, "#v-BATCH_THRESHOLD")
    value.clear()
    value.send_keys("0.99")  # above IMMEDIATE_THRESHOLD: refused, nothing changed
    css(browser, "#cfg-BATCH_THRESHOLD button[value=set]").click()
    wait(browser, lambda d: css_all(d, "#cfg-BATCH_THRESHOLD .field-error"))
    assert server.run(server.rt.pool.fetchval("SELECT count(*) FROM config WHERE key = 'BATCH_THRESHOLD'")) == 0
    browser.get(server.url + "/admin/status")
    shoot(browser, "admin-status")
    css(browser, "#reset-budget").click()
    wait(browser, lambda d: d.current_url.endswith("?msg=reset"))
