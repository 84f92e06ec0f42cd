"""PostgreSQL NOTIFY channels stay valid for the longest schema name (63 bytes): the
wake-up and job-end channels of a long schema end in a digest of it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from offload import Offload, Worker


@pytest.fixture
def long_schema_url(postgres_dsn: str) -> Iterator[str]:
    schema = f"offload_long_{uuid.uuid4().hex}".ljust(63, "x")  # NAMEDATALEN - 1
    yield f"{postgres_dsn}?schema={schema}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


async def test_a_63_byte_schema_enqueues_wakes_and_pushes_results(long_schema_url: str) -> None:
    # Before, `pg_notify('offload.<63 bytes>', ...)` failed: every enqueue raised.
    app = Offload(long_schema_url)

    @app.task(name="ok")
    async def ok(n: int) -> int:
        return n

    worker = Worker(app, poll_s=30.0)  # only a NOTIFY can wake it in time
    running = asyncio.create_task(worker.run())
    try:
        await asyncio.sleep(0.3)  # the worker is idle and listening
        started = time.monotonic()
        job = await ok.enqueue_async(7)
        assert await job.result_async(timeout=10) == 7
        assert time.monotonic() - started < 5
    finally:
        worker.stop()
        await running
        await app.aclose()
