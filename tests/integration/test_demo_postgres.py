"""The sign-up demo on PostgreSQL: the user and the verification job commit in one
transaction, so a sign-up killed midway leaves neither.

The web app runs through httpx's ASGI transport and the worker in-process
(`Worker.drain()`), against a schema of the test's own (tests/conftest.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from offload import JobState, Worker
from offload.demo.signup import DemoConfig, SignupDemo, User, build, verification_key
from offload.demo.smtp import SMTPServer
from offload.demo.web import create_web
from offload.errors import BrokerUnavailable
from offload.job import Job

psycopg = pytest.importorskip("psycopg")
users_pg = pytest.importorskip("offload.demo.users_pg")

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    with SMTPServer() as server:
        yield server


@pytest.fixture
async def demo(postgres_url: str, smtp: SMTPServer, tmp_path: Path) -> AsyncIterator[SignupDemo]:
    config = DemoConfig(
        db_path=str(tmp_path / "unused.db"), smtp_host=smtp.host, smtp_port=smtp.port
    )
    made = build(config, postgres_url)
    await made.app.connected_broker()  # creates the test's schema
    made.users.init()
    yield made
    await made.app.aclose()
    made.users.close()


async def total_jobs(demo: SignupDemo) -> int:
    broker = await demo.app.connected_broker()
    return sum(sum(stats.states.values()) for stats in (await broker.counts()).values())


async def test_signup_on_postgres_stores_the_user_beside_the_job_and_mails_it(
    demo: SignupDemo, smtp: SMTPServer
) -> None:
    assert isinstance(demo.users, users_pg.PostgresUserStore)
    transport = httpx.ASGITransport(app=create_web(demo))
    async with httpx.AsyncClient(transport=transport, base_url="http://demo.test") as client:
        response = await client.post("/signup", json={"email": "ada@example.com", "name": "Ada"})
        again = await client.post("/signup", json={"email": "ada@example.com", "name": "A"})
    assert response.status_code == 201, response.text
    assert again.status_code == 409
    body = response.json()
    user = demo.users.get(int(body["user_id"]))
    assert user is not None and user.sent_at is None
    info = await demo.app.job(body["job_id"]).info_async()
    assert info.state is JobState.QUEUED
    assert info.key == verification_key(user.id, user.code)
    assert await total_jobs(demo) == 1  # the refused second sign-up enqueued nothing

    worker = Worker(demo.app, concurrency=2)
    try:
        assert await worker.drain() == 1
    finally:
        worker.executor.close()

    assert await demo.app.job(body["job_id"]).state_async() is JobState.SUCCEEDED
    assert len(smtp.handler.inbox("ada@example.com").messages) == 1
    sent = demo.users.get(user.id)
    assert sent is not None and sent.sent_at is not None


class Midway:
    """Enqueues the email in the sign-up's transaction, checks that both rows are there
    (inside it), then kills the transaction before it commits."""

    def __init__(self, demo: SignupDemo, kill: str, dsn: str) -> None:
        self.demo = demo
        self.kill = kill
        self.dsn = dsn
        self.user: User | None = None
        self.job: Job | None = None

    async def __call__(self, conn: Any, user: User) -> Job:
        self.user = user
        self.job = await self.demo.enqueue_verification_in(conn, user)
        cur = await conn.execute(
            "SELECT (SELECT count(*) FROM offload_jobs WHERE id = %s)"
            " + (SELECT count(*) FROM offload_demo_users WHERE id = %s) AS n",
            (self.job.id, user.id),
        )
        assert (await cur.fetchone())["n"] == 2  # both written, not yet committed
        if self.kill == "exception":
            raise RuntimeError("the process dies between the enqueue and the commit")
        with psycopg.connect(self.dsn, autocommit=True) as admin:  # the server drops it
            admin.execute("SELECT pg_terminate_backend(%s)", (conn.info.backend_pid,))
        return self.job


@pytest.mark.parametrize(
    ("kill", "raised"),
    [("exception", RuntimeError), ("connection", BrokerUnavailable)],
)
async def test_signup_killed_midway_leaves_neither_the_user_nor_the_job(
    demo: SignupDemo, postgres_dsn: str, kill: str, raised: type[Exception]
) -> None:
    # Given a sign-up whose transaction holds the user and the job
    midway = Midway(demo, kill, postgres_dsn)
    store = demo.users
    assert isinstance(store, users_pg.PostgresUserStore)

    # When the transaction is killed before its commit
    with pytest.raises(raised):
        await store.create_with_job("ada@example.com", "Ada", 900.0, midway)

    # Then neither exists, and the email can sign up again
    assert midway.user is not None and midway.job is not None
    assert store.by_email("ada@example.com") is None
    assert store.get(midway.user.id) is None
    broker = await demo.app.connected_broker()
    assert await broker.get_job(midway.job.id) is None
    assert await broker.find(verification_key(midway.user.id, midway.user.code)) is None
    assert await total_jobs(demo) == 0
    created = await store.create_with_job(
        "ada@example.com", "Ada", 900.0, demo.enqueue_verification_in
    )
    assert created is not None
    assert await total_jobs(demo) == 1
