"""Pause flags and attempt history: the same contract on every broker."""

from __future__ import annotations

from offload import pausing
from offload.attempts import Attempt, AttemptOutcome, encode, history, job_with_history
from offload.brokers.base import Broker
from offload.testing import FakeClock
from tests.conformance.helpers import BOOM, enqueue_one, reserve_one


async def test_pause_flags_are_raised_once_lowered_once_and_listed(
    broker: Broker, clock: FakeClock
) -> None:
    assert await broker.paused() == {}
    assert await broker.set_paused("queue:mail", True)
    raised_at = clock.now()
    clock.advance(5)
    assert not await broker.set_paused("queue:mail", True)  # keeps its first time
    assert await broker.set_paused("schedule:nightly", True)
    flags = await broker.paused()
    assert set(flags) == {"queue:mail", "schedule:nightly"}
    assert abs(flags["queue:mail"] - raised_at) < 1e-3
    held = await pausing.paused(broker)
    assert list(held.queues) == ["mail"] and list(held.schedules) == ["nightly"]
    assert await broker.set_paused("queue:mail", False)
    assert not await broker.set_paused("queue:mail", False)
    assert set(await broker.paused()) == {"schedule:nightly"}


def _record(number: int, outcome: AttemptOutcome = AttemptOutcome.RETRIED) -> bytes:
    return encode(Attempt(number=number, outcome=outcome, worker_id="w1", error=BOOM))


async def test_attempt_records_keep_the_newest_count_the_dropped_and_ignore_repeats(
    broker: Broker,
) -> None:
    assert await broker.attempt_records("nope") == ([], 0)
    for n in range(1, 8):
        await broker.record_attempt("job-a", f"token-{n}", _record(n), keep=5)
    await broker.record_attempt("job-a", "token-7", _record(99), keep=5)  # a retried settle
    records, dropped = await broker.attempt_records("job-a")
    assert dropped == 2
    assert records == [_record(n) for n in range(3, 8)]
    assert await broker.attempt_records("job-b") == ([], 0)


async def test_history_shows_failures_the_lost_attempt_and_the_success(broker: Broker) -> None:
    job_id = await enqueue_one(broker)
    first = await reserve_one(broker, worker_id="w1")
    await broker.record_attempt(job_id, first.token, _record(1), keep=20)
    await broker.retry(first, at=broker.clock.now(), error=BOOM)
    second = await reserve_one(broker, worker_id="w2", lease_s=1)  # then its worker dies
    broker.clock.advance(2)  # type: ignore[attr-defined]
    third = await reserve_one(broker, worker_id="w3")
    assert (second.attempt, third.attempt) == (2, 3)
    await broker.ack(third, b"1", result_ttl_s=None)
    info = await job_with_history(broker, job_id)
    assert info is not None
    assert [(a.number, a.outcome) for a in info.attempts] == [
        (1, AttemptOutcome.RETRIED),
        (2, AttemptOutcome.LOST),
        (3, AttemptOutcome.SUCCEEDED),
    ]
    assert info.attempts[0].error == BOOM
    assert info.attempts[2].worker_id == "w3"
    assert info.attempts[2].finished_at is not None


async def test_history_of_a_job_stored_before_attempt_records_existed(broker: Broker) -> None:
    job_id = await enqueue_one(broker)
    lease = await reserve_one(broker)
    await broker.bury(lease, error=BOOM)  # no record: as an older worker left it
    info = await job_with_history(broker, job_id)
    assert info is not None
    assert [(a.number, a.outcome, a.error) for a in info.attempts] == [
        (1, AttemptOutcome.LOST, BOOM)
    ]
    assert history(info, []) == info.attempts


async def test_a_sqlite_file_of_schema_6_gains_the_history_and_pause_tables(
    tmp_path: object,
) -> None:
    import sqlite3

    from offload.brokers import from_url

    url = f"sqlite:///{tmp_path}/old.db"
    old = from_url(url)
    await old.connect()
    job_id = await enqueue_one(old)
    await old.close()
    conn = sqlite3.connect(f"{tmp_path}/old.db")
    with conn:  # back to what version 6 left: no operations tables
        conn.execute("DROP TABLE offload_paused")
        conn.execute("DROP TABLE offload_attempts")
        conn.execute("UPDATE offload_meta SET value = '6' WHERE key = 'schema_version'")
    conn.close()
    upgraded = from_url(url)
    await upgraded.connect()
    try:
        info = await job_with_history(upgraded, job_id)
        assert info is not None and info.attempts == []
        assert await upgraded.set_paused("queue:default", True)
    finally:
        await upgraded.close()
