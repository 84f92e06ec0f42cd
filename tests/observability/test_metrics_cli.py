"""`offload worker --metrics-port` as one process (no supervisor), and the errors an
operator gets for a taken port or a missing extra: one line, no traceback."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import urllib.request
from pathlib import Path

from offload import JobState, Offload
from tests.integration.test_worker_process import stop_all, wait_for
from tests.observability.test_prometheus import free_port

APP = textwrap.dedent(
    """
    from offload import Offload

    app = Offload()

    @app.task(name="ok")
    def ok() -> None: ...
    """
)


def _env(tmp_path: Path) -> dict[str, str]:
    (tmp_path / "oneapp.py").write_text(APP)
    env = {**os.environ, "OFFLOAD_URL": f"sqlite:///{tmp_path / 'b.db'}"}
    env["PYTHONPATH"] = str(tmp_path)
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    return env


def _scrape(port: int) -> str:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            return str(r.read().decode())
    except OSError:
        return ""


def test_a_single_worker_serves_its_own_metrics(tmp_path: Path) -> None:
    env = _env(tmp_path)
    app = Offload(env["OFFLOAD_URL"])
    port = free_port()
    jobs = [app.enqueue("ok") for _ in range(3)]
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", "oneapp:app", "--poll", "0.05",
         "--metrics-port", str(port)],
        env=env, cwd=tmp_path,
    )  # fmt: skip
    try:
        wait_for(lambda: all(app.job(j.id).state() is JobState.SUCCEEDED for j in jobs))
        line = 'offload_jobs_finished_total{outcome="succeeded",queue="default",task="ok"} 3.0'
        wait_for(lambda: line in _scrape(port))
    finally:
        stop_all([worker], timeout=20)
        app.close()


def test_a_taken_metrics_port_is_one_line(tmp_path: Path) -> None:
    env = _env(tmp_path)
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "offload", "worker", "oneapp:app",
             "--metrics-port", str(port)],
            env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith(f"error: cannot serve metrics on 0.0.0.0:{port}: ")
    assert "Traceback" not in done.stderr


def test_metrics_listen_on_the_address_metrics_bind_names(tmp_path: Path) -> None:
    """`--metrics-bind 127.0.0.2` (any loopback address other than 127.0.0.1 will do):
    the metrics answer there and not on 127.0.0.1; the default is every address."""
    env = _env(tmp_path)
    port = free_port()
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", "oneapp:app", "--poll", "0.05",
         "--metrics-port", str(port), "--metrics-bind", "127.0.0.2"],
        env=env, cwd=tmp_path,
    )  # fmt: skip
    try:

        def answers(host: str) -> bool:
            try:
                with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as r:
                    return bool(r.status == 200)
            except OSError:
                return False

        wait_for(lambda: answers("127.0.0.2"))
        assert not answers("127.0.0.1")
    finally:
        stop_all([worker], timeout=20)
