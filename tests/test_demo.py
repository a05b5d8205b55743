"""`infosentry demo`: the real command, offline, in a temp data dir; what it prints, the .eml files it writes, and
that a second run pushes nothing twice."""

from __future__ import annotations

import email
import email.policy
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import psycopg
import pytest

from infosentry import demo


def demo_env(dsn: str, data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SMTP_", "INFOSENTRY_", "DATABASE_"))}
    return env | {
        "DATABASE_URL": dsn,
        "INFOSENTRY_DATA_DIR": str(data_dir),
        "LOG_FORMAT": "text",
        "TZ": "Asia/Shanghai",
    }


def run_demo(dsn: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = demo_env(dsn, data_dir)
    return subprocess.run(
        [sys.executable, "-m", "infosentry", "demo"], env=env, capture_output=True, text=True, timeout=90
    )


@pytest.mark.slow
def test_demo_runs_the_pipeline_offline_and_is_idempotent(dsn: str, tmp_path: Path) -> None:
    first = run_demo(dsn, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    out = first.stdout
    # the crafted items are pushed IMMEDIATE, with their reason
    assert "[IMMEDIATE] 0.9" in out and "NASA launches rocket carrying new Mars rover" in out
    assert "Oil prices jump as OPEC agrees to cut crude output" in out
    assert "mentions 'NASA'" in out and "IMMEDIATE_THRESHOLD" in out
    # back-catalogue items stay out of IMMEDIATE and say why; batch and digest tiers are shown too
    assert "backfill items are never IMMEDIATE" in out and "[BATCH    ]" in out and "[DIGEST   ]" in out
    mail_dir = tmp_path / "demo-mail"
    assert str(mail_dir) in out
    files = sorted(mail_dir.glob("*.eml"))
    kinds = {f.name.split("-", 1)[1].split("_", 1)[0] for f in files}
    assert kinds == {"immediate", "batch", "digest"}
    immediate = next(f for f in files if "-immediate_" in f.name)
    msg = email.message_from_bytes(immediate.read_bytes(), policy=email.policy.default)
    assert msg["Subject"].startswith("[Goal: ") and "new high-priority item" in msg["Subject"]
    assert msg["To"] == "demo@infosentry.local" and "/unsubscribe?token=" in msg["List-Unsubscribe"]
    text = msg.get_body(("plain",)).get_content()
    assert "/r/" in text and "channel=email" in text and "Why:" in text
    assert msg.get_body(("html",)) is not None
    with psycopg.connect(dsn) as conn:
        pushed = conn.execute("SELECT count(*), count(DISTINCT (goal_id, item_id)) FROM notifications").fetchone()
        emails = conn.execute("SELECT count(*) FROM emails WHERE status = 'sent'").fetchone()[0]
    assert pushed[0] == pushed[1] > 5 and emails == len(files)
    # again: nothing new, nothing twice
    second = run_demo(dsn, tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert sorted(mail_dir.glob("*.eml")) == files
    with psycopg.connect(dsn) as conn:
        assert conn.execute("SELECT count(*) FROM notifications").fetchone()[0] == pushed[0]
        assert conn.execute("SELECT count(*) FROM emails").fetchone()[0] == emails
        assert conn.execute("SELECT count(*) FROM sources").fetchone()[0] == len(demo.FEEDS)
        assert conn.execute("SELECT count(*) FROM goals").fetchone()[0] == len(demo.GOALS)
    assert f"{pushed[0]} pushed to the demo goals" in second.stdout


def test_bundled_feeds_are_well_formed() -> None:
    import defusedxml.ElementTree as ET

    for name in demo.FEEDS:
        root = ET.fromstring((demo.data_dir() / name).read_text("utf-8"))
        items = root.findall("./channel/item")
        assert len(items) >= 50
        for item in items:
            assert item.findtext("title") and item.findtext("link").startswith("https://news.example.com/")
            assert item.findtext("pubDate").startswith("MINUTES_AGO:")


def test_titles_split_from_ag_news_rows() -> None:
    row = "ECB Rates Unchanged  FRANKFURT (Reuters) - European Central Bank President kept up his rhetoric."
    assert demo.split_title(row) == ("ECB Rates Unchanged", "European Central Bank President kept up his rhetoric.")
    assert demo.split_title("Storm shows Haiti #39;s straits Muddy waters still occupied the heart") is None


@pytest.mark.slow
def test_demo_serve_ends_by_printing_the_inbox_url_and_serves_it(dsn: str, tmp_path: Path) -> None:
    import http.cookiejar
    import urllib.parse
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "infosentry", "demo", "--serve", "--port", str(port)],
        env=demo_env(dsn, tmp_path) | {"PYTHONFAULTHANDLER": "1"},  # SIGABRT prints every thread's stack
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its own process group, so Ctrl-C can be sent as a terminal does: to all of it
    )
    try:
        lines: list[str] = []
        deadline = time.monotonic() + 90
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            assert line, "".join(lines) + (proc.stderr.read() if proc.stderr else "")
            lines.append(line)
            if line.strip() == f"http://127.0.0.1:{port}/inbox":
                break
        out = "".join(lines)
        assert "NASA launches rocket" in out  # the demo itself ran first
        link = re.search(r"http://127\.0\.0\.1:\d+/api/v1/auth/consume\?token=\S+", out).group(0)
        jar = http.cookiejar.CookieJar()
        opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))
        page = opener.open(link).read().decode()
        csrf = re.search(r'name="csrf" value="([^"]+)"', page).group(1)
        token = link.split("token=")[1]
        body = urllib.parse.urlencode({"csrf": csrf, "token": token}).encode()
        inbox = opener.open(f"http://127.0.0.1:{port}/api/v1/auth/consume", data=body)
        html = inbox.read().decode()
        assert inbox.geturl() == f"http://127.0.0.1:{port}/inbox" and html.count("data-entry") >= 10
        # the demo's instant pushes (the first page holds the newest 50 of every tier)
        html = opener.open(f"http://127.0.0.1:{port}/inbox?tier=immediate").read().decode()
        assert "NASA launches rocket" in html and "Athens Olympic Games" in html
    finally:
        os.killpg(proc.pid, signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)  # drains both pipes while it shuts down
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGABRT)  # where it hangs, on stderr
            try:
                _, err = proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                _, err = proc.communicate()
            raise AssertionError(f"demo --serve still running 30 s after SIGINT; its stderr:\n{err[-8000:]}") from None
    assert proc.returncode == 0, err[-4000:]
    assert "Traceback" not in err, err[-4000:]  # Ctrl-C ends the parse workers quietly too
