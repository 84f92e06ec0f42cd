"""The demo's users in a SQLite file (`UserStore`), and what a user is: the record, the
state of its verification email, a code's check. `users_pg.py` keeps the same users in
the broker's PostgreSQL database.
"""

from __future__ import annotations

import contextlib
import secrets
import sqlite3
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

__all__ = ["SendState", "User", "UserStore", "Verification", "new_code", "refusal"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    id              INTEGER PRIMARY KEY,
    email           TEXT NOT NULL UNIQUE,
    name            TEXT NOT NULL,
    code            TEXT NOT NULL,
    code_expires_at REAL NOT NULL,
    created_at      REAL NOT NULL,
    sent_at         REAL,  -- when the email carrying the current code was sent
    verified_at     REAL
);
"""


@dataclass(frozen=True, slots=True)
class User:
    id: int
    email: str
    name: str
    code: str
    code_expires_at: float
    sent_at: float | None
    verified_at: float | None


class SendState(StrEnum):
    """Whether the email for a given code should still go out."""

    PENDING = "pending"
    ALREADY_SENT = "already sent"
    SUPERSEDED = "superseded"  # the user asked for a new code since


class Verification(StrEnum):
    OK = "ok"
    EXPIRED = "expired"
    WRONG_CODE = "wrong code"
    UNKNOWN = "unknown"


def refusal(user: User, code: str) -> Verification | None:
    """Why `code` does not verify `user`, or None if it does: the one rule both user
    stores apply before marking a user verified."""
    if not secrets.compare_digest(user.code, code):
        return Verification.WRONG_CODE
    if user.verified_at is None and time.time() > user.code_expires_at:
        return Verification.EXPIRED
    return None


def new_code() -> str:
    """A random 6-digit code, from the OS's cryptographic source."""
    return f"{secrets.randbelow(10**6):06d}"


class UserStore:
    """Users and their verification codes in SQLite (stdlib `sqlite3`, WAL mode).

    The web server and every worker process open the same file; WAL lets readers and
    the writer proceed together. Within a process one connection serves every thread,
    one operation at a time: SQLite allows one writer anyway, and a writer that waits on
    SQLite's busy handler sleeps in steps of up to 100 ms, while one waiting on our lock
    goes as soon as it is free. Methods block: async code calls them through
    `asyncio.to_thread`.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None

    @contextlib.contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if self._conn is None:
                self._conn = _open(self.path)
                # a store dropped without close() closes it when collected (Python
                # 3.13 warns about an sqlite3 connection collected open)
                weakref.finalize(self, self._conn.close)
            yield self._conn

    def init(self) -> None:
        """Open the file and create the schema; idempotent, safe from many processes.

        Every operation does this first if needed; calling it early moves the cost out
        of the first request.
        """
        with self._connect():
            pass

    async def aclose(self) -> None:
        """Nothing async to close here (the PostgreSQL store closes its pool)."""

    def close(self) -> None:
        """Close the connection; a later operation opens it again."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    def create(self, email: str, name: str, ttl_s: float) -> User | None:
        """Store a new user with a fresh code; None if the email is already taken."""
        now = time.time()
        try:
            with self._connect() as conn:
                row = conn.execute(
                    "INSERT INTO users (email, name, code, code_expires_at, created_at)"
                    " VALUES (?, ?, ?, ?, ?) RETURNING *",
                    (email, name, new_code(), now + ttl_s, now),
                ).fetchone()
        except sqlite3.IntegrityError:
            return None
        return _user(row)

    def get(self, user_id: int) -> User | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM users WHERE id = ?", (user_id,)).fetchone()
        return _user(row) if row else None

    def by_email(self, email: str) -> User | None:
        with self._connect() as conn:
            row = conn.execute("SELECT * FROM users WHERE email = ?", (email,)).fetchone()
        return _user(row) if row else None

    def renew_code(self, user_id: int, ttl_s: float) -> User:
        """Give the user a new code and expiry; the old code stops working at once."""
        with self._connect() as conn:
            row = conn.execute(
                "UPDATE users SET code = ?, code_expires_at = ?, sent_at = NULL"
                " WHERE id = ? RETURNING *",
                (new_code(), time.time() + ttl_s, user_id),
            ).fetchone()
        return _user(row)

    def send_state(self, user_id: int, code: str) -> SendState:
        with self._connect() as conn:
            row = conn.execute(
                "SELECT code, sent_at FROM users WHERE id = ?", (user_id,)
            ).fetchone()
        if row is None or row["code"] != code:
            return SendState.SUPERSEDED
        return SendState.PENDING if row["sent_at"] is None else SendState.ALREADY_SENT

    def mark_sent(self, user_id: int, code: str) -> None:
        with self._connect() as conn:
            conn.execute(
                "UPDATE users SET sent_at = ? WHERE id = ? AND code = ? AND sent_at IS NULL",
                (time.time(), user_id, code),
            )

    def delete_expired(self, older_than_s: float) -> int:
        """Delete unverified users whose code expired more than `older_than_s` seconds
        ago; returns how many. Idempotent, so a cleanup that runs twice is harmless."""
        with self._connect() as conn:
            cursor = conn.execute(
                "DELETE FROM users WHERE verified_at IS NULL AND code_expires_at < ?",
                (time.time() - older_than_s,),
            )
        return cursor.rowcount

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
                "UPDATE users SET verified_at = coalesce(verified_at, ?) WHERE id = ?",
                (time.time(), user.id),
            )
        return Verification.OK


def _open(path: str) -> sqlite3.Connection:
    # Autocommit (each statement its own transaction); synchronous=NORMAL is durable
    # across application crashes in WAL mode, and fsyncs at checkpoints only.
    conn = sqlite3.connect(path, timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.row_factory = sqlite3.Row
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.executescript(SCHEMA)
    return conn


def _user(row: sqlite3.Row) -> User:
    return User(
        id=row["id"],
        email=row["email"],
        name=row["name"],
        code=row["code"],
        code_expires_at=row["code_expires_at"],
        sent_at=row["sent_at"],
        verified_at=row["verified_at"],
    )
