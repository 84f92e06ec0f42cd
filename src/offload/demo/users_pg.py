"""The demo's users in PostgreSQL, beside the jobs: a sign-up stores the user and
enqueues the verification email in one transaction.

With a `postgresql://` broker URL the demo keeps its users in the table
`offload_demo_users` of the broker's database (in the URL's `schema` if it has one).
`create_with_job` inserts the user and calls `enqueue_in_async` on the same connection
inside the same transaction, so a crash, an error or a lost connection between the two
leaves neither: no user without an email on its way, and no email job whose user was
never committed. The worker's side (`send_state`, `mark_sent`) and the other routes use
the same blocking interface as the SQLite `UserStore`.

Needs the `postgres` extra (psycopg); only imported when the broker URL is PostgreSQL.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool

from offload.brokers.postgres import parse_url
from offload.demo.signup import SendState, User, Verification, new_code, refusal
from offload.errors import BrokerUnavailable
from offload.job import Job

__all__ = ["TABLE", "PostgresUserStore"]

#: The demo's users table, in the broker's schema (or the connection's search_path).
TABLE = "offload_demo_users"

SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {TABLE} (
    id              bigint           GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email           text             NOT NULL UNIQUE,
    name            text             NOT NULL,
    code            text             NOT NULL,
    code_expires_at double precision NOT NULL,
    created_at      double precision NOT NULL,
    sent_at         double precision,  -- when the email carrying the current code was sent
    verified_at     double precision
)
"""

#: Enqueues the user's verification email on the given connection, in its transaction.
EnqueueIn = Callable[[psycopg.AsyncConnection[Any], User], Awaitable[Job]]


class PostgresUserStore:
    """Users and their codes in PostgreSQL; the same methods as `UserStore`, plus
    `create_with_job`, the transactional sign-up.

    Blocking methods share one autocommit connection per process under a lock (the
    worker calls them from its threads; the web app through `asyncio.to_thread`).
    `create_with_job` takes a connection from a small pool for its transaction:
    opening a connection per sign-up cost ~9 ms of CPU each and, at 100 sign-ups/s on
    two cores, queued requests to a p50 of ~200 ms.
    """

    def __init__(self, broker_url: str) -> None:
        self.conninfo = parse_url(broker_url).conninfo  # with the URL's schema on its path
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]] | None = None

    async def _async_pool(self) -> AsyncConnectionPool[psycopg.AsyncConnection[dict[str, Any]]]:
        """The sign-up pool, opened on first use in the web app's event loop."""
        if self._pool is None:
            pool = AsyncConnectionPool(
                self.conninfo,
                min_size=1,
                max_size=10,
                open=False,
                connection_class=psycopg.AsyncConnection[dict[str, Any]],
                kwargs={"row_factory": dict_row},
            )
            await pool.open()
            self._pool = pool
        return self._pool

    async def aclose(self) -> None:
        """Close the sign-up pool (the web app's shutdown)."""
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close()

    @contextlib.contextmanager
    def _connect(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        with self._lock:
            if self._conn is None or self._conn.closed:
                self._conn = psycopg.connect(self.conninfo, autocommit=True, row_factory=dict_row)
                self._conn.execute(SCHEMA)
            yield self._conn

    def init(self) -> None:
        """Connect and create the table; idempotent (the broker's schema must exist,
        which the app's `connected_broker()` ensures)."""
        with self._connect():
            pass

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    async def create_with_job(
        self, email: str, name: str, ttl_s: float, enqueue_in: EnqueueIn
    ) -> tuple[User, Job] | None:
        """Store a new user and enqueue its email in one transaction; None if the email
        is already taken (then nothing is stored or enqueued).

        Raises:
            BrokerUnavailable: the database cannot be reached, or the connection was
                lost before the commit.
            Whatever else `enqueue_in` raises. In every case the transaction is rolled
            back (or was never committed), so neither the user nor the job exists.
        """
        now = time.time()
        try:
            pool = await self._async_pool()
            async with pool.connection() as conn:
                async with conn.transaction():
                    cur = await conn.execute(
                        f"INSERT INTO {TABLE} (email, name, code, code_expires_at, created_at)"
                        " VALUES (%s, %s, %s, %s, %s) RETURNING *",
                        (email, name, new_code(), now + ttl_s, now),
                    )
                    user = _user(await cur.fetchone())
                    job = await enqueue_in(conn, user)
        except psycopg.errors.UniqueViolation:
            return None
        except psycopg.OperationalError as exc:
            raise BrokerUnavailable(f"PostgreSQL: {' '.join(str(exc).split())}") from exc
        return user, job

    def create(self, email: str, name: str, ttl_s: float) -> User | None:
        """Store a new user with a fresh code, without a job; None if the email is taken."""
        now = time.time()
        try:
            with self._connect() as conn:
                row = conn.execute(
                    f"INSERT INTO {TABLE} (email, name, code, code_expires_at, created_at)"
                    " VALUES (%s, %s, %s, %s, %s) RETURNING *",
                    (email, name, new_code(), now + ttl_s, now),
                ).fetchone()
        except psycopg.errors.UniqueViolation:
            return None
        return _user(row)

    def get(self, user_id: int) -> User | None:
        return self._one(f"SELECT * FROM {TABLE} WHERE id = %s", (user_id,))

    def by_email(self, email: str) -> User | None:
        return self._one(f"SELECT * FROM {TABLE} WHERE email = %s", (email,))

    def renew_code(self, user_id: int, ttl_s: float) -> User:
        """Give the user a new code and expiry; the old code stops working at once."""
        user = self._one(
            f"UPDATE {TABLE} SET code = %s, code_expires_at = %s, sent_at = NULL"
            " WHERE id = %s RETURNING *",
            (new_code(), time.time() + ttl_s, user_id),
        )
        if user is None:
            raise LookupError(f"no user {user_id}")
        return user

    def send_state(self, user_id: int, code: str) -> SendState:
        user = self.get(user_id)
        if user is None or user.code != code:
            return SendState.SUPERSEDED
        return SendState.PENDING if user.sent_at is None else SendState.ALREADY_SENT

    def mark_sent(self, user_id: int, code: str) -> None:
        with self._connect() as conn:
            conn.execute(
                f"UPDATE {TABLE} SET sent_at = %s WHERE id = %s AND code = %s AND sent_at IS NULL",
                (time.time(), user_id, code),
            )

    def verify(self, email: str, code: str) -> Verification:
        """Check a code; a correct one marks the user verified (idempotent)."""
        user = self.by_email(email)
        if user is None:
            return Verification.UNKNOWN
        refused = refusal(user, code)
        if refused is not None:
            return refused
        with self._connect() as conn:
            conn.execute(
                f"UPDATE {TABLE} SET verified_at = coalesce(verified_at, %s) WHERE id = %s",
                (time.time(), user.id),
            )
        return Verification.OK

    def delete_expired(self, older_than_s: float) -> int:
        """Delete unverified users whose code expired more than `older_than_s` seconds
        ago; returns how many (the nightly cleanup)."""
        with self._connect() as conn:
            cur = conn.execute(
                f"DELETE FROM {TABLE} WHERE verified_at IS NULL AND code_expires_at < %s",
                (time.time() - older_than_s,),
            )
            return cur.rowcount

    def _one(self, query: str, params: tuple[Any, ...]) -> User | None:
        with self._connect() as conn:
            row = conn.execute(query.encode(), params).fetchone()
        return _user(row) if row is not None else None


def _user(row: dict[str, Any] | None) -> User:
    assert row is not None, "INSERT/UPDATE ... RETURNING gave no row"
    return User(
        id=row["id"],
        email=row["email"],
        name=row["name"],
        code=row["code"],
        code_expires_at=row["code_expires_at"],
        sent_at=row["sent_at"],
        verified_at=row["verified_at"],
    )
