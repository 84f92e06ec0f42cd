"""The sync producer's direct connection (`brokers/redis/_blocking.py`): its own socket
reads and writes, and how it fails over to the pooled client."""

from __future__ import annotations

import multiprocessing
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import hiredis
import pytest
import redis
from redis.exceptions import ResponseError

from offload import Offload
from offload.brokers.redis import RedisBroker, _blocking
from offload.brokers.redis._blocking import BlockingClient
from offload.brokers.redis._connection import parse_url
from offload.envelope import new_job_id
from offload.errors import BrokerError
from tests.conformance.helpers import make_job


def sync_app(url: str) -> tuple[Offload, Any, RedisBroker]:
    app = Offload(url)

    @app.task(name="t")
    def t(n: int) -> None:
        pass

    t.enqueue(0)  # records the queue: later calls take the sync path
    broker = app.producer.portal_broker or app.producer.broker  # the one `send` uses
    assert isinstance(broker, RedisBroker)
    return app, t, broker


def stored(broker: RedisBroker, job_ids: list[str]) -> int:
    """How many of `job_ids` have a payload in the queue."""
    q = broker._x.q("default")
    with redis.Redis.from_url(broker.options.redis_url) as client:
        return sum(client.hexists(q.payload, job_id) for job_id in job_ids)


def test_a_reply_spread_over_many_reads_is_read_whole(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One byte per `recv`: every reply (1 alone, [id, created]) takes many reads."""
    monkeypatch.setattr(_blocking, "_READ_SIZE", 1)
    app, t, broker = sync_app(redis_url)
    try:
        plain = t.enqueue(1)
        keyed = t.options(key="k").enqueue(2)
        again = t.options(key="k").enqueue(3)
        assert broker._blocking._sock is not None  # they took the direct connection
        assert plain.created and keyed.created
        assert (again.id, again.created) == (keyed.id, False)
        assert stored(broker, [plain.id, keyed.id]) == 2
    finally:
        app.close()


def test_a_killed_direct_connection_loses_and_doubles_nothing(redis_url: str) -> None:
    """Redis drops the direct connection between two enqueues: the next one fails
    over to the pooled client, and the one after opens a fresh direct connection."""
    app, t, broker = sync_app(redis_url)
    admin = redis.Redis.from_url(broker.options.redis_url)
    try:
        first = t.enqueue(1)
        sock = broker._blocking._sock
        assert sock is not None
        host, port = sock.getsockname()[:2]
        assert admin.client_kill(f"{host}:{port}")  # that connection alone
        second = t.enqueue(2)
        third = t.enqueue(3)
        assert broker._blocking._sock is not None and broker._blocking._sock is not sock
        ids = [first.id, second.id, third.id]
        assert len(set(ids)) == 3 and stored(broker, ids) == 3
        q = broker._x.q("default")
        assert admin.llen(q.inbox) + admin.zcard(q.ready) == 4  # with sync_app's first
    finally:
        admin.close()
        app.close()


def test_an_error_reply_is_a_broker_error_caused_by_redis_pys_error(redis_url: str) -> None:
    app, t, broker = sync_app(redis_url)
    try:
        name, keys, args = broker._enqueuing.one_call(
            make_job(broker.clock, id=new_job_id()), time.time(), None
        )
        bad = (name, keys, [*args[:6], b"\xc1", ""])  # not msgpack: the script errs
        with pytest.raises(BrokerError, match="Redis error") as caught:
            broker._blocking.run_one(bad)
        assert type(caught.value.__cause__) is ResponseError
        assert broker._blocking._sock is not None  # kept: the reply was read whole
        job = t.enqueue(4)
        assert stored(broker, [job.id]) == 1
    finally:
        app.close()


def test_a_forked_child_opens_its_own_direct_connection(redis_url: str) -> None:
    app, t, broker = sync_app(redis_url)
    try:
        t.enqueue(1)
        sock = broker._blocking._sock
        assert sock is not None
        parent_end = sock.getsockname()
        context = multiprocessing.get_context("fork")
        answers = context.Queue()

        def child() -> None:
            # The child's producer has a broker of its own (the parent's is left alone),
            # whose first enqueue records the queue, as `sync_app` did.
            t.enqueue(2)
            job = t.enqueue(2)
            mine = app.producer.portal_broker or app.producer.broker
            assert isinstance(mine, RedisBroker) and mine is not broker
            child_sock = mine._blocking._sock
            answers.put((job.id, child_sock.getsockname() if child_sock else None))

        process = context.Process(target=child)
        process.start()
        job_id, child_end = answers.get(timeout=30)
        process.join(30)
        assert child_end is not None and child_end != parent_end
        after = t.enqueue(3)
        assert broker._blocking._sock is sock  # the parent's is still its own
        assert stored(broker, [job_id, after.id]) == 2
    finally:
        app.close()


@pytest.fixture
def silent_redis() -> Iterator[int]:
    """A server that answers +OK to every command but EVALSHA, which it never answers
    (a Redis that stopped responding mid-call); yields its port."""
    server = socket.create_server(("127.0.0.1", 0))
    peers: list[socket.socket] = []

    def serve(conn: socket.socket) -> None:
        reader = hiredis.Reader()
        with conn:
            while data := conn.recv(65536):
                reader.feed(data)
                while (command := reader.gets()) is not False:
                    if command[0].upper() != b"EVALSHA":
                        conn.sendall(b"+OK\r\n")

    def accept() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            peers.append(conn)
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    try:
        yield server.getsockname()[1]
    finally:
        server.close()
        for conn in peers:
            conn.close()


def test_a_call_that_gets_no_reply_times_out_as_the_url_says(silent_redis: int) -> None:
    client = BlockingClient(parse_url(f"redis://127.0.0.1:{silent_redis}?socket_timeout=0.3"), "x")
    call = ("enqueue_one", ["a", "b", "c"], ["1"])
    outcome: list[Any] = []
    runner = threading.Thread(target=lambda: outcome.append(client._direct_call(call)))
    started = time.monotonic()
    runner.start()
    runner.join(10)
    assert not runner.is_alive(), "the read never timed out"
    assert 0.25 < time.monotonic() - started < 5
    assert outcome == [_blocking._FAILED]  # for the pooled client to try
    assert client._sock is None  # dropped: its reply may come later
