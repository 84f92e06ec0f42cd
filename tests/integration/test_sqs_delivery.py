"""SQS as a delivery layer, against a real SQS-compatible server (moto's server mode,
started by the tests as a process): leases, batches, delays past SQS's cap, dead
letters, FIFO order, sizes, and the URL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import pytest

from offload.brokers.sqs import Outgoing, Received, SQSConfig, SQSDelivery
from offload.brokers.sqs.config import MAX_VISIBILITY_S
from offload.brokers.sqs.topology import sqs_base_name
from offload.errors import ConfigurationError, SerializationError
from offload.testing import FakeClock


@pytest.fixture
async def delivery(sqs_url: str) -> AsyncIterator[SQSDelivery]:
    d = SQSDelivery(SQSConfig.from_url(sqs_url))
    await d.connect()
    try:
        yield d
    finally:
        await d.close()


def job(n: int, queue: str = "default", **fields: object) -> Outgoing:
    return Outgoing(f"job{n:04d}", queue, json.dumps({"n": n}).encode(), **fields)  # type: ignore[arg-type]


async def until_received(d: SQSDelivery, queue: str, within: float = 30) -> Received:
    """The next message of `queue`, polling (SQS's delays are whole seconds, and a
    loaded machine adds its own)."""
    deadline = d.clock.now() + within
    while d.clock.now() < deadline:
        got = await d.receive([queue], limit=1, visibility_s=30)
        if got:
            return got[0]
        await asyncio.sleep(0.3)
    raise AssertionError(f"nothing arrived in {queue!r} within {within} s")


async def test_a_batch_sent_is_received_once_each_and_leased_to_one_consumer(
    delivery: SQSDelivery, sqs_url: str
) -> None:
    await delivery.send([job(i) for i in range(25)])  # three SendMessageBatch calls
    first = await delivery.receive(["default"], limit=25, visibility_s=30)
    assert sorted(m.job_id for m in first) == [f"job{i:04d}" for i in range(25)]
    assert {m.attempt for m in first} == {1}
    other = SQSDelivery(SQSConfig.from_url(sqs_url))
    await other.connect()
    try:
        assert await other.receive(["default"], limit=10, visibility_s=30) == []
    finally:
        await other.close()
    assert all(await delivery.delete(first))
    assert await delivery.receive(["default"], limit=10, visibility_s=30) == []


async def test_a_lapsed_visibility_redelivers_with_the_attempt_counted(
    delivery: SQSDelivery,
) -> None:
    await delivery.send([job(1)])
    [first] = await delivery.receive(["default"], limit=1, visibility_s=1)
    await asyncio.sleep(1.6)  # its lease lapsed: another consumer may take the job
    [again] = await delivery.receive(["default"], limit=1, visibility_s=30)
    assert again.job_id == first.job_id
    assert again.attempt == 2
    # the first receipt is stale now: its holder must stop claiming the job
    assert await delivery.extend([first], 30) == [False]
    assert await delivery.extend([again], 30) == [True]


async def test_extend_keeps_a_job_from_other_consumers_past_its_first_lease(
    delivery: SQSDelivery,
) -> None:
    await delivery.send([job(1)])
    [held] = await delivery.receive(["default"], limit=1, visibility_s=4)
    for _ in range(3):
        await asyncio.sleep(1.5)
        assert await delivery.extend([held], 4) == [True]
    assert await delivery.receive(["default"], limit=1, visibility_s=30) == []


async def test_extend_answers_false_when_the_12_hour_cap_would_cut_the_lease(
    delivery: SQSDelivery, sqs_url: str
) -> None:
    clock = FakeClock()
    aged = SQSDelivery(SQSConfig.from_url(sqs_url), clock=clock)
    await aged.connect()
    try:
        await aged.send([job(1)])
        [held] = await aged.receive(["default"], limit=1, visibility_s=30)
        assert await aged.extend([held], MAX_VISIBILITY_S - 60) == [True]
        clock.advance(MAX_VISIBILITY_S - 100)  # 100 s left of SQS's 12 hours
        assert await aged.extend([held], 30) == [True]
        assert await aged.extend([held], 120) == [False]
    finally:
        await aged.close()


async def test_release_gives_a_job_back_at_once_without_counting_an_attempt(
    delivery: SQSDelivery,
) -> None:
    await delivery.send([job(1), job(2)])
    got = await delivery.receive(["default"], limit=2, visibility_s=300)
    await delivery.release(got)
    again = await delivery.receive(["default"], limit=2, visibility_s=300)
    assert sorted(m.job_id for m in again) == ["job0001", "job0002"]
    assert {m.attempt for m in again} == {1}


async def test_a_short_delay_is_held_by_sqs_until_due(delivery: SQSDelivery) -> None:
    now = delivery.clock.now()
    await delivery.send([job(1, due=now + 4)])
    assert await delivery.receive(["default"], limit=1, visibility_s=30) == []
    got = await until_received(delivery, "default")
    assert got.job_id == "job0001"
    assert delivery.clock.now() >= now + 4


async def test_a_delay_past_the_sqs_cap_hops_until_due_and_keeps_its_attempts(
    delivery: SQSDelivery,
) -> None:
    # SQS holds a message at most 15 minutes; here the cap is 1 s so that the hops
    # happen within the test: the job, due in 3.5 s, is received early (after each 1 s
    # delay), sent on with the rest, and handed out only once due.
    delivery.max_delay_s = 1
    due = delivery.clock.now() + 3.5
    await delivery.send([job(1, due=due, attempt=2)])
    early = 0
    while True:
        got = await delivery.receive(["default"], limit=1, visibility_s=30, wait_s=1)
        if got:
            break
        early += 1
    [message] = got
    assert delivery.clock.now() >= due - 0.5
    assert (message.job_id, message.attempt, message.due) == ("job0001", 3, due)
    assert early >= 2
    assert (await delivery.depth("default"))["delayed"] == 0  # no copy left behind


async def test_bury_moves_a_job_to_the_dead_letter_queue_with_its_reason_and_replay_brings_it_back(
    delivery: SQSDelivery,
) -> None:
    await delivery.send([job(1), job(2)])
    got = sorted(
        await delivery.receive(["default"], limit=2, visibility_s=30), key=lambda m: m.job_id
    )
    reason = json.dumps({"type": "ValueError", "message": "boom"})
    assert await delivery.move([(got[0], got[0].outgoing(attempt=1, due=None, error=reason))]) == [
        True
    ]
    assert all(await delivery.delete(got[1:]))
    [dead] = await delivery.dead("default")
    assert (dead.job_id, dead.error, dead.body) == ("job0001", reason, got[0].body)
    assert await delivery.receive(["default"], limit=2, visibility_s=30) == []
    assert await delivery.replay_dead("default") == 1
    [back] = await delivery.receive(["default"], limit=2, visibility_s=30)
    assert (back.job_id, back.attempt, back.error) == ("job0001", 1, None)
    assert await delivery.dead("default") == []


async def test_a_message_received_redrive_times_without_settling_is_redriven_to_the_dlq(
    sqs_server: object, sqs_url: str
) -> None:
    d = SQSDelivery(SQSConfig.from_url(sqs_url + "&redrive=2"))
    await d.connect()
    try:
        await d.send([job(1)])
        for _ in range(2):
            assert len(await d.receive(["default"], limit=1, visibility_s=1)) == 1
            await asyncio.sleep(1.3)
        assert await d.receive(["default"], limit=1, visibility_s=1) == []
        assert [m.job_id for m in await d.dead("default")] == ["job0001"]
        assert await d.purge_dead("default") == 1
        assert await d.dead("default") == []
    finally:
        await d.close()


async def test_a_retry_moves_the_job_with_its_attempts_and_delay(delivery: SQSDelivery) -> None:
    await delivery.send([job(1)])
    [got] = await delivery.receive(["default"], limit=1, visibility_s=30)
    now = delivery.clock.now()
    assert await delivery.move([(got, got.outgoing(attempt=got.attempt, due=now + 4))]) == [True]
    assert await delivery.receive(["default"], limit=1, visibility_s=30) == []
    again = await until_received(delivery, "default")
    assert delivery.clock.now() >= now + 4
    assert again.attempt == 2  # one used before the retry, this is the second
    assert await delivery.move([(got, got.outgoing(attempt=1, due=None))]) == [False]  # stale


async def test_fifo_queues_deliver_in_order_and_hold_later_jobs_while_one_runs(
    sqs_server: object, sqs_url: str
) -> None:
    d = SQSDelivery(SQSConfig.from_url(sqs_url + "&fifo=ordered"))
    await d.connect()
    try:
        await d.send([job(i, "ordered") for i in range(15)])
        seen: list[str] = []
        while len(seen) < 15:
            got = await d.receive(["ordered"], limit=4, visibility_s=30)
            assert got, seen
            seen += [m.job_id for m in got]
            # while these are leased, the rest of the group waits
            assert await d.receive(["ordered"], limit=4, visibility_s=30) == []
            assert all(await d.delete(got))
        assert seen == [f"job{i:04d}" for i in range(15)]
    finally:
        await d.close()


async def test_fifo_send_retried_within_the_dedup_window_stores_one_copy(
    sqs_server: object, sqs_url: str
) -> None:
    d = SQSDelivery(SQSConfig.from_url(sqs_url + "&fifo=ordered"))
    await d.connect()
    try:
        await d.send([job(1, "ordered")])
        await d.send([job(1, "ordered")])  # the producer's retry of the same enqueue
        got = await d.receive(["ordered"], limit=10, visibility_s=30)
        assert [m.job_id for m in got] == ["job0001"]
    finally:
        await d.close()


async def test_fifo_delayed_jobs_wait_in_the_side_queue_and_are_promoted_when_due(
    sqs_server: object, sqs_url: str
) -> None:
    d = SQSDelivery(SQSConfig.from_url(sqs_url + "&fifo=ordered"))
    await d.connect()
    try:
        now = d.clock.now()
        await d.send([job(1, "ordered", due=now + 5), job(2, "ordered")])
        [first] = await d.receive(["ordered"], limit=10, visibility_s=30)
        assert first.job_id == "job0002"
        assert all(await d.delete([first]))
        assert await d.receive(["ordered"], limit=10, visibility_s=30) == []
        later = await until_received(d, "ordered")
        assert later.job_id == "job0001"
        assert d.clock.now() >= now + 5
    finally:
        await d.close()


async def test_long_polling_returns_as_soon_as_a_job_arrives(delivery: SQSDelivery) -> None:
    await delivery.topology.get("default")
    loop = asyncio.get_running_loop()
    started = loop.time()
    poll = asyncio.create_task(delivery.receive(["default"], limit=1, visibility_s=30, wait_s=10))
    await asyncio.sleep(0.5)
    await delivery.send([job(1)])
    [got] = await poll
    assert got.job_id == "job0001"
    assert loop.time() - started < 5


async def test_a_message_over_the_size_limit_is_refused_naming_the_job(
    delivery: SQSDelivery,
) -> None:
    big = Outgoing("bigjob", "default", b'"' + b"x" * 262_144 + b'"')
    with pytest.raises(SerializationError, match=r"bigjob.*262144"):
        await delivery.send([big, job(1)])
    assert await delivery.receive(["default"], limit=10, visibility_s=30) == []


async def test_bodies_sqs_cannot_hold_as_text_travel_as_base64(delivery: SQSDelivery) -> None:
    odd = [b"\xff\xfe not utf-8", '"\ufffe"'.encode()]
    await delivery.send([Outgoing(f"odd{i}", "default", body) for i, body in enumerate(odd)])
    got = await delivery.receive(["default"], limit=10, visibility_s=30)
    assert sorted((m.job_id, m.body) for m in got) == [("odd0", odd[0]), ("odd1", odd[1])]


async def test_queue_names_sqs_cannot_hold_map_to_distinct_valid_names(
    delivery: SQSDelivery,
) -> None:
    names = ["emails:high", "emails high", "x" * 200, "a-dlq", "ünïcode"]
    sqs_names = {sqs_base_name("offload", n) for n in names}
    assert len(sqs_names) == len(names)
    assert all(len(n) <= 69 for n in sqs_names)
    await delivery.send([job(i, q) for i, q in enumerate(names)])
    for i, q in enumerate(names):
        [got] = await delivery.receive([q], limit=10, visibility_s=30)
        assert (got.job_id, got.queue) == (f"job{i:04d}", q)
    assert await delivery.topology.listed() == sorted(names)


def test_the_url_names_a_bad_option_and_hides_the_secret() -> None:
    with pytest.raises(ConfigurationError, match=r"unknown sqs URL option.*bogus") as info:
        SQSConfig.from_url("sqs://AKID:s3cret@127.0.0.1:9324/?bogus=1")
    assert "s3cret" not in str(info.value)
    with pytest.raises(ConfigurationError, match="wait='99' must be an integer from 0 to 20"):
        SQSConfig.from_url("sqs://127.0.0.1/?wait=99")
    config = SQSConfig.from_url(
        "sqs://AKID:s3cret@127.0.0.1:9324/?region=eu-west-1"
        "&state=postgresql%3A%2F%2Fu%3Ast8secret%40h%2Fdb"
    )
    assert config.endpoint_url == "http://127.0.0.1:9324"
    assert config.state == "postgresql://u:st8secret@h/db"
    assert "s3cret" not in repr(config) and "st8secret" not in repr(config)
    assert "st8secret" not in repr(SQSDelivery(config))
    aws = SQSConfig.from_url("sqs:///?region=eu-west-1")
    assert (aws.endpoint_url, aws.access_key_id) == (None, None)  # boto's chain, AWS's endpoint
    assert SQSConfig.from_url("sqs://sqs.example.com/").endpoint_url == "https://sqs.example.com"


async def test_fifo_copies_of_one_delayed_send_are_promoted_once(
    sqs_server: object, sqs_url: str
) -> None:
    # two copies of one delayed send (a producer's retry, or a hop repeated after a
    # crash) wait in the delay queue; promoted, they carry one deduplication id
    d = SQSDelivery(SQSConfig.from_url(sqs_url + "&fifo=ordered"))
    await d.connect()
    try:
        due = d.clock.now() + 1.2
        await d.send([job(1, "ordered", due=due)])
        await d.send([job(1, "ordered", due=due)])
        first = await until_received(d, "ordered")
        await asyncio.sleep(1.0)  # the second copy, if it were promoted, would be there
        rest = await d.receive(["ordered"], limit=10, visibility_s=30)
        assert [m.job_id for m in [first, *rest]] == ["job0001"]
        assert (await d.depth("ordered"))["delayed"] == 0
    finally:
        await d.close()
