"""Shared fixtures. Each broker fixture gives an isolated, connected broker.

A broker whose server is not answering is skipped locally and fails under CI=true.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest

from offload.brokers import from_url
from offload.brokers.base import Broker
from offload.testing import FakeClock

BROKER_NAMES = ["memory", "sqlite", "postgres"]


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
        if name == "postgres":
            return str(request.getfixturevalue("postgres_url"))
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
