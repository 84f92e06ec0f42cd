"""The backends Django's task tests configure, re-targeted at offload.

Django's tests name two reference backends; `run.py` puts these in their place (the
classes `django.tasks.backends.dummy.DummyBackend` and `...immediate.ImmediateBackend`
become these), so every test that configures one of them runs against `OffloadBackend`:

- `QueuedBackend`, for the dummy backend (which stores jobs and never runs them): an
  `OffloadBackend` with no worker, so jobs wait in the broker as READY. The dummy's
  inspection API (`results`, `clear()`) is provided as a view: the results of the jobs
  enqueued since `clear()`, each read back from the broker with `get_result`.
- `RunningBackend`, for the immediate backend (which runs a job inside `enqueue`): an
  `OffloadBackend` whose `enqueue`, after the real enqueue, drives a real offload
  `Worker` (`drain()`: reserve, run, settle) and returns the result read back from the
  broker. One attempt per job (`max_attempts=1`), as the immediate backend runs once.

Each has its own broker (OFFLOAD_SUITE_QUEUED_URL, OFFLOAD_SUITE_RUNNING_URL), so the
jobs the queued tests leave waiting are never run by the running ones. `options` stays
what the test's settings say.
"""

from __future__ import annotations

import os
from typing import Any, ClassVar

from django.tasks import Task

from offload.contrib.django import OffloadBackend, OffloadTaskResult
from offload.worker import Worker


class _Retargeted(OffloadBackend):
    url_variable: ClassVar[str]
    defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, alias: str, params: dict[str, Any]) -> None:
        options = dict(params.get("OPTIONS", {}))
        url = os.environ[self.url_variable]
        super().__init__(
            alias, {**params, "OPTIONS": {"url": url, "defaults": self.defaults, **options}}
        )
        self.options = options


class QueuedBackend(_Retargeted):
    url_variable = "OFFLOAD_SUITE_QUEUED_URL"
    _enqueued: ClassVar[dict[int, list[str]]] = {}  # by app: backends are per thread

    @property
    def _ids(self) -> list[str]:
        return self._enqueued.setdefault(id(self.app), [])

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> OffloadTaskResult:
        result = super().enqueue(task, args, kwargs)
        self._ids.append(result.id)
        return result

    @property
    def results(self) -> list[OffloadTaskResult]:
        return [self.get_result(job_id) for job_id in self._ids]

    def clear(self) -> None:
        self._ids.clear()


class RunningBackend(_Retargeted):
    url_variable = "OFFLOAD_SUITE_RUNNING_URL"
    defaults: ClassVar[dict[str, Any]] = {"max_attempts": 1}
    _workers: ClassVar[dict[tuple[int, str], Worker]] = {}

    def enqueue(self, task: Task, args: Any, kwargs: Any) -> OffloadTaskResult:
        from django.db import connections

        result = super().enqueue(task, args, kwargs)
        if connections[self.database].in_atomic_block:
            return result  # sent at the commit: nothing to run yet
        key = (id(self.app), task.queue_name)
        worker = self._workers.get(key)
        if worker is None:
            worker = Worker(self.app, queues=[task.queue_name], concurrency=1)
            self._workers[key] = worker
        self.app.portal.run(worker.drain())
        return self.get_result(result.id)
