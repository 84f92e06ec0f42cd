"""The job log: one line per finished attempt, a requested retry as a retry, the quiet
switch, and `--log-config` (credentials still scrubbed) on a real worker process."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from offload import Backoff, JobState, Offload, Retry, current_job
from tests.integration.test_worker_process import stop_all, wait_for
from tests.observability.helpers import all_ended, run_worker_until

QUICK = Backoff(base_s=0.01, cap_s=0.01, jitter=False)


def lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "offload.jobs"]


async def test_one_line_per_finished_attempt_with_its_fields(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Offload("memory://")

    @app.task(name="ok")
    def ok() -> None: ...

    @app.task(name="asks", backoff=QUICK)
    def asks() -> None:
        if current_job().attempt == 1:
            raise Retry(delay=0, reason="rate limited")

    @app.task(name="flaky", backoff=QUICK)
    def flaky() -> None:
        if current_job().attempt == 1:
            raise ConnectionError("down")

    @app.task(name="doomed", give_up_on=(ValueError,))
    def doomed() -> None:
        raise ValueError("bad")

    caplog.set_level(logging.INFO, logger="offload.jobs")
    jobs = [await t.enqueue_async() for t in (ok, asks, flaky, doomed)]
    await run_worker_until(app, lambda: all_ended(app, [j.id for j in jobs]))

    seen = {(r.task, r.attempt): r for r in lines(caplog)}  # type: ignore[attr-defined]
    assert len(lines(caplog)) == len(seen) == 6  # one per attempt, no more
    for record in seen.values():
        assert isinstance(record.duration_s, float) and record.duration_s >= 0  # type: ignore[attr-defined]
        assert record.job_id in {j.id for j in jobs}  # type: ignore[attr-defined]
    outcomes = {key: (r.outcome, r.levelname) for key, r in seen.items()}  # type: ignore[attr-defined]
    assert outcomes == {
        ("ok", 1): ("succeeded", "INFO"),
        ("asks", 1): ("retried", "INFO"),  # asked for: a retry, not a failure
        ("asks", 2): ("succeeded", "INFO"),
        ("flaky", 1): ("retried", "WARNING"),
        ("flaky", 2): ("succeeded", "INFO"),
        ("doomed", 1): ("dead", "ERROR"),
    }
    assert "retry requested (rate limited)" in seen[("asks", 1)].getMessage()
    assert "with ConnectionError" in seen[("flaky", 1)].getMessage()
    assert "ValueError: ValueError is not retryable: bad" in seen[("doomed", 1)].getMessage()


async def test_a_retry_without_a_reason_is_logged_without_repeating_itself(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """`raise Retry(delay=...)` with no reason logged "retry requested (retry
    requested)"."""
    app = Offload("memory://")

    @app.task(name="asks", backoff=QUICK)
    def asks() -> None:
        if current_job().attempt == 1:
            raise Retry(delay=0)

    caplog.set_level(logging.INFO, logger="offload.jobs")
    job = await asks.enqueue_async()
    await run_worker_until(app, lambda: all_ended(app, [job.id]))
    [retried] = [r for r in lines(caplog) if r.outcome == "retried"]  # type: ignore[attr-defined]
    assert retried.getMessage().endswith(", retry requested, next in 0.0 s"), retried.getMessage()


async def test_a_job_dead_after_requested_retries_is_logged_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A handler that raised `Retry` until its attempts ran out left a dead job, in the
    dead-letter queue, logged at INFO like a requested retry: `--quiet-jobs` hid it."""
    app = Offload("memory://")

    @app.task(name="asks", backoff=QUICK, max_attempts=2)
    def asks() -> None:
        raise Retry(delay=0, reason="rate limited")

    caplog.set_level(logging.INFO, logger="offload.jobs")
    job = await asks.enqueue_async()
    await run_worker_until(app, lambda: all_ended(app, [job.id]))
    levels = {r.outcome: r.levelname for r in lines(caplog)}  # type: ignore[attr-defined]
    assert levels == {"retried": "INFO", "dead": "ERROR"}


APP = textwrap.dedent(
    """
    from offload import Offload

    app = Offload()

    @app.task(name="ok")
    def ok() -> None: ...

    @app.task(name="leaky", max_attempts=1)
    def leaky(url: str) -> None:
        raise ValueError(f"cannot reach {url}")
    """
)
SECRET = "pa55word-not-for-logs"


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "logapp.py").write_text(APP)
    return tmp_path


def _run(workdir: Path, *args: str) -> list[dict[str, object]]:
    """Run a worker until its jobs ended; its job log lines, from stderr (JSON)."""
    url = f"sqlite:///{workdir / 'broker.db'}"
    app = Offload(url)
    jobs = [app.enqueue("ok"), app.enqueue("leaky", f"redis://user:{SECRET}@cache:6379")]
    env = {**os.environ, "OFFLOAD_URL": url, "PYTHONPATH": str(workdir)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", "logapp:app", "--poll", "0.05", *args],
        env=env,
        cwd=workdir,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: all(app.job(j.id).state() in (JobState.SUCCEEDED, JobState.DEAD)
                             for j in jobs))  # fmt: skip
        worker.send_signal(signal.SIGTERM)
        _, stderr = worker.communicate(timeout=20)
    finally:
        stop_all([worker], timeout=10)  # type: ignore[list-item]
        app.close()
    assert SECRET not in stderr
    return [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]


def test_the_worker_logs_each_job_and_quiet_jobs_keeps_only_failures(workdir: Path) -> None:
    records = _run(workdir, "--log-format", "json")
    jobs = [r for r in records if r["logger"] == "offload.jobs"]
    assert sorted((r["task"], r["outcome"], r["level"]) for r in jobs) == [
        ("leaky", "dead", "error"),
        ("ok", "succeeded", "info"),
    ]
    [dead] = [r for r in jobs if r["outcome"] == "dead"]
    assert "redis://user:***@cache" in str(dead["message"])  # the password, scrubbed

    quiet = _run(workdir, "--log-format", "json", "--quiet-jobs")
    jobs = [r for r in quiet if r["logger"] == "offload.jobs"]
    assert [(r["task"], r["outcome"]) for r in jobs] == [("leaky", "dead")]


def test_log_config_file_configures_logging_and_secrets_stay_scrubbed(workdir: Path) -> None:
    log_file = workdir / "jobs.log"
    config = {
        "version": 1,
        "formatters": {"plain": {"format": "%(levelname)s|%(name)s|%(message)s"}},
        "handlers": {
            "file": {
                "class": "logging.FileHandler",
                "filename": str(log_file),
                "formatter": "plain",
            },
        },
        "loggers": {"offload.jobs": {"handlers": ["file"], "level": "INFO"}},
    }
    (workdir / "logging.json").write_text(json.dumps(config))
    _run(workdir, "--log-config", str(workdir / "logging.json"))
    text = log_file.read_text()
    assert SECRET not in text and "redis://user:***@cache" in text
    logged = [line.split("|")[:2] for line in text.splitlines()]
    assert sorted(logged) == [["ERROR", "offload.jobs"], ["INFO", "offload.jobs"]]


OWN_HANDLER_APP = textwrap.dedent(
    """
    import logging, sys
    from offload import Offload

    # The app's own logging, set up when it is imported (as Django's LOGGING is).
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("APP %(name)s: %(message)s"))
    logging.getLogger().addHandler(handler)

    app = Offload()

    @app.task(name="leaky", max_attempts=1)
    def leaky(url: str) -> None:
        logging.getLogger("ownapp").error("cannot reach %s", url)
    """
)


def test_a_handler_the_app_adds_at_import_is_scrubbed_too(tmp_path: Path) -> None:
    """The worker scrubbed the handlers it configured, then imported the app: a handler
    the app module (or Django's settings) added printed passwords in clear."""
    (tmp_path / "ownapp.py").write_text(OWN_HANDLER_APP)
    url = f"sqlite:///{tmp_path / 'broker.db'}"
    app = Offload(url)
    job = app.enqueue("leaky", f"redis://user:{SECRET}@cache:6379")
    env = {**os.environ, "OFFLOAD_URL": url, "PYTHONPATH": str(tmp_path)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", "ownapp:app", "--poll", "0.05"],
        env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: app.job(job.id).state() is JobState.SUCCEEDED)
        worker.send_signal(signal.SIGTERM)
        stdout, stderr = worker.communicate(timeout=20)
    finally:
        stop_all([worker], timeout=10)  # type: ignore[list-item]
        app.close()
    assert "APP ownapp: cannot reach redis://user:***@cache:6379" in stdout, stdout
    assert SECRET not in stdout and SECRET not in stderr


def test_a_bad_log_config_is_one_line_naming_the_file(workdir: Path) -> None:
    (workdir / "broken.json").write_text("{not json")
    done = subprocess.run(
        [sys.executable, "-m", "offload", "worker", "logapp:app", "--log-config",
         str(workdir / "broken.json")],
        env={**os.environ, "PYTHONPATH": str(workdir)}, cwd=workdir,
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.startswith("error: --log-config ") and "broken.json" in done.stderr
    assert "Traceback" not in done.stderr
