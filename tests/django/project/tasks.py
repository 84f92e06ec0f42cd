"""The test project's tasks: module-level functions under Django's `@task`."""

from __future__ import annotations

import asyncio
import os
from typing import Any

from asgiref.sync import sync_to_async
from django.db import connection, connections
from django.tasks import TaskContext, task

from offload.envelope import Backoff

#: What the in-process worker ran, in order (tests that drive a worker here read it).
ran: list[Any] = []


class Declined(Exception):
    """A project's own exception, to find again by its class path."""


@task()
def add(a: int, b: int) -> int:
    ran.append(("add", a, b))
    return a + b


@task()
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@task(takes_context=True)
def whoami(context: TaskContext, note: str) -> dict[str, Any]:
    return {"id": context.task_result.id, "attempt": context.attempt, "note": note}


@task(max_attempts=1)
def declines() -> None:
    raise Declined("card declined")


@task(max_attempts=3, backoff=Backoff(base_s=0.0, jitter=False), takes_context=True)
def fails_twice(context: TaskContext) -> int:
    if context.attempt < 3:
        raise ConnectionError(f"attempt {context.attempt}")
    return context.attempt


@task()
async def touches_the_database() -> int:
    """An async task using the ORM the Django way (`sync_to_async`); records the
    database wrapper it used."""

    def query() -> int:
        wrapper = connections["default"]
        ran.append(("touches_the_database", wrapper))
        with wrapper.cursor() as cur:
            cur.execute("SELECT 1")
            row = cur.fetchone()
        return int(row[0]) if row else 0

    return await sync_to_async(query)()


@task()
def record(label: str, priority: int) -> None:
    ran.append((label, priority))


@task(key=lambda user_id: f"welcome:{user_id}", expires=3600)
def welcome(user_id: int) -> int:
    return user_id


@task()
def user_exists(email: str) -> bool:
    """Runs in the worker: sees the row only if the enqueueing transaction committed."""
    with connection.cursor() as cur:
        cur.execute("SELECT count(*) FROM users WHERE email = %s", [email])
        row = cur.fetchone()
    return bool(row and row[0])


@task(backend="sqlite")
def pid_of_worker() -> int:
    return os.getpid()


@task(backend="sqlite")
def on_sqlite(email: str) -> str:
    return email
