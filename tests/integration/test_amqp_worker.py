"""`offload worker` on `amqp://…?state=sqlite:///…`: the README's examples run through
RabbitMQ with their state in the store (a verification email, retries, a delayed job, a
chain, a result, a cancel, a key), and `Offload("amqp://…")` without a state store is
refused naming the setting."""

from __future__ import annotations

import contextlib
import importlib
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

from offload import JobCancelled, JobState, chain

pytestmark = pytest.mark.timeout(120)

APP_SOURCE = textwrap.dedent(
    """
    import os, pathlib
    from offload import Backoff, Offload, Retry, current_job

    app = Offload()
    OUTBOX = pathlib.Path(os.environ["OUTBOX"])

    @app.task(name="emails.send_verification", max_attempts=8, expires=15 * 60,
              backoff=Backoff(base_s=0.1, cap_s=0.5), give_up_on=(ValueError,))
    def send_verification(email: str, code: str) -> int:
        attempt = current_job().attempt
        if email.startswith("flaky") and attempt < 3:
            raise ConnectionError("provider unavailable")
        if email.startswith("limited") and attempt == 1:
            raise Retry(delay=0.5)
        if email.startswith("bad") and not (OUTBOX / "fixed").exists():
            raise ValueError("no such mailbox")
        # written aside, then renamed: a test polling for the file never reads it empty
        sent = OUTBOX / f"{email}.{code}"
        (OUTBOX / f".{sent.name}").write_text(str(attempt))
        (OUTBOX / f".{sent.name}").replace(sent)
        return attempt

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    @app.task(name="sleepy")
    async def sleepy(seconds: float) -> str:
        import asyncio
        await asyncio.sleep(seconds)
        return "woke"
    """
)


@contextlib.contextmanager
def worker_app(
    url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str = "mailapp"
) -> Iterator[tuple[ModuleType, Path]]:
    """The app module on broker `url` (imported here, as the producer), and a real
    `offload worker` process running it; also for other brokers (`test_sqs_readme.py`)."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (tmp_path / f"{name}.py").write_text(APP_SOURCE)
    monkeypatch.setenv("OFFLOAD_URL", url)
    monkeypatch.setenv("OUTBOX", str(outbox))
    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    worker = subprocess.Popen(
        [sys.executable, "-m", "offload", "worker", f"{name}:app", "-c", "8"],
        env=env,
        cwd=tmp_path,
    )
    module = importlib.import_module(name)
    try:
        yield module, outbox
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
        module.app.close()
        sys.modules.pop(name, None)


@pytest.fixture
def mailapp(
    amqp_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ModuleType, Path]]:
    """The app module on RabbitMQ with a SQLite state store, and its worker."""
    url = f"{amqp_url}&state=sqlite:///{tmp_path / 'state.db'}"
    with worker_app(url, tmp_path, monkeypatch) as app_and_outbox:
        yield app_and_outbox


def test_the_readme_examples_run_on_rabbitmq_with_their_state_in_the_store(
    mailapp: tuple[ModuleType, Path],
) -> None:
    app, outbox = mailapp
    # a verification email: enqueued, run once, its result kept in the store
    job = app.send_verification.enqueue("ada@example.com", "123456")
    assert job.result(timeout=30) == 1
    assert (outbox / "ada@example.com.123456").read_text() == "1"
    info = job.info()
    assert info.state is JobState.SUCCEEDED and info.attempt == 1
    # retries with backoff, and a Retry(delay=…) from the handler; their history kept
    flaky = app.send_verification.enqueue("flaky@example.com", "1")
    limited = app.send_verification.enqueue("limited@example.com", "2")
    assert flaky.result(timeout=30) == 3
    assert limited.result(timeout=30) == 2
    assert [a.number for a in flaky.info().attempts] == [1, 2, 3]
    # a delayed job waits in the store, then runs
    started = time.monotonic()
    delayed = app.add.options(delay=2).enqueue(1, 2)
    assert delayed.state() is JobState.SCHEDULED
    assert delayed.result(timeout=30) == 3
    assert time.monotonic() - started >= 1.9
    # a key: the second enqueue is the first job
    first = app.add.options(key="once").enqueue(2, 2)
    second = app.add.options(key="once").enqueue(3, 3)
    assert (second.id, second.created) == (first.id, False)
    assert first.result(timeout=30) == 4
    # a chain: each result is the next step's first argument
    flow = chain(app.add.call(1, 2), app.add.partial(10), app.add.partial(100)).enqueue()
    assert flow.result(timeout=30) == 113
    # a cancel of a job waiting in the store: it never runs
    later = app.add.options(delay=60).enqueue(5, 5)
    assert later.cancel()
    with pytest.raises(JobCancelled):
        later.result(timeout=5)
