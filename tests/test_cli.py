"""The command line in-process (click's CliRunner) against a test database."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from infosentry.cli import main


@pytest.fixture
def cli(dsn: str, tmp_path, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", dsn)
    monkeypatch.setenv("INFOSENTRY_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("LOG_LEVEL", "WARNING")
    runner = CliRunner()

    def invoke(*args: str):
        return runner.invoke(main, list(args), catch_exceptions=False)

    return invoke


def test_user_and_token_lifecycle(cli) -> None:
    result = cli("user", "create", "--email", "Ops@Example.com", "--admin")
    assert result.exit_code == 0, result.output
    assert "ops@example.com (admin)" in result.output
    result = cli("token", "create", "--email", "ops@example.com")
    assert result.exit_code == 0
    token = result.stdout.strip()
    assert token.startswith("isk_") and "\n" not in token  # the token alone
    again = cli("user", "create", "--email", "ops@example.com")
    assert again.exit_code == 1
    assert again.stderr.strip() == "error: user ops@example.com already exists"
    assert cli("token", "revoke", "1").exit_code == 0
    missing = cli("token", "revoke", "1")
    assert missing.exit_code == 1 and "no live token" in missing.stderr


def test_token_scopes(cli) -> None:
    cli("user", "create", "--email", "plain@example.com")
    refused = cli("token", "create", "--email", "plain@example.com", "--scope", "admin")
    assert refused.exit_code == 1 and "admin" in refused.stderr
    unknown = cli("token", "create", "--email", "plain@example.com", "--scope", "everything")
    assert unknown.exit_code == 1 and "unknown scope" in unknown.stderr
    assert cli("token", "create", "--email", "plain@example.com", "--scope", "goals:read").exit_code == 0


def test_config_get_set(cli) -> None:
    result = cli("config", "set", "immediate_enabled", "off")
    assert result.exit_code == 0 and "IMMEDIATE_ENABLED = false" in result.output
    assert cli("config", "get", "IMMEDIATE_ENABLED").output.strip() == "false"
    values = json.loads(cli("config", "get", "--json").output)
    assert values["IMMEDIATE_ENABLED"] is False and values["BATCH_THRESHOLD"] == 0.75
    bad = cli("config", "set", "BATCH_THRESHOLD", "0.99")
    assert bad.exit_code == 1 and "BOUNDARY_LOW" in bad.stderr
    assert cli("config", "set", "NO_SUCH_KEY", "1").exit_code == 1
    table = cli("config", "get").output
    assert "IMMEDIATE_ENABLED" in table and "table" in table and "default" in table


def test_migrate_commands(cli) -> None:
    history = cli("migrate", "history").output
    assert "0001  schema" in history and "pending" not in history
    assert cli("migrate", "status").exit_code == 0
    assert cli("migrate", "down", "--to", "0").exit_code == 0
    assert cli("migrate", "status").exit_code == 1
    assert "pending" in cli("migrate", "history").output
    assert cli("migrate").exit_code == 0
    assert cli("migrate", "status").exit_code == 0


def test_db_uri(cli, dsn: str) -> None:
    assert cli("db", "uri").output.strip() == dsn
