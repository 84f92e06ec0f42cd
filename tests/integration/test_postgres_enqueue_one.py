"""PostgreSQL: a call that enqueues one job (`enqueue_one`, plain parameters) stores the
same row as a batch (`enqueue`, one array per column), on every path that inserts."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

pytest.importorskip("psycopg")

import psycopg

from offload.brokers.postgres import PostgresBroker
from offload.codec import encode_envelope
from offload.envelope import Envelope
from offload.testing import FakeClock

T0 = 1_800_000_000.0

#: Every column but the ones that differ between two jobs by construction.
_COLUMNS = (
    "queue, task, state, priority, attempt, max_attempts, created_at, due_at, expires_at,"
    " payload, flow, cancel_requested, outbox_seq, stamp, publish_by"
)


def job(job_id: str, **fields: Any) -> tuple[Envelope, bytes]:
    """`job_id` with the same fields as every other job of this test."""
    envelope = Envelope(id=job_id, task="t", queue="q", created_at=T0, **fields)
    # The payload names the id; compare it with the id taken out.
    return envelope, encode_envelope(envelope).replace(job_id.encode(), b"ID")


def rows(broker: PostgresBroker, ids: list[str]) -> list[tuple[Any, ...] | None]:
    options = f"-c search_path={broker.settings.schema}"
    with psycopg.connect(broker.settings.conninfo, options=options) as conn:
        return [
            conn.execute(f"SELECT {_COLUMNS} FROM offload_jobs WHERE id = %s", (i,)).fetchone()
            for i in ids
        ]


@pytest.mark.parametrize(
    "fields",
    [
        {},
        {"priority": 7, "max_attempts": 3, "expires_at": T0 + 60},
        {"not_before": T0 + 30},  # scheduled
    ],
    ids=["plain", "options", "delayed"],
)
async def test_one_job_is_stored_as_in_a_batch(postgres_url: str, fields: dict[str, Any]) -> None:
    broker = PostgresBroker(postgres_url, clock=FakeClock(T0))
    await broker.connect()
    try:
        # Given one job enqueued alone, one in a batch, and one alone from sync code,
        [alone] = await broker.enqueue([job("alone", **fields)])
        batch = await broker.enqueue([job("batched", **fields), job("other")])
        blocking = await asyncio.to_thread(broker.enqueue_blocking, [job("blocking", **fields)])
        assert alone.created and batch[0].created and blocking and blocking[0].created
        # their rows are the same, column for column,
        one, batched, sync = rows(broker, ["alone", "batched", "blocking"])
        assert one == batched == sync
        # and a second call with the same id or key stores nothing.
        [again] = await broker.enqueue([job("alone", **fields)])
        assert (again.id, again.created) == ("alone", False)
        keyed = await broker.enqueue([job("k1", key="k", **fields)])
        [second] = await broker.enqueue([job("k2", key="k", **fields)])
        assert keyed[0].created and (second.id, second.created) == ("k1", False)
    finally:
        await broker.close()
