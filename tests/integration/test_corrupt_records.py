"""One corrupt job record costs one job, never the queue (issue 10, point 6).

Garbage is written straight into a real broker's storage (Redis hashes, SQL rows),
under one job among many on two queues. The worker must keep reserving, bury the bad
job as `dead` with reason `Undecodable`, run every other job, and inspection (the
handle, listings, the CLI) must show the bad job instead of raising.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs, urlsplit

import msgspec
import pytest

from offload import JobState, Offload, SerializationError, Worker

Corrupt = Callable[[str, str, str], None]  # (url, queue, job id)


def _redis_client(url: str) -> tuple[Any, str]:
    import redis
    from redis.cluster import RedisCluster

    parts = urlsplit(url)
    query = parse_qs(parts.query)
    prefix = query["prefix"][0]
    host, port = parts.hostname or "127.0.0.1", parts.port or 6379
    if query.get("cluster") == ["true"]:
        return RedisCluster(host=host, port=port), prefix
    db = int(parts.path.strip("/") or 0)  # OFFLOAD_TEST_REDIS may name another database
    return redis.Redis(host=host, port=port, db=db), prefix


def _redis_record(url: str, queue: str, job_id: str, change: Callable[[Any], bytes]) -> None:
    from offload.brokers.redis._executor import SCRIPTS
    from offload.brokers.redis.keys import queue_keys

    client, prefix = _redis_client(url)
    with client:
        keys = queue_keys(prefix, queue)
        client.eval(SCRIPTS.sources["expand"], len(keys), *keys)  # out of the inbox
        key = keys.record
        client.hset(key, job_id, change(msgspec.msgpack.decode(client.hget(key, job_id))))


def _redis_payload(url: str, queue: str, job_id: str) -> None:
    client, prefix = _redis_client(url)
    with client:
        client.hset(f"{prefix}:{{{queue}}}:payload", job_id, b"\xff not an envelope")


def _without(field: str) -> Callable[[Any], bytes]:
    def change(record: dict[str, Any]) -> bytes:
        record.pop(field)
        return msgspec.msgpack.encode(record)

    return change


def _with(field: str, value: Any) -> Callable[[Any], bytes]:
    def change(record: dict[str, Any]) -> bytes:
        record[field] = value
        return msgspec.msgpack.encode(record)

    return change


REDIS_CORRUPTIONS: dict[str, Corrupt] = {
    "record-garbage": lambda u, q, i: _redis_record(u, q, i, lambda r: b"junk\xff\x00"),
    "record-not-a-map": lambda u, q, i: _redis_record(u, q, i, lambda r: msgspec.msgpack.encode(7)),
    "record-missing-attempt": lambda u, q, i: _redis_record(u, q, i, _without("a")),
    "record-text-due-time": lambda u, q, i: _redis_record(u, q, i, _with("d", "soon")),
    "record-bad-state": lambda u, q, i: _redis_record(u, q, i, _with("s", "zombie")),
    "payload-garbage": _redis_payload,
}


def _sql(url: str, statement: str, job_id: str) -> None:
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn, conn:
            conn.execute(statement.replace("%s", "?"), (job_id,))
        return
    import psycopg

    parts = urlsplit(url)
    schema = parse_qs(parts.query)["schema"][0]
    with psycopg.connect(parts._replace(query="").geturl(), autocommit=True) as pg:
        pg.execute(f'SET search_path TO "{schema}"')
        pg.execute(statement, (job_id,))


SQL_CORRUPTIONS: dict[str, Corrupt] = {
    "payload-garbage": lambda u, q, i: _sql(
        u, "UPDATE offload_jobs SET payload = 'garbage' WHERE id = %s", i
    ),
    "payload-wrong-shape": lambda u, q, i: _sql(
        u, """UPDATE offload_jobs SET payload = '{"id": 5}' WHERE id = %s""", i
    ),
    "error-garbage": lambda u, q, i: _sql(
        u, "UPDATE offload_jobs SET payload = 'x', error = '{oops' WHERE id = %s", i
    ),
}

CASES = [
    *((b, name) for b in ("redis", "redis_cluster") for name in REDIS_CORRUPTIONS),
    *((b, name) for b in ("sqlite", "postgres") for name in SQL_CORRUPTIONS),
]


def _corruption(broker_name: str, name: str) -> Corrupt:
    return (REDIS_CORRUPTIONS if broker_name.startswith("redis") else SQL_CORRUPTIONS)[name]


@pytest.mark.parametrize(("broker_name", "corruption"), CASES)
async def test_one_corrupt_job_is_buried_and_every_other_job_runs(
    broker_url: Callable[[str], str], broker_name: str, corruption: str
) -> None:
    url = broker_url(broker_name)
    app = Offload(url)

    @app.task(name="a.echo", queue="a")
    def echo_a(x: int) -> int:
        return x

    @app.task(name="b.echo", queue="b")
    def echo_b(x: int) -> int:
        return x

    try:
        jobs_a = [await echo_a.enqueue_async(i) for i in range(5)]
        jobs_b = [await echo_b.enqueue_async(i) for i in range(5)]
        bad = jobs_a[2]
        _corruption(broker_name, corruption)(url, "a", bad.id)

        before = await bad.info_async()  # inspection never raises on a bad record
        broker = await app.connected_broker()
        listed = (await broker.list_jobs(queue="a", limit=50)).items
        assert bad.id in {info.id for info in listed}
        queued = (await broker.list_jobs(queue="a", state=before.state, limit=50)).items
        assert bad.id in {info.id for info in queued}  # listed as what info() says

        await Worker(app, queues=["a", "b"], concurrency=4).drain()

        info = await bad.info_async()
        assert info.state is JobState.DEAD, (before, info)
        assert info.error is not None and info.error.type == "Undecodable", info.error
        others = [j for j in jobs_a + jobs_b if j != bad]
        results = [await j.result_async(timeout=10) for j in others]
        assert results == [0, 1, 3, 4, 0, 1, 2, 3, 4]
        dead = (await broker.list_jobs(state=JobState.DEAD, limit=50)).items
        assert [d.id for d in dead] == [bad.id]

        # the queue still works for a good job afterwards
        later = await echo_a.enqueue_async(99)
        await Worker(app, queues=["a", "b"]).drain()
        assert await later.result_async(timeout=10) == 99
    finally:
        await app.aclose()


@pytest.mark.parametrize("broker_name", ["sqlite", "postgres", "redis"])
def test_cli_shows_a_corrupt_job_instead_of_failing(
    broker_url: Callable[[str], str], broker_name: str
) -> None:
    url = broker_url(broker_name)
    app = Offload(url)
    try:
        good = app.enqueue("t.good", 1)
        bad = app.enqueue("t.bad", 2)
        app.enqueue("t.done", 3)
    finally:
        app.close()
    if broker_name == "redis":
        _redis_record(url, "default", bad.id, lambda r: b"junk\xff")
    else:
        garbage = "SET payload = 'x', state = 'succeeded', result = 'y{'"
        _sql(url, f"UPDATE offload_jobs {garbage} WHERE id = %s", bad.id)

    def offload(*args: str) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "OFFLOAD_URL": url}
        return subprocess.run(
            [sys.executable, "-m", "offload", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )

    for command in (["show", bad.id, "--json"], ["jobs", "--json"], ["dlq", "list"], ["status"]):
        done = offload(*command)
        assert done.returncode == 0, (command, done.stderr)
        assert "Traceback" not in done.stderr
    shown = json.loads(offload("show", bad.id, "--json").stdout)
    assert shown["id"] == bad.id
    listed = [json.loads(line)["id"] for line in offload("jobs", "--json").stdout.splitlines()]
    assert {good.id, bad.id} <= set(listed)
    assert bad.id in offload("show", bad.id).stdout
    if broker_name != "redis":  # the handle names a garbage result in offload's terms
        app = Offload(url)
        try:
            with pytest.raises(SerializationError, match="stored result of job"):
                app.job(bad.id).result(timeout=5)
        finally:
            app.close()


async def test_sqlite_numbers_overwritten_with_text_do_not_stop_reservation(
    broker_url: Callable[[str], str],
) -> None:
    """SQLite stores text in an INTEGER column; such a row must not fail `reserve`
    for its queues (it raised TypeError in Python, for every reservation)."""
    url = broker_url("sqlite")
    app = Offload(url)

    @app.task(name="a.echo", queue="a")
    def echo_a(x: int) -> int:
        return x

    @app.task(name="b.echo", queue="b")
    def echo_b(x: int) -> int:
        return x

    try:
        jobs = [await echo_a.enqueue_async(i) for i in range(3)]
        jobs += [await echo_b.enqueue_async(i) for i in range(3)]
        _sql(
            url,
            "UPDATE offload_jobs SET attempt = 'x', priority = 'high' WHERE id = %s",
            jobs[1].id,
        )
        _sql(url, "UPDATE offload_jobs SET due_at = 'soon' WHERE id = %s", jobs[4].id)
        await Worker(app, queues=["a", "b"]).drain()
        assert [await j.result_async(timeout=10) for j in jobs] == [0, 1, 2, 0, 1, 2]
    finally:
        await app.aclose()
