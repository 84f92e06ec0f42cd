"""Transactions the Django way, with a real worker running.

The `default` backend's broker is PostgreSQL in Django's own database: an enqueue
inside `transaction.atomic()` is written in that transaction, so the job exists if and
only if the transaction commits, and the worker that runs it sees the rows committed
with it. The `sqlite` backend's broker is another database: there the job is sent on
commit, and never on rollback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.db import connection, transaction
from django.tasks import TaskResultStatus
from django.tasks.exceptions import TaskResultDoesNotExist

from offload.envelope import Envelope
from offload.hooks import Hook
from tests.django.helpers import backend, drain, running_worker, wait_for
from tests.django.project import tasks

pytestmark = pytest.mark.timeout(120)


class Rollback(Exception):
    pass


@pytest.fixture(scope="module", autouse=True)
def users() -> Iterator[None]:
    """The application's own table, in Django's database (the test run's schema)."""
    with connection.cursor() as cur:
        cur.execute("CREATE TABLE IF NOT EXISTS users (email text PRIMARY KEY)")
    yield
    with connection.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS users")


def add_user(email: str) -> None:
    with connection.cursor() as cur:
        cur.execute("INSERT INTO users (email) VALUES (%s)", [email])


def finished(task: object, result_id: str) -> Callable[[], object]:
    def check() -> object:
        fresh = task.get_result(result_id)  # type: ignore[attr-defined]
        return fresh if fresh.is_finished else None

    return check


def test_on_the_brokers_database_the_job_is_written_in_the_transaction() -> None:
    with running_worker():
        with transaction.atomic():
            add_user("ada@example.com")
            result = tasks.user_exists.enqueue("ada@example.com")
            with connection.cursor() as cur:  # written by this transaction...
                cur.execute("SELECT count(*) FROM offload_jobs WHERE id = %s", [result.id])
                assert cur.fetchone() == (1,)
            with pytest.raises(TaskResultDoesNotExist):  # ...which no one else sees yet
                tasks.user_exists.get_result(result.id)
        fresh = wait_for(finished(tasks.user_exists, result.id))
    assert fresh.status == TaskResultStatus.SUCCESSFUL
    assert fresh.return_value is True  # the worker saw the row committed with the job


def test_on_the_brokers_database_a_rollback_leaves_no_job() -> None:
    with pytest.raises(Rollback), transaction.atomic():
        add_user("bob@example.com")
        result = tasks.user_exists.enqueue("bob@example.com")
        raise Rollback()
    drain()
    with pytest.raises(TaskResultDoesNotExist):
        tasks.user_exists.get_result(result.id)


def test_a_rolled_back_savepoint_takes_its_job_with_it() -> None:
    with running_worker():
        with transaction.atomic():
            kept = tasks.add.enqueue(1, 2)
            with pytest.raises(Rollback), transaction.atomic():
                dropped = tasks.add.enqueue(3, 4)
                raise Rollback()
        assert wait_for(finished(tasks.add, kept.id)).return_value == 3
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result(dropped.id)


def test_elsewhere_the_job_is_sent_on_commit() -> None:
    with running_worker("sqlite"):
        with transaction.atomic():
            add_user("cy@example.com")
            result = tasks.on_sqlite.enqueue("cy@example.com")
            with pytest.raises(TaskResultDoesNotExist):  # not sent before the commit
                tasks.on_sqlite.get_result(result.id)
        fresh = wait_for(finished(tasks.on_sqlite, result.id))
    assert fresh.status == TaskResultStatus.SUCCESSFUL and fresh.return_value == "cy@example.com"


def test_elsewhere_a_rollback_means_the_job_is_never_sent() -> None:
    with pytest.raises(Rollback), transaction.atomic():
        result = tasks.on_sqlite.enqueue("dee@example.com")
        raise Rollback()
    drain("sqlite")
    with pytest.raises(TaskResultDoesNotExist):
        tasks.on_sqlite.get_result(result.id)


class HeardEnqueues(Hook):
    """Records what the enqueue hooks heard, by job id."""

    def __init__(self) -> None:
        self.before: list[str] = []
        self.after: list[tuple[str, bool | None, BaseException | None]] = []

    def before_enqueue(self, envelope: Envelope) -> None:
        self.before.append(envelope.id)

    def after_enqueue(
        self, envelope: Envelope, created: bool | None, error: BaseException | None
    ) -> None:
        self.after.append((envelope.id, created, error))


@pytest.fixture
def heard() -> Iterator[Callable[[str], HeardEnqueues]]:
    """A `HeardEnqueues` hook on a backend's app, removed after the test."""
    added: list[tuple[Any, HeardEnqueues]] = []

    def add(alias: str) -> HeardEnqueues:
        hook = HeardEnqueues()
        app = backend(alias).app
        app.add_hook(hook)
        added.append((app, hook))
        return hook

    yield add
    for app, hook in added:
        app.hooks.remove(hook)


def test_the_enqueue_hooks_hear_a_job_written_in_the_transaction_to_its_end(
    heard: Callable[[str], HeardEnqueues],
) -> None:
    hook = heard("default")
    with transaction.atomic():
        result = tasks.add.enqueue(1, 2)
    assert hook.before == [result.id]
    assert hook.after == [(result.id, True, None)]  # a tracing span ends, metrics count


def test_the_enqueue_hooks_hear_nothing_of_a_job_never_sent_after_a_rollback(
    heard: Callable[[str], HeardEnqueues],
) -> None:
    hook = heard("sqlite")
    with pytest.raises(Rollback), transaction.atomic():
        tasks.on_sqlite.enqueue("eve@example.com")
        raise Rollback()
    assert not hook.before and not hook.after  # no span left open, waiting forever
    with transaction.atomic():
        result = tasks.on_sqlite.enqueue("fay@example.com")
        assert hook.before == []  # not before the commit sends it
    assert hook.before == [result.id]
    assert hook.after == [(result.id, True, None)]


def test_a_key_whose_job_exists_gives_that_job_at_commit() -> None:
    """Sent on commit, an enqueue whose idempotency key names an existing job must end
    up with that job's id (as outside a transaction), not the id of a job never stored."""
    first = tasks.on_sqlite.using(key="once:gus").enqueue("gus@example.com")
    with transaction.atomic():
        second = tasks.on_sqlite.using(key="once:gus").enqueue("gus@example.com")
    assert second.id == first.id
    assert tasks.on_sqlite.get_result(second.id).id == first.id
