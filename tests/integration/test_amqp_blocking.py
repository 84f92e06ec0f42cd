"""The sync producer's own path on RabbitMQ (`offload.brokers.amqp._blocking`): a plain
sync enqueue publishes from the calling thread, with confirms, on a pooled pika
connection, and the consumer cannot tell its message from the asyncio path's. Against
the real server: several threads at once, a connection the server closes, one idle
past the heartbeat, a forked child, an unreachable server (no password shown, pika's
logs demoted)."""

from __future__ import annotations

import asyncio
import logging
import subprocess
import sys
import textwrap
import time
from typing import Any

import aiormq
import aiormq.abc
import pytest

from offload import Offload
from offload.brokers.amqp import AmqpDelivery
from offload.brokers.amqp._blocking import BlockingPublisher
from offload.brokers.amqp.settings import parse_url
from offload.clock import SystemClock
from offload.errors import BrokerUnavailable, ConfigurationError
from tests.conformance.helpers import make_job
from tests.integration.test_amqp_delivery import MakeDelivery, make_delivery, take

__all__ = ["make_delivery"]  # the fixture, shared with test_amqp_delivery.py

pytestmark = pytest.mark.timeout(60)

CLOCK = SystemClock()


async def declared(delivery: AmqpDelivery) -> None:
    """What a first enqueue does before it publishes: the queue declared (by the
    asyncio path), without consuming it."""
    await delivery._out.declare_work("default")


def blocking(delivery: AmqpDelivery, **fields: Any) -> str:
    """One job through `enqueue_blocking` (never left to `enqueue`)."""
    envelope, payload = make_job(CLOCK, **fields)
    results = delivery.enqueue_blocking([(envelope, payload)])
    assert results is not None, "the job was left to the asyncio path"
    [result] = results
    assert result.created and result.id == envelope.id
    return envelope.id


def close_our_connections(prefix: str) -> int:
    """Close, from the server, the sync producer's connections of this test (named
    after its prefix; nobody else's); returns how many."""
    listing = subprocess.run(
        ["rabbitmqctl", "-q", "list_connections", "pid", "client_properties"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    pids = [line.split("\t")[0] for line in listing.splitlines() if prefix in line]
    for pid in pids:
        subprocess.run(
            ["rabbitmqctl", "-q", "close_connection", pid, "closed by the test"],
            capture_output=True,
            check=True,
        )
    return len(pids)


async def test_a_sync_enqueue_is_confirmed_and_consumed_as_the_async_path_sends_it(
    make_delivery: MakeDelivery, amqp_url: str
) -> None:
    producer = await make_delivery()
    await declared(producer)
    expires = CLOCK.now() + 600
    fields: dict[str, Any] = {"args": [1, "x"], "priority": 3, "expires_at": expires}
    sent = make_job(CLOCK, **fields)
    await producer.enqueue([sent])
    envelope, payload = make_job(CLOCK, **fields)
    results = await asyncio.to_thread(producer.enqueue_blocking, [(envelope, payload)])
    assert results is not None and [r.id for r in results] == [envelope.id]
    # The consumer reads both raw: their properties are the same but for the id.
    names = producer.names
    connection = await aiormq.connect(amqp_url.partition("?")[0])
    try:
        channel = await connection.channel()
        got: list[aiormq.abc.DeliveredMessage] = []
        deadline = time.monotonic() + 10
        while len(got) < 2 and time.monotonic() < deadline:
            message = await channel.basic_get(names.work("default"), no_ack=True)
            if message.delivery_tag is not None and message.body:
                got.append(message)
            else:
                await asyncio.sleep(0.05)
    finally:
        await connection.close()
    assert [str(m.header.properties.message_id) for m in got] == [sent[0].id, envelope.id]
    a, b = (m.header.properties for m in got)
    b.message_id = a.message_id
    assert a == b
    assert a.priority == 8 and a.delivery_mode == 2 and a.content_type == "application/json"
    assert [m.body for m in got] == [sent[1], payload]


async def test_a_sync_enqueue_the_server_cannot_route_raises_and_is_left_to_the_async_path_next(
    make_delivery: MakeDelivery,
) -> None:
    # Given: a declared queue, deleted behind the producer's back.
    producer = await make_delivery()
    await declared(producer)
    async with producer.link.channel() as channel:
        await channel.queue_delete(producer.names.work("default"))
    # Then: the publish is refused (a confirm with a return), not silently dropped.
    with pytest.raises(BrokerUnavailable, match="did not take"):
        await asyncio.to_thread(blocking, producer)
    envelope, payload = make_job(CLOCK)
    assert producer.enqueue_blocking([(envelope, payload)]) is None  # declared again first
    await producer.enqueue([(envelope, payload)])
    [lease] = await take(producer, 1)
    assert lease.job_id == envelope.id


async def test_sync_enqueues_from_many_threads_at_once_all_arrive_once(
    make_delivery: MakeDelivery,
) -> None:
    producer = await make_delivery()
    await declared(producer)

    def burst(n: int) -> list[str]:
        return [blocking(producer, args=[n, i]) for i in range(25)]

    batches = await asyncio.gather(*(asyncio.to_thread(burst, n) for n in range(8)))
    sent = [job_id for batch in batches for job_id in batch]
    consumer = await make_delivery()
    leases = await take(consumer, len(sent))
    assert sorted(lease.job_id for lease in leases) == sorted(sent)
    assert await consumer.reserve(("default",), worker_id="w", lease_s=30, limit=10) == []


async def test_a_connection_the_server_closed_is_replaced_and_pika_logs_nothing_above_debug(
    make_delivery: MakeDelivery, amqp_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    producer = await make_delivery()
    await declared(producer)
    first = await asyncio.to_thread(blocking, producer)
    assert await asyncio.to_thread(close_our_connections, producer.settings.prefix) >= 1
    caplog.set_level(logging.DEBUG)
    second = await asyncio.to_thread(blocking, producer)  # on a fresh connection
    leases = await take(producer, 2)
    assert {lease.job_id for lease in leases} == {first, second}
    loud = [r for r in caplog.records if r.name.startswith("pika") and r.levelno > logging.DEBUG]
    assert loud == []
    lost = [r for r in caplog.records if "sync producer lost" in r.getMessage()]
    assert len(lost) == 1 and lost[0].name == "offload.brokers.amqp"


async def test_a_connection_idle_past_the_heartbeat_is_replaced_not_tried(
    make_delivery: MakeDelivery, caplog: pytest.LogCaptureFixture
) -> None:
    producer = await make_delivery(heartbeat="1")
    await declared(producer)
    first = await asyncio.to_thread(blocking, producer)
    await asyncio.sleep(3.5)  # RabbitMQ drops a connection silent for two heartbeats
    caplog.set_level(logging.DEBUG, logger="offload")
    second = await asyncio.to_thread(blocking, producer)
    assert not [r for r in caplog.records if "sync producer lost" in r.getMessage()]
    leases = await take(producer, 2)
    assert {lease.job_id for lease in leases} == {first, second}


FORKED = """
import asyncio, os, sys
from offload.brokers.amqp import AmqpDelivery
from tests.conformance.helpers import make_job
from tests.integration.test_amqp_delivery import MakeDelivery, make_delivery, take

__all__ = ["make_delivery"]  # the fixture, shared with test_amqp_delivery.py
from offload.clock import SystemClock

delivery = AmqpDelivery(sys.argv[1])
asyncio.run(delivery.enqueue([make_job(SystemClock())]))  # declares the queue
delivery.enqueue_blocking([make_job(SystemClock())])  # the parent's connection
pid = os.fork()
if pid == 0:
    ok = delivery.enqueue_blocking([make_job(SystemClock())]) is not None
    idle = delivery._out.blocking._idle
    mine = bool(idle) and all(conn.pid == os.getpid() for conn in idle)
    os._exit(0 if ok and mine else 3)
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0, "the child reused its parent's connection"
delivery.enqueue_blocking([make_job(SystemClock())])  # the parent's, still good
print("ok")
"""


async def test_a_forked_child_opens_its_own_connection(
    make_delivery: MakeDelivery, amqp_url: str
) -> None:
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", textwrap.dedent(FORKED), amqp_url],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr
    consumer = await make_delivery()
    assert len(await take(consumer, 4)) == 4  # the first, the parent's two, the child's


def test_an_unreachable_server_raises_broker_unavailable_without_the_password(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    publisher = BlockingPublisher(parse_url("amqp://guest:s3cr3t-pw@127.0.0.1:1/?prefix=x"))
    with pytest.raises(BrokerUnavailable) as raised:
        publisher.publish(b"{}", routing_key="x.default", job_id="j", priority=0, headers=None)
    assert "s3cr3t-pw" not in f"{raised.value} {raised.value!r} {raised.value.__cause__!r}"
    assert "s3cr3t-pw" not in caplog.text
    loud = [r for r in caplog.records if r.name.startswith("pika") and r.levelno > logging.DEBUG]
    assert loud == []
    assert any(r.name == "offload.brokers.amqp.pika" for r in caplog.records)


def test_a_refused_login_is_a_configuration_error_without_the_password(amqp_server: str) -> None:
    host = amqp_server.rpartition("@")[2]
    publisher = BlockingPublisher(parse_url(f"amqp://guest:n0t-the-pw@{host}"))
    with pytest.raises(ConfigurationError) as raised:
        publisher.publish(b"{}", routing_key="x.default", job_id="j", priority=0, headers=None)
    assert "n0t-the-pw" not in f"{raised.value} {raised.value!r}"


def test_a_task_enqueued_from_sync_code_takes_the_calling_threads_path(amqp_url: str) -> None:
    app = Offload(amqp_url)

    @app.task(name="add")
    def add(a: int, b: int) -> int:
        return a + b

    try:
        first = add.enqueue(1, 2)  # the portal path: declares the queue
        portal_broker = app.producer.portal_broker
        assert portal_broker is not None
        delivery = portal_broker.delivery  # type: ignore[attr-defined]
        assert delivery._out.blocking._idle == []
        second = add.enqueue(3, 4)
        assert len(delivery._out.blocking._idle) == 1  # published, confirmed, given back
        assert first.id != second.id
    finally:
        app.close()
