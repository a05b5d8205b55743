"""Settings and hot config: every variable documented, values validated, defaults sane."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from infosentry import hotconfig
from infosentry.errors import Invalid
from infosentry.settings import documented_names, load_settings

ROOT = Path(__file__).resolve().parent.parent


def test_every_variable_is_in_env_example() -> None:
    text = (ROOT / ".env.example").read_text()
    documented = set(re.findall(r"^([A-Z_]+)=", text, re.MULTILINE))
    missing = set(documented_names()) - documented
    assert not missing, f".env.example lacks {sorted(missing)}"
    unknown = documented - set(documented_names())
    assert not unknown, f".env.example documents unknown variables {sorted(unknown)}"


def test_env_example_values_load() -> None:
    text = (ROOT / ".env.example").read_text()
    env = dict(re.findall(r"^([A-Z_]+)=(.*)$", text, re.MULTILINE))
    s = load_settings(env)
    assert s.embed_provider == "local"
    assert hotconfig.defaults(s.hot_defaults)["IMMEDIATE_THRESHOLD"] == 0.93


def test_bad_env_values_name_the_variable() -> None:
    with pytest.raises(Invalid, match="SMTP_PORT"):
        load_settings({"SMTP_PORT": "twenty"})
    with pytest.raises(Invalid, match="FETCH_ALLOW_NETWORKS"):
        load_settings({"FETCH_ALLOW_NETWORKS": "127.0.0.0/8,not-a-net"})
    with pytest.raises(Invalid, match="IMMEDIATE_THRESHOLD"):
        hotconfig.defaults({"IMMEDIATE_THRESHOLD": "1.5"})


def test_provider_follows_key() -> None:
    assert load_settings({"OPENAI_API_KEY": "sk-x"}).embed_provider == "openai"
    assert load_settings({"OPENAI_API_KEY": "sk-x", "EMBED_PROVIDER": "local"}).embed_provider == "local"


@pytest.mark.parametrize(
    ("key", "raw", "expected"),
    [
        ("LLM_ENABLED", "false", False),
        ("LLM_ENABLED", True, True),
        ("JUDGE_PER_DAY", "50", 50),
        ("IMMEDIATE_COALESCE_MINUTES", "0.5", 0.5),
        ("DEFAULT_BATCH_WINDOWS", "18:30, 9:05", "09:05,18:30"),
        ("DEFAULT_DIGEST_TIME", "7:00", "07:00"),
    ],
)
def test_parse_value(key: str, raw: object, expected: object) -> None:
    assert hotconfig.parse_value(key, raw) == expected


@pytest.mark.parametrize(
    ("key", "raw"),
    [
        ("NOPE", "1"),
        ("LLM_ENABLED", "maybe"),
        ("JUDGE_PER_DAY", "1.5"),
        ("JUDGE_PER_DAY", True),
        ("BATCH_THRESHOLD", "nan"),
        ("BATCH_THRESHOLD", 2),
        ("DEFAULT_BATCH_WINDOWS", "25:00"),
        ("DEFAULT_BATCH_WINDOWS", "01:00,02:00,03:00,04:00"),
        ("DEFAULT_DIGEST_TIME", 900),
    ],
)
def test_parse_value_rejects(key: str, raw: object) -> None:
    with pytest.raises(Invalid):
        hotconfig.parse_value(key, raw)


def test_threshold_order() -> None:
    values = hotconfig.defaults()
    values["BOUNDARY_LOW"] = 0.95
    with pytest.raises(Invalid, match="BOUNDARY_LOW"):
        hotconfig.check_consistency(values)


def test_secrets_are_not_in_repr() -> None:
    s = load_settings(
        {
            "DATABASE_URL": "postgresql://app:db-s3cret@db.example/app",
            "SECRET_KEY": "key-s3cret",
            "OPENAI_API_KEY": "sk-s3cret",
            "SMTP_PASSWORD": "smtp-s3cret",
        }
    )
    assert s.database_url.endswith("@db.example/app") and s.secret_key == "key-s3cret"
    assert "s3cret" not in repr(s) and "s3cret" not in str(s)
