"""The end-to-end proof: a real Prometheus server scrapes `offload worker
--processes 2 --metrics-port` (whose processes are also recycled under it) and
`offload metrics`, and its query API reports exactly the jobs that ran, and the jobs
that ended inside the broker (expired, cancelled while waiting), once each.

Needs the `prometheus` binary (Debian's package; `.ci/run` installs it). The test
starts its own server with a temporary configuration and data directory on a free
port, never a system service. A missing binary skips locally and fails under CI=true.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from offload import Offload
from tests.conftest import service_missing
from tests.integration.test_worker_process import stop_all, wait_for

APP = textwrap.dedent(
    """
    import time
    from offload import Backoff, Offload, current_job

    app = Offload()

    @app.task(name="ok")
    def ok() -> None:
        time.sleep(0.02)

    @app.task(name="fanout")
    def fanout(n: int) -> None:  # jobs enqueued by a worker count in its metrics
        ok.enqueue_many(ok.call() for _ in range(n))

    @app.task(name="flaky", backoff=Backoff(base_s=0.01, cap_s=0.01, jitter=False))
    def flaky() -> None:
        if current_job().attempt == 1:
            raise ConnectionError("provider down")

    @app.task(name="doomed", give_up_on=(ValueError,))
    def doomed() -> None:
        raise ValueError("no such address")
    """
)
FANOUT, FLAKY, DOOMED = 20, 5, 3
EXPIRED, CANCELLED = 4, 6


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def prometheus_binary() -> str:
    found = shutil.which("prometheus") or (
        "/usr/bin/prometheus" if os.access("/usr/bin/prometheus", os.X_OK) else None
    )
    if found is None:
        service_missing("the prometheus binary is not installed (apt-get install prometheus)")
    return found


class Prometheus:
    """A Prometheus server of the test's own, scraping `targets` every 0.5 s."""

    def __init__(self, binary: str, workdir: Path, targets: dict[str, int]) -> None:
        self.port = free_port()
        scrape = [
            {"job_name": job, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, port in targets.items()
        ]
        config = {
            "global": {"scrape_interval": "500ms", "scrape_timeout": "400ms"},
            "scrape_configs": scrape,
        }
        (workdir / "prometheus.yml").write_text(json.dumps(config))  # JSON is YAML
        self.log = (workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                binary,
                f"--config.file={workdir / 'prometheus.yml'}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )

    def query(self, promql: str) -> float | None:
        """The single value of an instant query, or None if it has none (yet)."""
        url = f"http://127.0.0.1:{self.port}/api/v1/query?" + urllib.parse.urlencode(
            {"query": promql}
        )
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                body = json.load(response)
        except OSError:
            return None  # not listening yet
        result = body["data"]["result"]
        assert len(result) <= 1, result
        return float(result[0]["value"][1]) if result else None

    def close(self) -> None:
        stop_all([self.proc], timeout=10)
        self.log.close()


@pytest.fixture(params=["sqlite", "redis"])
def url(request: pytest.FixtureRequest, broker_url: Callable[[str], str]) -> str:
    return broker_url(request.param)


@pytest.fixture
def workdir(tmp_path: Path) -> Iterator[Path]:
    (tmp_path / "promapp.py").write_text(APP)
    yield tmp_path


def test_prometheus_counts_equal_the_jobs_run(
    prometheus_binary: str, url: str, workdir: Path
) -> None:
    env = {**os.environ, "OFFLOAD_URL": url, "PYTHONPATH": str(workdir)}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    worker_port, exporter_port = free_port(), free_port()
    offload = [sys.executable, "-m", "offload"]
    procs: list[subprocess.Popen[bytes]] = []
    app = Offload(url)
    prometheus = None
    try:
        jobs = [app.enqueue("fanout", FANOUT)]
        jobs += [app.enqueue("flaky") for _ in range(FLAKY)]
        jobs += [app.enqueue("doomed") for _ in range(DOOMED)]
        # Jobs that end inside the broker: expired before a worker came, and cancelled.
        unrun = [app.options("ok", expires=0.2).enqueue() for _ in range(EXPIRED)]
        unrun += [app.enqueue("ok") for _ in range(CANCELLED)]
        assert all(job.cancel() for job in unrun[EXPIRED:])
        time.sleep(0.3)
        procs.append(subprocess.Popen(
            [*offload, "worker", "promapp:app", "--processes", "2", "-c", "2",
             "--max-jobs", "7", "--poll", "0.05", "--quiet-jobs",
             "--metrics-port", str(worker_port)],
            env=env, cwd=workdir,
        ))  # fmt: skip
        procs.append(subprocess.Popen(
            [*offload, "metrics", "--url", url, "--port", str(exporter_port),
             "--bind", "127.0.0.1"],
            env=env, cwd=workdir,
        ))  # fmt: skip
        succeeded = 1 + FANOUT + FLAKY

        async def read_counts() -> dict[str, int]:
            broker = await app.connected_broker()  # the portal loop's broker
            return {str(s): n for s, n in (await broker.counts())["default"].states.items()}

        def all_done() -> bool:
            counts = app.portal.run(read_counts())
            return counts.get("succeeded", 0) == succeeded and counts.get("dead", 0) == DOOMED

        wait_for(all_done, timeout=90)
        workers = {app.job(j.id).info().worker_id for j in jobs}
        assert len(workers) >= 2  # more than one worker process did the work

        prometheus = Prometheus(
            prometheus_binary, workdir, {"worker": worker_port, "broker": exporter_port}
        )
        expected = {
            'sum(offload_jobs_finished_total{job="worker",outcome="succeeded"})': succeeded,
            'sum(offload_jobs_finished_total{job="worker",outcome="retried"})': FLAKY,
            'sum(offload_jobs_finished_total{job="worker",outcome="dead"})': DOOMED,
            'sum(offload_jobs_finished_total{job="worker",outcome="expired"})': EXPIRED,
            'sum(offload_jobs_finished_total{job="worker",outcome="cancelled"})': CANCELLED,
            'sum(offload_jobs_enqueued_total{job="worker",task="ok"})': FANOUT,
            'sum(offload_job_duration_seconds_count{job="worker"})': succeeded + FLAKY + DOOMED,
            'sum(offload_job_wait_seconds_count{job="worker"})': succeeded + DOOMED,
            'offload_queue_jobs{job="broker",queue="default",state="succeeded"}': succeeded,
            'offload_queue_jobs{job="broker",queue="default",state="dead"}': DOOMED,
            'offload_queue_jobs{job="broker",queue="default",state="expired"}': EXPIRED,
            'offload_queue_jobs{job="broker",queue="default",state="cancelled"}': CANCELLED,
            'offload_queue_jobs{job="broker",queue="default",state="queued"}': 0,
            'offload_workers{job="broker"}': 2,
        }

        def answered() -> bool:
            return all(prometheus.query(q) == v for q, v in expected.items())

        try:
            wait_for(answered, timeout=60)
        except AssertionError:
            got = {q: prometheus.query(q) for q in expected}
            raise AssertionError(f"Prometheus answered {got}, expected {expected}") from None
    finally:
        stop_all(procs, timeout=20)
        if prometheus is not None:
            prometheus.close()
        app.close()
