"""`offload dashboard` from the shell: loopback only by default, read-only without
credentials, and a malformed `--basic-auth` named without echoing the secret."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import httpx

from offload.demo.smtp import free_port
from tests.dashboard.conftest import ROOT, wait_until


def listening_addresses(port: int) -> set[str]:
    """The local addresses of the sockets listening on `port` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


def _database_with_a_job(tmp_path: Path) -> Path:
    """A SQLite broker file holding one job, enqueued by the CLI."""
    db = tmp_path / "o.db"
    subprocess.run(
        [sys.executable, "-m", "offload", "enqueue", "t", "--url", f"sqlite:///{db}"],
        check=True, capture_output=True, cwd=ROOT,
    )  # fmt: skip
    return db


def test_it_binds_to_loopback_and_is_read_only_without_credentials(tmp_path: Path) -> None:
    db = _database_with_a_job(tmp_path)
    port = free_port()
    log = (tmp_path / "dashboard.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "offload", "dashboard", "--url", f"sqlite:///{db}",
         "--port", str(port)],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:

        def up() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(up, "the dashboard to answer")
        assert listening_addresses(port) == {"0100007F"}  # 127.0.0.1, nothing else
        page = httpx.get(f"http://127.0.0.1:{port}/jobs", timeout=5)
        assert "Read-only" in page.text and ">t<" in page.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert f"on http://127.0.0.1:{port}/ (read-only)" in (tmp_path / "dashboard.log").read_text()


def test_a_malformed_basic_auth_is_named_and_not_echoed(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "offload", "dashboard", "--url", f"sqlite:///{tmp_path}/o.db",
         "--basic-auth", "s3cret-without-colon"],
        capture_output=True, text=True, cwd=ROOT, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    assert "USER:PASSWORD" in done.stderr
    assert "s3cret" not in done.stderr + done.stdout


def test_with_a_root_path_the_url_it_prints_answers(tmp_path: Path) -> None:
    """`--root-path /ops` is the prefix a proxy strips: pages are served at / and link
    to /ops/. The startup line printed http://HOST:PORT/ops/, a 404 when opened."""
    db = _database_with_a_job(tmp_path)
    port = free_port()
    log_path = tmp_path / "dashboard.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "offload", "dashboard", "--url", f"sqlite:///{db}",
         "--port", str(port), "--root-path", "/ops"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
    )  # fmt: skip
    try:

        def up() -> bool:
            try:
                return bool(httpx.get(f"http://127.0.0.1:{port}/", timeout=2).status_code)
            except httpx.TransportError:
                return False

        wait_until(up, "the dashboard to answer")
        [printed] = re.findall(r"on (http://\S+)", log_path.read_text())
        page = httpx.get(printed, timeout=5)
        assert page.status_code == 200, printed
        assert 'href="/ops/jobs"' in page.text
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
    assert "/ops/" in log_path.read_text()
