"""Process settings parsed once from the environment (the only module that reads os.environ).

Hot switches and tunables live in the config table (see hotconfig.py); the environment only gives
their initial defaults. Imports nothing of ours but errors.
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path

from infosentry.errors import Invalid

# The offline models: USE-multilingual v3 with WordLlama's token table mixed in (default: Chinese and English in
# one space), USE alone, and all-MiniLM-L6-v2 (English only; kept for English-only installs and as a reference).
LOCAL_MODELS = ("use-multilingual-v3+wordllama", "use-multilingual-v3", "all-MiniLM-L6-v2")


@dataclass(frozen=True)
class Settings:
    database_url: str = field(default="", repr=False)  # may embed the database password
    database_read_url: str = field(default="", repr=False)  # a read replica for the list routes (empty: primary)
    data_dir: Path = Path(".infosentry")
    secret_key: str = field(default="", repr=False)
    public_url: str = "http://127.0.0.1:8000"
    openai_api_key: str = field(default="", repr=False)
    openai_base_url: str = ""
    openai_embed_model: str = "text-embedding-3-small"
    openai_judge_model: str = "gpt-4o-mini"
    embed_provider: str = "local"
    local_embed_model: str = LOCAL_MODELS[0]
    embed_usd_per_mtok: float = 0.02
    judge_usd_per_mtok_in: float = 0.15
    judge_usd_per_mtok_out: float = 0.60
    smtp_host: str = ""
    smtp_port: int = 587
    smtp_user: str = ""
    smtp_password: str = field(default="", repr=False)
    smtp_tls: bool = True
    smtp_ssl: bool = False
    emails_from_email: str = "infosentry@localhost"
    emails_from_name: str = "infosentry"
    admin_email: str = ""
    alert_webhook_url: str = ""
    tz: str = "Asia/Shanghai"
    log_level: str = "INFO"
    log_format: str = "json"
    fetch_allow_networks: tuple[str, ...] = ()
    # peers whose X-Forwarded-For is believed (our reverse proxies); default loopback
    trusted_proxies: tuple[str, ...] = ("127.0.0.0/8", "::1/128")
    fetch_user_agent: str = "infosentry/0.1 (+https://github.com/infosentry)"
    max_body_bytes: int = 1024 * 1024
    worker_concurrency: int = 8
    # initial values of the hot config keys, by key (see hotconfig.KEYS)
    hot_defaults: Mapping[str, str] = field(default_factory=dict, repr=False)


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off", ""):
        return False
    raise Invalid(f"{name} must be true or false, not {raw!r}")


def _int(name: str, raw: str) -> int:
    try:
        return int(raw)
    except ValueError:
        raise Invalid(f"{name} must be an integer, not {raw!r}") from None


def _float(name: str, raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        raise Invalid(f"{name} must be a number, not {raw!r}") from None


def _networks(name: str, raw: str) -> tuple[str, ...]:
    nets = []
    for part in raw.split(","):
        part = part.strip()
        if not part:
            continue
        try:
            nets.append(str(ipaddress.ip_network(part, strict=False)))
        except ValueError:
            raise Invalid(f"{name}: {part!r} is not a network in CIDR notation") from None
    return tuple(nets)


def load_settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Build Settings from the environment; raise Invalid with the variable's name on bad values."""
    from infosentry import hotconfig  # local import: hotconfig imports nothing from here

    env = os.environ if environ is None else environ
    defaults = Settings()

    def get(name: str, default: str) -> str:
        return env.get(name, default)

    api_key = get("OPENAI_API_KEY", "")
    provider = get("EMBED_PROVIDER", "").strip().lower() or ("openai" if api_key else "local")
    if provider not in ("openai", "local"):
        raise Invalid(f"EMBED_PROVIDER must be openai or local, not {provider!r}")
    local_model = get("LOCAL_EMBED_MODEL", "").strip() or defaults.local_embed_model
    if local_model not in LOCAL_MODELS:
        raise Invalid(f"LOCAL_EMBED_MODEL must be one of {', '.join(LOCAL_MODELS)}, not {local_model!r}")
    hot_defaults = {key: env[key] for key in hotconfig.KEYS if env.get(key, "").strip()}

    return Settings(
        database_url=get("DATABASE_URL", "").strip(),
        database_read_url=get("DATABASE_READ_URL", "").strip(),
        data_dir=Path(get("INFOSENTRY_DATA_DIR", str(defaults.data_dir))).expanduser().resolve(),
        secret_key=get("SECRET_KEY", ""),
        public_url=get("PUBLIC_URL", defaults.public_url).rstrip("/"),
        openai_api_key=api_key,
        openai_base_url=get("OPENAI_BASE_URL", ""),
        openai_embed_model=get("OPENAI_EMBED_MODEL", defaults.openai_embed_model),
        openai_judge_model=get("OPENAI_JUDGE_MODEL", defaults.openai_judge_model),
        embed_provider=provider,
        local_embed_model=local_model,
        embed_usd_per_mtok=_float("EMBED_USD_PER_MTOK", get("EMBED_USD_PER_MTOK", "0.02")),
        judge_usd_per_mtok_in=_float("JUDGE_USD_PER_MTOK_IN", get("JUDGE_USD_PER_MTOK_IN", "0.15")),
        judge_usd_per_mtok_out=_float("JUDGE_USD_PER_MTOK_OUT", get("JUDGE_USD_PER_MTOK_OUT", "0.60")),
        smtp_host=get("SMTP_HOST", ""),
        smtp_port=_int("SMTP_PORT", get("SMTP_PORT", "587")),
        smtp_user=get("SMTP_USER", ""),
        smtp_password=get("SMTP_PASSWORD", ""),
        smtp_tls=_bool("SMTP_TLS", get("SMTP_TLS", "true")),
        smtp_ssl=_bool("SMTP_SSL", get("SMTP_SSL", "false")),
        emails_from_email=get("EMAILS_FROM_EMAIL", defaults.emails_from_email),
        emails_from_name=get("EMAILS_FROM_NAME", defaults.emails_from_name),
        admin_email=get("ADMIN_EMAIL", ""),
        alert_webhook_url=get("ALERT_WEBHOOK_URL", ""),
        tz=get("TZ", defaults.tz) or defaults.tz,
        log_level=get("LOG_LEVEL", "INFO").upper(),
        log_format=get("LOG_FORMAT", "json").lower(),
        fetch_allow_networks=_networks("FETCH_ALLOW_NETWORKS", get("FETCH_ALLOW_NETWORKS", "")),
        trusted_proxies=_networks("TRUSTED_PROXIES", get("TRUSTED_PROXIES", "127.0.0.0/8,::1/128")),
        fetch_user_agent=get("FETCH_USER_AGENT", defaults.fetch_user_agent),
        max_body_bytes=_int("MAX_BODY_BYTES", get("MAX_BODY_BYTES", str(defaults.max_body_bytes))),
        worker_concurrency=_int("WORKER_CONCURRENCY", get("WORKER_CONCURRENCY", "8")),
        hot_defaults=hot_defaults,
    )


def documented_names() -> list[str]:
    """Every environment variable load_settings reads (checked against .env.example by a test)."""
    from infosentry import hotconfig

    names = [
        "DATABASE_URL",
        "DATABASE_READ_URL",
        "INFOSENTRY_DATA_DIR",
        "SECRET_KEY",
        "PUBLIC_URL",
        "OPENAI_API_KEY",
        "OPENAI_BASE_URL",
        "OPENAI_EMBED_MODEL",
        "OPENAI_JUDGE_MODEL",
        "EMBED_PROVIDER",
        "LOCAL_EMBED_MODEL",
        "EMBED_USD_PER_MTOK",
        "JUDGE_USD_PER_MTOK_IN",
        "JUDGE_USD_PER_MTOK_OUT",
        "SMTP_HOST",
        "SMTP_PORT",
        "SMTP_USER",
        "SMTP_PASSWORD",
        "SMTP_TLS",
        "SMTP_SSL",
        "EMAILS_FROM_EMAIL",
        "EMAILS_FROM_NAME",
        "ADMIN_EMAIL",
        "ALERT_WEBHOOK_URL",
        "TZ",
        "LOG_LEVEL",
        "LOG_FORMAT",
        "FETCH_ALLOW_NETWORKS",
        "TRUSTED_PROXIES",
        "FETCH_USER_AGENT",
        "MAX_BODY_BYTES",
        "WORKER_CONCURRENCY",
    ]
    assert len(names) == len(fields(Settings)) - 1
    return names + list(hotconfig.KEYS)
