"""What the CLI prints for bad or secret-bearing URLs: one clear line, no password,
no traceback, and nothing created by a command that only reads."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

SECRET = "cli-s3cret-pw"

COMMANDS = [
    ("status",),
    ("status", "--json"),
    ("jobs",),
    ("show", "nope"),
    ("dlq", "list"),
    ("cancel", "nope"),
    ("enqueue", "emails.send"),
    ("migrate",),
]


def offload(cwd: Path, *args: str, url: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "offload", *args],
        env={**os.environ, "OFFLOAD_URL": url},
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("args", COMMANDS, ids=" ".join)
@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@127.0.0.1:1",  # nothing listens: BrokerUnavailable
        f"redis://:{SECRET}@127.0.0.1:1/0?prefix=p",
        f"postgresql://u:{SECRET}@127.0.0.1:1/db",
        f"redis://:{SECRET}@127.0.0.1:notaport/0",
        f"postgresql://u:{SECRET}@[::1/db",
    ],
    ids=["redis-down", "redis-down-path", "postgres-down", "bad-port", "bad-host"],
)
def test_no_command_prints_the_password_or_a_traceback(
    tmp_path: Path, args: tuple[str, ...], url: str
) -> None:
    done = offload(tmp_path, *args, url=url)
    output = done.stdout + done.stderr
    assert SECRET not in output
    assert "Traceback" not in output
    if args != ("migrate",) or "postgres" in url:
        assert done.returncode == 1, output


@pytest.mark.parametrize("args", [a for a in COMMANDS if a[0] not in ("enqueue", "migrate")])
def test_a_command_that_reads_refuses_a_missing_database(
    tmp_path: Path, args: tuple[str, ...]
) -> None:
    done = offload(tmp_path, *args, url="sqlite:///typo/offload.db")
    assert done.returncode == 1
    assert "no such database" in done.stderr
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize("args", [a for a in COMMANDS if a[0] not in ("enqueue", "migrate")])
@pytest.mark.parametrize(
    "url",
    [
        "amqp://guest:guest@127.0.0.1:1/?state=sqlite:///typo/offload.db",
        "sqs://k:s@127.0.0.1:1/?region=us-east-1&state=sqlite%3A%2F%2F%2Ftypo%2Foffload.db",
    ],
    ids=["amqp", "sqs"],
)
def test_a_command_that_reads_refuses_a_missing_state_store_database(
    tmp_path: Path, args: tuple[str, ...], url: str
) -> None:
    done = offload(tmp_path, *args, url=url)
    assert done.returncode == 1
    assert "no such database" in done.stderr, done.stderr
    assert not (tmp_path / "typo").exists()


def test_enqueue_creates_the_database(tmp_path: Path) -> None:
    done = offload(tmp_path, "enqueue", "emails.send", url="sqlite:///new/offload.db")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "new" / "offload.db").exists()


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_a_worker_whose_broker_is_down_never_logs_the_password(
    tmp_path: Path, log_format: str
) -> None:
    (tmp_path / "pwapp.py").write_text(
        "from offload import Offload\napp = Offload()\n@app.task\ndef ok() -> None: ...\n"
    )
    url = f"redis://:{SECRET}@127.0.0.1:1"
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "offload", "worker", "pwapp:app", "--log-format", log_format],
            env={**os.environ, "OFFLOAD_URL": url, "OFFLOAD_LOG_LEVEL": "debug"},
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:  # it names the broker it cannot reach, then exits or waits for it to come back
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            if "127.0.0.1:1" in log.read_text():
                time.sleep(1)  # what it logs next (a traceback, a retry) is checked too
                break
            time.sleep(0.1)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    output = log.read_text()
    assert "127.0.0.1:1" in output
    assert SECRET not in output
