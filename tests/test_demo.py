"""`infosentry demo`: the real command, offline, in a temp data dir; what it prints, the .eml files it writes, and
that a second run pushes nothing twice."""

from __future__ import annotations

import email
import email.policy
import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from infosentry import demo


def run_demo(dsn: str, data_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "SMTP_", "INFOSENTRY_", "DATABASE_"))}
    env |= {"DATABASE_URL": dsn, "INFOSENTRY_DATA_DIR": str(data_dir), "LOG_FORMAT": "text", "TZ": "Asia/Shanghai"}
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
