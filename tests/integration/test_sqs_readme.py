"""`offload worker` on `sqs://…?state=sqlite:///…` (moto's server): the README's
examples (a verification email, retries, a delayed job, a key, a chain, a result, a
cancel) run through SQS with their state in the store, exactly as on RabbitMQ: the
same app and the same checks as `test_amqp_worker.py`."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from urllib.parse import quote

import pytest

from tests.integration import test_amqp_worker as on_rabbitmq

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def sqs_mailapp(
    sqs_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[ModuleType, Path]]:
    """The README's app on SQS with a SQLite store, imported here as the producer, and
    a real `offload worker` process running it."""
    outbox = tmp_path / "outbox"
    outbox.mkdir()
    (tmp_path / "sqsmailapp.py").write_text(on_rabbitmq.APP_SOURCE)
    state = quote(f"sqlite:///{tmp_path / 'state.db'}", safe="")
    monkeypatch.setenv("OFFLOAD_URL", f"{sqs_url}&wait=1&state={state}")
    monkeypatch.setenv("OUTBOX", str(outbox))
    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    monkeypatch.syspath_prepend(str(tmp_path))
    argv = [sys.executable, "-m", "offload", "worker", "sqsmailapp:app", "-c", "8"]
    worker = subprocess.Popen(argv, env={**os.environ, "PYTHONPATH": str(tmp_path)}, cwd=tmp_path)
    module = importlib.import_module("sqsmailapp")
    try:
        yield module, outbox
    finally:
        worker.terminate()
        assert worker.wait(30) == 0
        module.app.close()
        sys.modules.pop("sqsmailapp", None)


def test_the_readme_examples_run_on_sqs_with_their_state_in_the_store(
    sqs_mailapp: tuple[ModuleType, Path],
) -> None:
    on_rabbitmq.test_the_readme_examples_run_on_rabbitmq_with_their_state_in_the_store(sqs_mailapp)
