"""The `django.tasks` API on offload: enqueue through Django, run on a real worker,
read the result back through Django, with every feature Django's API names."""

from __future__ import annotations

import threading
from datetime import timedelta
from typing import Any

import pytest
from django.tasks import TaskResultStatus
from django.tasks.exceptions import InvalidTask, TaskResultDoesNotExist
from django.tasks.signals import task_enqueued, task_finished, task_started
from django.utils import timezone

from offload import JobState
from offload.contrib.django import OffloadTaskResult
from tests.django.helpers import backend, drain
from tests.django.project import tasks


def test_a_task_runs_on_a_worker_and_its_result_reads_back() -> None:
    result = tasks.add.enqueue(2, 3)
    assert result.status == TaskResultStatus.READY
    assert result.offload_state is JobState.QUEUED
    assert tasks.add.get_result(result.id) == result  # what enqueue returned is stored

    assert drain() >= 1
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert _state(result) is JobState.SUCCEEDED  # read again: refresh() changed it
    assert result.return_value == 5
    assert (result.args, result.kwargs) == ([2, 3], {})
    assert result.attempts == 1 and result.worker_ids[0]
    assert result.enqueued_at <= result.started_at <= result.finished_at


def test_async_tasks_run_and_results_read_from_async_code() -> None:
    from asgiref.sync import async_to_sync

    result = async_to_sync(tasks.async_add.aenqueue)(20, 22)
    drain()
    fresh = async_to_sync(tasks.async_add.aget_result)(result.id)
    assert fresh.status == TaskResultStatus.SUCCESSFUL and fresh.return_value == 42


def test_a_task_that_takes_context_sees_its_own_result_id_and_attempt() -> None:
    result = tasks.whoami.enqueue("hi")
    drain()
    assert tasks.whoami.get_result(result.id).return_value == {
        "id": result.id,
        "attempt": 1,
        "note": "hi",
    }


def test_a_failure_carries_the_importable_exception_class_and_the_offload_reason() -> None:
    result = tasks.declines.enqueue()
    drain()
    result.refresh()
    assert result.status == TaskResultStatus.FAILED
    assert result.offload_state is JobState.DEAD
    [error] = result.errors
    assert error.exception_class is tasks.Declined
    assert error.traceback.endswith("Declined: card declined\n")
    assert result.offload_error is not None
    assert result.offload_error.message.startswith("attempts exhausted (1/1)")
    with pytest.raises(ValueError, match="Task failed"):
        result.return_value  # noqa: B018


def test_retries_follow_the_tasks_offload_options_and_finish_once() -> None:
    finished: list[Any] = []

    def on_finished(sender: type, task_result: Any, **kwargs: Any) -> None:
        finished.append(task_result.status)

    task_finished.connect(on_finished)
    try:
        result = tasks.fails_twice.enqueue()
        drain()  # attempts 1 and 2 fail and are retried at once (backoff 0)
    finally:
        task_finished.disconnect(on_finished)
    result.refresh()
    assert result.status == TaskResultStatus.SUCCESSFUL
    assert result.return_value == 3 and result.attempts == 3
    assert finished == [TaskResultStatus.SUCCESSFUL]  # the retried failures were not final


def test_djangos_signals_are_sent_for_enqueue_start_and_finish() -> None:
    seen: list[tuple[str, str, str]] = []

    def recorder(name: str) -> Any:
        def receive(sender: type, task_result: Any, **kwargs: Any) -> None:
            seen.append((name, task_result.id, str(task_result.status)))

        return receive

    receivers = [(s, recorder(n)) for s, n in
                 [(task_enqueued, "enqueued"), (task_started, "started"),
                  (task_finished, "finished")]]  # fmt: skip
    for signal, receive in receivers:
        signal.connect(receive)
    try:
        result = tasks.add.enqueue(1, 1)
        drain()
    finally:
        for signal, receive in receivers:
            signal.disconnect(receive)
    assert seen == [
        ("enqueued", result.id, "READY"),
        ("started", result.id, "RUNNING"),
        ("finished", result.id, "SUCCESSFUL"),
    ]


def test_an_async_tasks_signal_receivers_leave_no_database_connection_open() -> None:
    """An async task's signals are sent from the default executor's threads; a receiver
    that queries the database opened a connection there that stayed open for the
    worker's life (Django closes its connections around each request, and offload
    around each sync task, not in those threads)."""
    from django.db import connections

    used: list[Any] = []

    def receive(sender: type, task_result: Any, **kwargs: Any) -> None:
        wrapper = connections["default"]  # this thread's own
        with wrapper.cursor() as cur:
            cur.execute("SELECT 1")
        used.append(wrapper)

    task_finished.connect(receive)
    try:
        result = tasks.async_add.enqueue(1, 2)
        drain()
    finally:
        task_finished.disconnect(receive)
    assert tasks.async_add.get_result(result.id).return_value == 3
    [wrapper] = used
    assert wrapper is not connections["default"]  # not this thread's...
    assert wrapper.connection is None  # ...and closed after the receivers ran


def test_an_async_task_leaves_no_database_connection_open() -> None:
    """A worker is Django's request cycle for jobs: as around a sync task, the
    connection an async task used (through `sync_to_async`) is cleaned up after it.
    Kept open for the worker's life, it went stale on a database restart or an idle
    timeout, and failed the jobs that used it after."""
    tasks.ran.clear()
    result = tasks.touches_the_database.enqueue()
    drain()
    assert tasks.touches_the_database.get_result(result.id).return_value == 1
    [(_, wrapper)] = [r for r in tasks.ran if r[0] == "touches_the_database"]
    assert wrapper.connection is None


def test_an_async_task_runs_under_a_worker_driven_from_inside_async_to_sync() -> None:
    """A worker driven from a sync function that `async_to_sync` runs (as Django's own
    test suite does) inherits that caller's context: the connection cleanup around an
    async task must not wait for the caller's thread, which waits for the worker."""
    from asgiref.sync import async_to_sync, sync_to_async

    async def enqueue_and_run() -> Any:
        result = await tasks.async_add.aenqueue(2, 3)
        await sync_to_async(drain)()  # on the thread async_to_sync blocks
        return result

    outcome: list[Any] = []
    runner = threading.Thread(
        target=lambda: outcome.append(async_to_sync(enqueue_and_run)()), daemon=True
    )
    runner.start()
    runner.join(20)
    assert not runner.is_alive(), "deadlock: the worker waited for its caller's thread"
    assert tasks.async_add.get_result(outcome[0].id).return_value == 5


def test_run_after_defers_the_job() -> None:
    later = timezone.now() + timedelta(hours=1)
    result = tasks.add.using(run_after=later).enqueue(1, 2)
    assert result.offload_state is JobState.SCHEDULED
    drain()
    fresh = tasks.add.get_result(result.id)
    assert fresh.status == TaskResultStatus.READY and fresh.offload_state is JobState.SCHEDULED
    assert fresh.task.run_after == later
    assert fresh == result


def test_a_naive_run_after_is_read_in_djangos_time_zone() -> None:
    """With USE_TZ = False, Django's times are naive and mean TIME_ZONE; offload refuses
    a naive datetime (each host would read it in its own zone), so the backend makes it
    aware in Django's zone first, instead of failing every `using(run_after=...)`."""
    from django.test import override_settings

    with override_settings(USE_TZ=False, TIME_ZONE="America/New_York"):
        later = timezone.now() + timedelta(hours=1)
        assert timezone.is_naive(later)
        result = tasks.add.using(run_after=later).enqueue(1, 2)
        assert result.offload_state is JobState.SCHEDULED
        due_at = backend().app.job(result.id).info().due_at
        assert due_at == timezone.make_aware(later).timestamp()


def test_higher_django_priority_runs_first() -> None:
    tasks.ran.clear()
    for priority in (-100, 0, 100, 7):
        tasks.record.using(priority=priority).enqueue("p", priority)
    drain(concurrency=1)
    assert [p for label, p in tasks.ran if label == "p"] == [100, 7, 0, -100]


def test_queue_name_routes_the_job_to_the_workers_of_that_queue() -> None:
    result = tasks.add.using(queue_name="emails").enqueue(4, 4)
    drain(queues=["default"])
    assert tasks.add.get_result(result.id).status == TaskResultStatus.READY
    drain(queues=["emails"])
    fresh = tasks.add.get_result(result.id)
    assert fresh.status == TaskResultStatus.SUCCESSFUL and fresh.task.queue_name == "emails"


def test_an_idempotency_key_from_the_arguments_returns_the_existing_job() -> None:
    first = tasks.welcome.enqueue(4242)
    second = tasks.welcome.enqueue(4242)
    assert second.id == first.id
    info = backend().app.job(first.id).info()
    assert info.key == "welcome:4242" and info.expires_at is not None
    assert tasks.welcome.using(key="other").enqueue(4242).id != first.id


def test_offload_options_reach_the_registered_task() -> None:
    defaults = backend().app.tasks[tasks.fails_twice.module_path].defaults
    assert defaults.max_attempts == 3 and defaults.backoff.base_s == 0.0
    sqlite = backend("sqlite").app.tasks[tasks.on_sqlite.module_path].defaults
    assert sqlite.max_attempts == 1  # the backend's OPTIONS["defaults"]


def test_a_missing_result_raises_does_not_exist() -> None:
    with pytest.raises(TaskResultDoesNotExist):
        tasks.add.get_result("0" * 32)


def test_bad_offload_options_fail_where_the_task_is_declined() -> None:
    from django.tasks import task

    with pytest.raises(InvalidTask, match="timeout= needs an async task"):
        task(timeout=5)(tasks.add.func)
    with pytest.raises(InvalidTask, match="rate"):
        task(rate_limit="often")(_spare)
    with pytest.raises(TypeError, match="per enqueue"):
        tasks.add.using(rate_limit="1/s")


def _spare() -> None:
    """A module-level function no other test declares as a task."""


def test_unknown_options_are_refused_naming_them() -> None:
    from django.core.exceptions import ImproperlyConfigured

    from offload.contrib.django import OffloadBackend

    with pytest.raises(ImproperlyConfigured, match=r"unknown option.*URL"):
        OffloadBackend("x", {"OPTIONS": {"URL": "memory://"}})
    with pytest.raises(ImproperlyConfigured, match="attempts"):
        OffloadBackend("x", {"OPTIONS": {"url": "memory://", "defaults": {"attempts": 3}}})


def test_a_worker_finds_only_this_backends_django_tasks_by_module_path() -> None:
    app = backend().app
    assert app.find_task(tasks.add.module_path) is app.tasks[tasks.add.module_path]
    assert app.find_task("os.system") is None  # importable, but not a Django task
    assert app.find_task("no.such.module.task") is None
    assert app.find_task(tasks.on_sqlite.module_path) is None  # another backend's task


def _state(result: OffloadTaskResult) -> JobState:
    return result.offload_state
