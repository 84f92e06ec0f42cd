"""`offload worker` on `sqs://…?state=sqlite:///…` (moto's server): the README's
examples (a verification email, retries, a delayed job, a key, a chain, a result, a
cancel) run through SQS with their state in the store, exactly as on RabbitMQ: the
same app and the same checks as `test_amqp_worker.py`."""

from __future__ import annotations

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
    """The README's app on SQS with a SQLite store, and a real `offload worker`."""
    state = quote(f"sqlite:///{tmp_path / 'state.db'}", safe="")
    url = f"{sqs_url}&wait=1&state={state}"
    with on_rabbitmq.worker_app(url, tmp_path, monkeypatch, "sqsmailapp") as app_and_outbox:
        yield app_and_outbox


def test_the_readme_examples_run_on_sqs_with_their_state_in_the_store(
    sqs_mailapp: tuple[ModuleType, Path],
) -> None:
    on_rabbitmq.test_the_readme_examples_run_on_rabbitmq_with_their_state_in_the_store(sqs_mailapp)
