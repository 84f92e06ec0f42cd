"""A sync `task.enqueue()` on PostgreSQL runs its INSERT on the calling thread (a plain
psycopg pool), not through the portal's event loop, once the schema is known current:
with keys, in a forked child, after the server dropped the connection, and with
`max_depth` (which keeps the portal path)."""

from __future__ import annotations

import os
import threading
import uuid
from typing import Any

import psycopg
import pytest

from offload import Offload, QueueFull, Task
from offload.errors import BrokerUnavailable


def counting_hops(app: Offload) -> list[int]:
    """Count the calls that go through the portal (the thread hop)."""
    hops = [0]
    run = app.portal.run

    def counted(coro: Any) -> Any:
        hops[0] += 1
        return run(coro)

    app.portal.run = counted  # type: ignore[method-assign]
    return hops


def ping_app(url: str, **options: Any) -> tuple[Offload, Task[[int], int]]:
    """An app on `url` with one task, `ping`."""
    app = Offload(url, **options)

    @app.task(name="ping")
    def ping(n: int) -> int:
        return n

    return app, ping


def test_sync_enqueue_runs_on_the_calling_thread_after_the_first(postgres_url: str) -> None:
    app, ping = ping_app(postgres_url, max_queue_depth=None)
    hops = counting_hops(app)
    try:
        first = ping.enqueue(1)  # opens the broker (and migrates) through the portal
        assert hops[0] == 1
        second = ping.options(key="k").enqueue(2)
        again = ping.options(key="k").enqueue(3)  # the key holds on the fast path
        many = ping.enqueue_many([(4,), (5,)])
        assert hops[0] == 1
        assert (again.id, again.created) == (second.id, False)
        info = first.info()  # inspection still goes through the portal
        assert info.state.value == "queued" and [m.state().value for m in many] == ["queued"] * 2
    finally:
        app.close()


def test_a_bounded_queue_keeps_the_portal_path_and_its_limit(postgres_url: str) -> None:
    app, ping = ping_app(postgres_url, max_queue_depth=2)
    hops = counting_hops(app)
    try:
        ping.enqueue_many([(1,), (2,)])
        with pytest.raises(QueueFull):
            ping.enqueue(3)
        assert hops[0] == 2
    finally:
        app.close()


def test_a_forked_child_enqueues_on_a_pool_of_its_own(postgres_url: str) -> None:
    app, ping = ping_app(postgres_url)
    try:
        ping.enqueue(1)
        ping.enqueue(2)  # the parent's pool is open
        pid = os.fork()
        if pid == 0:  # the child: enqueue, and leave the parent's sessions alone
            # (the portal's loop thread did not survive the fork: a call through it
            # would hang, so the child gives up after 20 s)
            threading.Timer(20, os._exit, (2,)).start()
            code = 0
            try:
                ping.enqueue(3)
            except BaseException:
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        ping.enqueue(4)  # the parent's pool still works
        counts = app.portal.run(_counts(app))
        assert counts == 4
    finally:
        app.close()


async def _counts(app: Offload) -> int:
    stats = await (await app.connected_broker()).counts(["default"])
    return sum(stats["default"].states.values())


def test_a_connection_the_server_dropped_fails_one_call_and_the_next_one_works(
    postgres_url: str, postgres_dsn: str
) -> None:
    name = f"offload-test-{uuid.uuid4().hex[:12]}"  # only this test's connections are cut
    app, ping = ping_app(f"{postgres_url}&application_name={name}")
    try:
        ping.enqueue(1)
        ping.enqueue(2)
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            cut = admin.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = %s",
                (name,),
            ).fetchone()
        assert cut is not None and cut[0] >= 1
        results = []
        for n in range(3):
            try:
                results.append(ping.enqueue(10 + n).id)
            except BrokerUnavailable:
                results.append("unavailable")
        assert results.count("unavailable") <= 1 and results[-1] != "unavailable"
    finally:
        app.close()
