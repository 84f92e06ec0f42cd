"""Shared fixtures. Each broker fixture gives an isolated, connected broker.

A broker whose server is not answering is skipped locally and fails under CI=true.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import quote

import pytest

from offload.brokers import from_url
from offload.brokers.base import Broker
from offload.testing import FakeClock


def pytest_configure(config: pytest.Config) -> None:
    """A run that selects chaos or slow tests (`pytest -m chaos tests/chaos`) takes one
    process whatever addopts' `-n 3` says: each of those tests loads the machine on its
    own (kill loops, soaks, restarts of its own servers), and the chaos summary table is
    gathered in the process that prints it. (pytest-xdist sets up its session after
    this hook, trylast, and leaves a run whose `dist` is "no" alone.)"""
    markexpr = config.getoption("markexpr", "") or ""
    if "chaos" in markexpr.replace("not chaos", "") or "slow" in markexpr.replace("not slow", ""):
        config.option.dist = "no"
        config.option.numprocesses = 0
        config.option.tx = []


BROKER_NAMES = ["memory", "sqlite", "postgres"]
BROKER_NAMES += ["redis", "redis_cluster"]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def broker_url(request: pytest.FixtureRequest, tmp_path: Path) -> Callable[[str], str]:
    """Returns a function giving the URL for a broker name, isolated for this test."""

    def make(name: str) -> str:
        if name == "memory":
            return "memory://"
        if name == "sqlite":
            return f"sqlite:///{tmp_path / 'offload.db'}"
        if name == "redis":
            return str(request.getfixturevalue("redis_url"))
        if name == "redis_cluster":
            return str(request.getfixturevalue("redis_cluster_url"))
        if name == "postgres":
            return str(request.getfixturevalue("postgres_url"))
        if name == "amqp":  # RabbitMQ alone, without a state store
            return str(request.getfixturevalue("amqp_url"))
        if name.startswith("amqp_"):  # RabbitMQ with a state store: amqp_sqlite, …
            state = make(name.removeprefix("amqp_"))
            return f"{request.getfixturevalue('amqp_url')}&state={quote(state, safe='')}"
        raise ValueError(name)

    return make


@pytest.fixture(params=BROKER_NAMES)
async def broker(
    request: pytest.FixtureRequest, broker_url: Callable[[str], str], clock: FakeClock
) -> AsyncIterator[Broker]:
    """A connected broker of each kind, driven by the test's FakeClock."""
    b = from_url(broker_url(request.param), clock=clock)
    await b.connect()
    try:
        yield b
    finally:
        await b.close()


# -- PostgreSQL ---------------------------------------------------------------------------

#: The test server; `.ci/run` starts it. Override with OFFLOAD_TEST_POSTGRES.
POSTGRES_DSN = os.environ.get("OFFLOAD_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_dsn() -> str:
    """The test database; skipped locally, failed under CI=true, if it is not answering."""
    try:
        import psycopg

        with psycopg.connect(POSTGRES_DSN, connect_timeout=3):
            pass
    except Exception as exc:
        message = f"PostgreSQL is not available at {POSTGRES_DSN}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return POSTGRES_DSN


@pytest.fixture
def postgres_url(postgres_dsn: str) -> Iterator[str]:
    """A broker URL whose tables live in a schema of this test's own, dropped after it."""
    import psycopg
    from psycopg import sql

    schema = f"offload_test_{uuid.uuid4().hex[:12]}"
    yield f"{postgres_dsn}?schema={schema}"
    with psycopg.connect(postgres_dsn, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# -- Redis --------------------------------------------------------------------------------

#: The test server; `.ci/run` starts it. Override with OFFLOAD_TEST_REDIS.
REDIS_URL = os.environ.get("OFFLOAD_TEST_REDIS", "redis://127.0.0.1:6379/0")


def service_missing(message: str) -> NoReturn:
    """A test service is not answering: skip locally, fail under CI=true (where every
    service must run, so that a broken setup never passes as skipped)."""
    if os.environ.get("CI") == "true":
        pytest.fail(message)
    pytest.skip(message)


def _delete_prefix(client: Any, prefix: str) -> None:
    keys = list(client.scan_iter(match=f"{prefix}:*", count=1000))
    for key in keys:
        client.delete(key)  # one by one: a cluster refuses multi-key DEL across slots


@pytest.fixture(scope="session")
def redis_server() -> str:
    """The shared Redis at REDIS_URL, checked once."""
    try:
        import redis

        with redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2) as client:
            client.ping()
    except Exception as exc:
        service_missing(f"Redis is not available at {REDIS_URL}: {exc}")
    return REDIS_URL


@pytest.fixture
def redis_url(redis_server: str) -> Iterator[str]:
    """A broker URL with a key prefix of this test's own, whose keys are deleted after."""
    import redis

    prefix = f"offload-test-{uuid.uuid4().hex[:12]}"
    yield f"{redis_server}?prefix={prefix}"
    with redis.Redis.from_url(redis_server) as client:
        _delete_prefix(client, prefix)


@pytest.fixture
def own_redis(tmp_path: Path, redis_server: str) -> Iterator[Any]:
    """A redis-server of this test's own on a free port, without persistence
    (`tests.redis_cluster.RedisProcess`): for a test that stops and starts it, or
    disturbs it in ways the shared one must not be (every client killed, scripts
    flushed) while other tests run beside it (pytest -n)."""
    from tests.redis_cluster import RedisProcess

    directory = tmp_path / "own-redis"
    directory.mkdir()
    server = RedisProcess(directory).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[int]]:
    """A Redis Cluster of 3 masters on free ports, started for the session: the ports."""
    from tests.redis_cluster import start_cluster

    try:
        cluster = start_cluster(tmp_path_factory.mktemp("redis-cluster"), masters=3)
    except Exception as exc:
        service_missing(f"cannot start a local Redis Cluster: {exc}")
    with cluster:
        yield cluster.ports


@pytest.fixture
def redis_cluster_url(redis_cluster: list[int]) -> Iterator[str]:
    """A cluster broker URL with a key prefix of this test's own, deleted after."""
    import redis

    prefix = f"offload-test-{uuid.uuid4().hex[:12]}"
    yield f"redis://127.0.0.1:{redis_cluster[0]}?cluster=true&prefix={prefix}"
    for port in redis_cluster:
        with redis.Redis(port=port) as client:
            _delete_prefix(client, prefix)


# -- SQS (moto's server mode, started by the tests) -----------------------------------------


def _moto_server(directory: Path) -> Iterator[Any]:
    """A moto SQS server writing its log under `directory`, stopped after the test."""
    from tests.sqs_server import MotoServer

    server = MotoServer(directory)
    try:
        server.start()
    except Exception as exc:
        service_missing(f"cannot start moto's SQS server (pip install 'moto[server]'): {exc}")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def sqs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A moto SQS server on a free port for the session (see tests/sqs_server.py)."""
    yield from _moto_server(tmp_path_factory.mktemp("moto"))


@pytest.fixture
def moto(tmp_path: Path) -> Iterator[Any]:
    """A moto SQS server of this test's own, for a test that freezes, kills or restarts
    it (the session's `sqs_server` must stay up)."""
    yield from _moto_server(tmp_path)


@pytest.fixture
def sqs_url(sqs_server: Any) -> str:
    """An `sqs://` URL whose queues (prefix) belong to this test alone."""
    return str(sqs_server.url(f"t{uuid.uuid4().hex[:12]}"))


# -- RabbitMQ -----------------------------------------------------------------------------

#: The shared test server. Override with OFFLOAD_TEST_AMQP.
AMQP_URL = os.environ.get("OFFLOAD_TEST_AMQP", "amqp://guest:guest@127.0.0.1:5672/")
#: The offload queues the RabbitMQ tests use; teardown deletes their AMQP queues.
AMQP_TEST_QUEUES = ("default", "q1", "q2")


@pytest.fixture(scope="session")
def amqp_server() -> str:
    """The shared RabbitMQ at AMQP_URL, checked once."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    import aiormq

    async def ping() -> None:
        connection = await aiormq.connect(AMQP_URL)
        await connection.close()

    try:
        # On a thread of its own: an async fixture may ask for this one from its loop.
        with ThreadPoolExecutor(1) as thread:
            thread.submit(asyncio.run, asyncio.wait_for(ping(), 10)).result()
    except Exception as exc:
        service_missing(f"RabbitMQ is not available at {AMQP_URL}: {exc}")
    return AMQP_URL


@pytest.fixture
async def amqp_url(amqp_server: str) -> AsyncIterator[str]:
    """A broker URL with a queue-name prefix of this test's own; after the test, every
    queue and exchange under that prefix is deleted (and nobody else's)."""
    import aiormq

    from offload.brokers.amqp.topology import BUCKET_MAX_MS, BUCKET_MIN_MS, Names

    prefix = f"offload-test-{uuid.uuid4().hex[:12]}"
    yield f"{amqp_server}?prefix={prefix}"
    names = Names(prefix)
    doomed = [names.work(q) for q in AMQP_TEST_QUEUES] + [names.dead(q) for q in AMQP_TEST_QUEUES]
    ms = BUCKET_MIN_MS
    while ms <= BUCKET_MAX_MS:
        doomed.append(names.bucket(ms))
        ms *= 2
    connection = await aiormq.connect(amqp_server)
    try:
        channel = await connection.channel()
        for name in doomed:
            await channel.queue_delete(name)
        await channel.exchange_delete(names.delay_exchange)
        await channel.exchange_delete(names.work_exchange)
    finally:
        await connection.close()
