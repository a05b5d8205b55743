"""The embedded database as a user meets it: real processes on one data dir (no DATABASE_URL)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import psutil
import pytest

pytestmark = pytest.mark.slow


def _env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "DATABASE_URL"}
    env.update(INFOSENTRY_DATA_DIR=str(data_dir), LOG_LEVEL="WARNING")
    return env


def _cli(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infosentry", *args], env=_env(data_dir), capture_output=True, text=True, timeout=60
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_healthy(port: int, timeout: float = 30) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as resp:
                if resp.status == 200:
                    return time.monotonic() - started
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"service on port {port} did not become healthy")


def _postmasters(data_dir: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmd = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and "-D" in cmd and str(data_dir / "pg") in cmd:
            found.append(proc)
    return found


def _serve(data_dir: Path, port: int, role: str = "all") -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "infosentry", "serve", "--role", role, "--port", str(port)],
        env=_env(data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_processes_share_one_server_and_survive_kill9(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert _cli(data_dir, "migrate").returncode == 0
    port = _free_port()
    serve = _serve(data_dir, port)
    try:
        _wait_healthy(port)
        assert len(_postmasters(data_dir)) == 1
        # a second process on the same data dir reuses the running server and leaves it running
        result = _cli(data_dir, "config", "set", "EMAIL_ENABLED", "false")
        assert result.returncode == 0, result.stderr
        assert len(_postmasters(data_dir)) == 1
        _wait_healthy(port, timeout=2)

        serve.send_signal(signal.SIGKILL)
        serve.wait(10)
        serve = _serve(data_dir, port)
        took = _wait_healthy(port)
        assert took < 20
        assert len(_postmasters(data_dir)) == 1
        assert _cli(data_dir, "config", "get", "EMAIL_ENABLED").stdout.strip() == "false"
    finally:
        serve.send_signal(signal.SIGTERM)
        code = serve.wait(30)
    assert code == 0, serve.stderr.read() if serve.stderr else ""
    # the last process to leave stops the embedded server (no stray postmaster)
    deadline = time.monotonic() + 10
    while _postmasters(data_dir) and time.monotonic() < deadline:
        time.sleep(0.2)
    leftovers = _postmasters(data_dir)
    for proc in leftovers:  # never leave a server behind, even when the assertion fails
        proc.kill()


def test_roles_refuse_a_schema_that_is_behind(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    assert _cli(data_dir, "migrate", "up", "--to", "1").returncode == 0
    result = _cli(data_dir, "config", "get")
    assert result.returncode != 0
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert lines == [lines[0]] and "infosentry migrate" in lines[0]
    proc = subprocess.run(
        [sys.executable, "-m", "infosentry", "worker"], env=_env(data_dir), capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0 and "run 'infosentry migrate'" in proc.stderr


LEAKY_SESSION = """
import os, signal, subprocess, sys
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

ATTACH = "import sys, time; from pathlib import Path; from infosentry import db; "\\
         "db.embedded_server_uri(Path(sys.argv[1])); print('up', flush=True); time.sleep(60)"

def test_a_helper_process_attached_to_the_server_is_killed(pg_base_uri):
    pgdata = Path(parse_qs(urlsplit(pg_base_uri).query)["host"][0])  # the server's socket lives in its data dir
    Path(os.environ["LEAK_PGDATA_FILE"]).write_text(str(pgdata))
    child = subprocess.Popen([sys.executable, "-c", ATTACH, str(pgdata.parent)], stdout=subprocess.PIPE, text=True)
    assert child.stdout.readline().strip() == "up"
    child.send_signal(signal.SIGKILL)  # it never detaches
    child.wait()
"""


INTERRUPTED_SESSION = """
import os, time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

def test_a_long_test(pg_base_uri):
    pgdata = Path(parse_qs(urlsplit(pg_base_uri).query)["host"][0])
    Path(os.environ["LEAK_PGDATA_FILE"]).write_text(str(pgdata))
    time.sleep(120)  # the run is stopped from outside meanwhile
"""


def test_an_interrupted_suite_stops_its_server(tmp_path: Path) -> None:
    """A run ended by SIGTERM (a CI timeout, a supervisor) or Ctrl-C leaves no embedded Postgres behind."""
    (tmp_path / "test_interrupted.py").write_text(INTERRUPTED_SESSION)
    marker = tmp_path / "pgdata.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("INFOSENTRY_TEST_PG", "DATABASE_URL")}
    env.update(LEAK_PGDATA_FILE=str(marker), TMPDIR=str(tmp_path))
    run = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            "--rootdir",
            str(tmp_path),
            "-o",
            "addopts=",
            str(tmp_path / "test_interrupted.py"),
        ],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and time.monotonic() < deadline and run.poll() is None:
            time.sleep(0.2)
        assert marker.exists(), "the inner test never started"
        pgdata = Path(marker.read_text())
        assert _postmasters(pgdata.parent), "the server was not running during the test"
        run.send_signal(signal.SIGTERM)
        run.wait(timeout=60)
    finally:
        if run.poll() is None:
            run.kill()
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _postmasters(pgdata.parent):
        time.sleep(0.2)
    leftovers = _postmasters(pgdata.parent)
    for proc in leftovers:
        proc.kill()
    assert leftovers == []


def test_the_suite_stops_every_server_it_started(tmp_path: Path) -> None:
    """After a test session ends (here one whose helper process was SIGKILLed while attached to the server),
    no embedded Postgres of that session is left running."""
    (tmp_path / "test_leaky.py").write_text(LEAKY_SESSION)
    marker = tmp_path / "pgdata.txt"
    env = {k: v for k, v in os.environ.items() if k not in ("INFOSENTRY_TEST_PG", "DATABASE_URL")}
    env.update(LEAK_PGDATA_FILE=str(marker), TMPDIR=str(tmp_path))
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "tests.conftest",
            "--rootdir",
            str(tmp_path),
            "-o",
            "addopts=",
            str(tmp_path / "test_leaky.py"),
        ],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    pgdata = Path(marker.read_text())
    assert str(pgdata).startswith(str(tmp_path)) and pgdata.name == "pg"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and _postmasters(pgdata.parent):
        time.sleep(0.2)
    leftovers = _postmasters(pgdata.parent)
    for proc in leftovers:  # never leave a server behind, even when the assertion fails
        proc.kill()
    assert leftovers == []
