"""LISTEN on one dedicated connection and wake the waiters of the queues named.

Every statement that makes a job ready now (enqueue, a due retry, release, replay) calls
`pg_notify(channel, queue)`. PostgreSQL sends it when that transaction commits, to every
connection listening on the channel, so an idle worker wakes within a round trip of the
commit and never for a job it cannot see yet.

The listener counts notifications per queue. `reserve` notes the count before it looks
for work, and `wait` returns at once if the count moved since: a job committed between
an empty reserve and the start of a wait is not slept through.

Only the first `start` waits for LISTEN to take effect. While the connection is lost and
reconnecting, calls go on without it (an idle worker polls meanwhile) instead of each
waiting for it: a listener that cannot reconnect (the role's connection limit reached,
say) must not make every `reserve` of the worker wait out a timeout. Once LISTEN is in
effect again every waiter is woken to look, so a job committed during the gap is found
at once rather than at the next poll.

Job ends (for `wait_finished`) come on a second channel, whose payloads are the ended
jobs' ids, one per line. The connection LISTENs to it only once this process waits for a
job (`listen_ends`), and from then on until it closes: a worker that never waits for a
result is not sent every end of every job, and a process that waits once will likely
wait again (re-LISTENing per wait would cost a round trip each time).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import Callable, Sequence
from typing import Any

from psycopg import AsyncConnection, sql

from offload._health import Attempts

__all__ = ["Listener", "channel_name", "ends_channel"]

logger = logging.getLogger(__name__)


#: The longest channel name PostgreSQL keeps (NAMEDATALEN - 1), in bytes.
_MAX_CHANNEL = 63


def channel_name(base: str, schema: str | None) -> str:
    """The NOTIFY channel `base` of `schema`'s jobs (`offload.<schema>` for wake-ups,
    `offload_ended.<schema>` for ends). A name too long for PostgreSQL, which would
    make `pg_notify` fail (a schema name may itself be 63 bytes), ends in a digest of
    the schema instead."""
    if schema is None:
        return base
    name = f"{base}.{schema}"
    if len(name.encode()) > _MAX_CHANNEL:
        name = f"{base}.{hashlib.sha1(schema.encode()).hexdigest()}"
    return name


def ends_channel(schema: str | None) -> str:
    """The NOTIFY channel of job ends in `schema`."""
    return channel_name("offload_ended", schema)


class Listener:
    """One LISTEN connection for one event loop; `wait` is cheap and concurrent."""

    def __init__(
        self,
        conninfo: str,
        channel: str,
        *,
        ends_channel: str,
        on_ends: Callable[[str | None], None],
    ) -> None:
        """`on_ends` gets each payload of the ends channel (ids, one per line), and None
        when the connection was lost (ends may have been missed)."""
        self._conninfo = conninfo
        self._channel = channel
        self._ends_channel = ends_channel
        self._on_ends = on_ends
        self._ends_wanted = False
        self._ends_listening = asyncio.Event()
        self._ends_asked = asyncio.Event()  # set by `listen_ends` to interrupt the reader
        self._counts: dict[str, int] = {}
        self._waiters: set[tuple[frozenset[str], asyncio.Event]] = set()
        self._listening = asyncio.Event()
        self._started = False  # the first `start` returned (LISTEN in effect or not)
        self._task: asyncio.Task[None] | None = None
        self._marks: dict[tuple[str, ...], int] = {}
        self._attempts = Attempts()  # reconnections (waiters poll meanwhile)

    async def start(self, timeout_s: float = 5.0) -> bool:
        """Start listening (once). The first call waits until LISTEN has taken effect,
        so that no job committed after it returns can go unnoticed; if that takes longer
        than `timeout_s` it says so once and returns (waiters poll until LISTEN is in
        effect). Later calls never wait: see the module's docstring. True for the call
        that waited: a job committed between its caller's last look and LISTEN taking
        effect was announced to nobody."""
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="offload-postgres-listener")
        if self._started:
            return False
        waited = not self._listening.is_set()
        await _wait_set(self._listening, timeout_s)
        if not self._started:
            self._started = True
            if not self._listening.is_set():
                logger.warning(
                    "postgres listener: LISTEN not in effect after %.0f s; idle workers "
                    "poll for jobs until it is",
                    timeout_s,
                    extra={"action": "postgres_listener_slow"},
                )
        return waited

    async def listen_ends(self, timeout_s: float = 5.0) -> None:
        """LISTEN to the ends channel too (from now until `close`), and wait until it
        has taken effect: an end committed after this returns is pushed."""
        if not self._ends_wanted:
            self._ends_wanted = True
            self._ends_asked.set()
        await self.start(timeout_s)
        await _wait_set(self._ends_listening, timeout_s)

    def mark(self, queues: Sequence[str]) -> None:
        """Note how many notifications `queues` have had (called before a reserve)."""
        key = tuple(queues)
        self._marks[key] = self._total(key)

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        key = tuple(queues)
        if self._total(key) != self._marks.get(key, self._total(key)):
            self._marks.pop(key, None)
            return
        entry = (frozenset(queues), asyncio.Event())
        self._waiters.add(entry)
        try:
            await _wait_set(entry[1], timeout_s)
        finally:
            self._waiters.discard(entry)

    async def close(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._wake(None)

    def _total(self, queues: tuple[str, ...]) -> int:
        return sum(self._counts.get(q, 0) for q in queues)

    def _wake(self, queue: str | None) -> None:
        """Wake the waiters of `queue` (all waiters if None)."""
        if queue is not None:
            self._counts[queue] = self._counts.get(queue, 0) + 1
        for queues, event in self._waiters:
            if queue is None or queue in queues:
                event.set()

    async def _run(self) -> None:
        """Listen, and reconnect with backoff whenever the connection is lost. The loss
        is logged once (at info: the worker's own calls report an outage), the failed
        attempts to reconnect at debug level."""
        while True:
            try:
                await self._listen()
            except Exception as exc:
                logger.log(
                    logging.INFO if self._attempts.failures == 0 else logging.DEBUG,
                    "postgres listener lost its connection (%s); reconnecting",
                    " ".join(str(exc).split()),
                    extra={"action": "postgres_listener_lost"},
                )
            self._listening.clear()
            self._ends_listening.clear()
            self._wake(None)  # notifications may have been missed: let waiters look
            self._on_ends(None)
            await asyncio.sleep(self._attempts.next_delay())

    async def _listen(self) -> None:
        conn = await AsyncConnection.connect(self._conninfo, autocommit=True)
        try:
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._channel)))
            self._listening.set()
            if self._attempts.failures:  # back after a loss: jobs of the gap were not
                self._wake(None)  # announced to us, so let every waiter look now
            self._attempts.reset()
            while not self._ends_wanted:
                await self._read_until_ends_asked(conn)
            await conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self._ends_channel)))
            self._ends_listening.set()
            await self._read(conn)
        finally:
            await conn.close()

    async def _read_until_ends_asked(self, conn: AsyncConnection[Any]) -> None:
        """Deliver notifications until `listen_ends` asks for the ends channel; then
        stop reading (psycopg holds the connection while it reads) so LISTEN can run."""
        self._ends_asked.clear()
        if self._ends_wanted:
            return
        reader = asyncio.create_task(self._read(conn), name="offload-postgres-listener-read")
        asked = asyncio.create_task(self._ends_asked.wait())
        try:
            await asyncio.wait({reader, asked}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            asked.cancel()
            if not reader.done():
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
        if not reader.cancelled():
            reader.result()  # the connection failed: raise, to reconnect

    async def _read(self, conn: AsyncConnection[Any]) -> None:
        async for note in conn.notifies():
            if note.channel == self._ends_channel:
                self._on_ends(note.payload)
            else:
                self._wake(note.payload)


async def _wait_set(event: asyncio.Event, timeout_s: float) -> None:
    """Wait until `event` is set or `timeout_s` passed, and pass a cancellation on.

    Not `asyncio.wait_for(event.wait(), ...)`: before Python 3.12 it runs the wait in a
    task of its own and, cancelled in the loop turn after that task finished (always the
    case for an event already set), returns its result and drops the cancellation. A
    worker stopped at that moment went on into its idle wait and slept through the stop
    for its whole poll interval. An event already set costs no loop turn here."""
    if event.is_set():
        return
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(timeout_s):
            await event.wait()
