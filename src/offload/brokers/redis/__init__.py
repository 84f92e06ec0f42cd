"""`redis://` and `rediss://`: jobs in Redis or Redis Cluster, one Lua script per
state change.

Layout. `keys.py` documents every key. All keys of a queue share the hash tag of the
queue, so each transition is one script over one slot and runs unchanged on Redis
Cluster. A job is a field in its queue's `payload` (immutable envelope bytes),
`record` (msgpack state) and `result` hashes, never a key of its own: `reserve` and
`sweep` discover job ids inside Lua, and a script may only touch keys passed to it in
KEYS. For the same reason finished jobs are reaped by `sweep` (with the broker's
injected clock, like every other broker) rather than by Redis EXPIRE; after a sweep
nothing of a purged job remains.

Ordering. `ready` is a sorted set scored by -priority whose members start with the due
time in ms and the queue's enqueue sequence, fixed width, so ZRANGE's lexical tiebreak
gives "priority, then due time, then enqueue order". `reserve` takes many jobs in one
script and its housekeeping touches only what is due (ranges of `scheduled`, `running`
and `expiring` up to now), so its cost does not grow with the number of delayed jobs.

Idempotency keys are unique per queue here (the `keys` hash of the queue): a global
index would live in another slot than the queue it guards, and the check and the
insert could then not be one atomic script on a cluster. Every other broker's keys
are global; jobs with one key in different queues are the only difference, and `find`
looks in every queue. Likewise a job id is looked up in every known queue (inspection,
listings and the dead-letter operations are in `_inspect.py`).

Reservation is `_reserve.py` (across the slots of a cluster too). An idle worker of
one queue parks there and is handed new jobs already leased by `enqueue` itself
(`_handoff.py`); other wake-ups are pub/sub (see `_listener.py`), and so are job ends
for `wait_finished`, but only for jobs someone waits on (see `_signals.py`). Workflow
jobs cancelled while waiting or expired are recorded in their queue's outbox by the same
script (see `_flow.py`).
Connections belong to the event loop that opened them (`Capabilities.loop_bound`):
`Offload` gives its sync portal a broker of its own.

`RedisBroker` wires its parts, each one class built on an `Executor` (`_executor.py`:
scripts, pipelines and the key schema): the enqueue scripts' calls and replies
`Enqueuing` (`_enqueue.py`), `Reserver` (`_reserve.py`), extending and ending leases
`Settler` (`_settle.py`), `Inspector` (`_inspect.py`), `Flow` (`_flow.py`), `Signals`
(`_signals.py`), `Workflows` (`_workflows.py`), `Operations` (`_operate.py`). Here stay
the connections, which path an enqueue takes (this loop's client or the calling
thread's, the inbox gate), waiting and parking, and the fleet.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import replace
from urllib.parse import urlsplit

import msgspec

from offload.brokers.base import (
    DEFAULT_RETENTION_S,
    Broker,
    Capabilities,
    Ended,
    EnqueueResult,
    Finished,
    JobInfo,
    Lease,
    Page,
    QueueStats,
    Settlement,
    SweepReport,
    WorkerInfo,
)
from offload.brokers.records import FINISHED_KEEP_S, minute_of
from offload.brokers.redis import keys as K
from offload.brokers.redis._blocking import BlockingClient
from offload.brokers.redis._connection import (
    check_eviction_policy,
    errors,
    make_client,
    parse_url,
    plain_client,
)
from offload.brokers.redis._enqueue import Enqueuing
from offload.brokers.redis._executor import SCRIPTS, Executor
from offload.brokers.redis._flow import Flow
from offload.brokers.redis._handoff import MARGIN_S, Handoff
from offload.brokers.redis._inbox import INBOX_FLAG, INBOX_LEVEL, InboxGate
from offload.brokers.redis._inspect import Inspector
from offload.brokers.redis._listener import Listener
from offload.brokers.redis._operate import Operations
from offload.brokers.redis._records import num
from offload.brokers.redis._reserve import BATCH, Reserver
from offload.brokers.redis._scripts import Call, Client
from offload.brokers.redis._settle import Settler
from offload.brokers.redis._signals import Signals
from offload.brokers.redis._workflows import Workflows
from offload.clock import Clock
from offload.envelope import Envelope, JobState
from offload.errors import BrokerError

__all__ = ["RedisBroker"]


class RedisBroker(Broker):
    """Jobs in Redis (or Redis Cluster); every transition one Lua script."""

    capabilities = Capabilities(
        transactional_enqueue=False,
        push_wakeup=True,
        push_results=True,
        cross_process=True,
        loop_bound=True,
    )

    def __init__(
        self,
        url: str,
        *,
        clock: Clock | None = None,
        retention_s: float = DEFAULT_RETENTION_S,
    ) -> None:
        super().__init__(url, clock=clock, retention_s=retention_s)
        self.options = parse_url(url)
        if not self.options.cluster:  # a cluster's sync producers keep the portal path
            self.capabilities = replace(self.capabilities, blocking_enqueue=True)
        self.prefix = self.options.prefix
        # Named in errors and logs: the server alone, never the URL's credentials.
        self._where = urlsplit(self.options.redis_url).netloc.rpartition("@")[2]
        self._blocking = BlockingClient(self.options, self._where)
        self._x = x = Executor(self._redis, self._where, self.prefix)
        self.global_keys = x.global_keys
        self._enqueuing = Enqueuing(x)
        self._flow = Flow(x, self.clock, retention_s)
        self._inspector = Inspector(x, self.clock)
        self._operations = Operations(x, self.clock, retention_s)
        self._signals = Signals(x, self.clock, retention_s, self._subscribed)
        self._workflows = Workflows(x, retention_s)
        self._handoff = Handoff(self.prefix)
        self._inbox = InboxGate()
        self._reserver = Reserver(x, self.clock, retention_s, self.options.cluster, self._handoff)
        self._settler = Settler(x, self.clock, retention_s, self._signals)
        self._client: Client | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._listener: Listener | None = None
        self._known: set[str] = set()
        self._connecting: tuple[asyncio.AbstractEventLoop, asyncio.Lock] | None = None

    # -- plumbing -------------------------------------------------------------------------

    async def _redis(self) -> Client:
        """The client of this loop, connecting on first use (or after a loop change:
        a client of a closed loop is dropped, one of a running other loop refused)."""
        loop = asyncio.get_running_loop()
        if self._client is not None and self._loop is not loop:
            if self._loop is not None and not self._loop.is_closed():
                raise BrokerError(
                    "this RedisBroker is connected on another event loop; make one broker per loop"
                )
            self._client = self._listener = None
        if self._client is None:
            await self.connect()
        assert self._client is not None
        return self._client

    async def _remember(self, queues: set[str]) -> None:
        """Record queues in the global set before their first job is stored, so that
        `queues()` never misses a queue holding jobs (it is another slot on a cluster)."""
        new = queues - self._known
        if new:
            client = await self._redis()
            with errors(self._where):
                await client.sadd(self.global_keys.queues, *sorted(new))
            self._known = self._known | new  # rebound: `_blocking` reads it from other threads

    # -- lifecycle ------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the connection pool, load the scripts and check the eviction policy;
        idempotent.

        Raises:
            BrokerUnavailable: Redis does not answer.
        """
        loop = asyncio.get_running_loop()
        if self._connecting is None or self._connecting[0] is not loop:
            self._connecting = (loop, asyncio.Lock())
        async with self._connecting[1]:  # concurrent first calls open one pool
            if self._client is not None and self._loop is loop:
                return
            client = make_client(self.options)
            try:
                with errors(self._where):
                    await client.ping()
                    await SCRIPTS.load(client)
                    await check_eviction_policy(client, self._where)
            except BaseException:
                await client.aclose()
                raise
            self._client, self._loop = client, loop

    async def close(self) -> None:
        """Close the pool and the wake-up subscriber; idempotent."""
        client, listener, loop = self._client, self._listener, self._loop
        self._client = self._listener = self._loop = None
        self._blocking.close()
        if loop is not asyncio.get_running_loop():
            return  # another loop's sockets: they go with that loop
        await self._x.close_direct()
        if listener is not None:
            await listener.close()
        if client is not None:
            await client.aclose()

    # -- producer -------------------------------------------------------------------------

    async def enqueue(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult]:
        """Each queue's jobs are one script; `max_depth` is checked per queue, so a call
        spanning queues may store the jobs of those that had room."""
        if not jobs:
            return []
        now = self.clock.now()
        by_queue: dict[str, list[int]] = {}
        for i, (env, _) in enumerate(jobs):
            by_queue.setdefault(env.queue, []).append(i)
        await self._remember(set(by_queue))
        await self._workflows.index(jobs)
        inbox = await self._inbox_allowed() if len(jobs) == 1 else 0
        calls = self._enqueuing.calls(jobs, by_queue, now, max_depth, inbox)
        if len(calls) == 1:  # one queue (`enqueue_async()`): the direct connection
            replies = [await self._x.run_one(calls[0])]
        else:
            replies = await self._x.run_many(calls)
        return self._enqueuing.results(jobs, by_queue, replies, max_depth)

    def enqueue_blocking(
        self, jobs: Sequence[tuple[Envelope, bytes]], *, max_depth: int | None = None
    ) -> list[EnqueueResult] | None:
        """The same scripts from the calling thread, on a plain (non-asyncio) client
        (see `_blocking.py`); None for a call it leaves to `enqueue`: on a cluster, for
        a queue not recorded yet, or for workflow jobs (whose index comes first)."""
        if self.options.cluster or not jobs:
            return None
        if len(jobs) == 1:  # `task.enqueue()`: one script on the direct connection
            env = jobs[0][0]
            if env.workflow_id is not None or env.queue not in self._known:
                return None
            inbox = self._inbox_allowed_blocking()
            call = self._enqueuing.one_call(jobs[0], self.clock.now(), max_depth, inbox)
            return [self._enqueuing.one_result(env, self._blocking.run_one(call), max_depth)]
        by_queue: dict[str, list[int]] = {}
        for i, (env, _) in enumerate(jobs):
            if env.workflow_id is not None:
                return None
            by_queue.setdefault(env.queue, []).append(i)
        if not self._known.issuperset(by_queue):
            return None
        calls = self._enqueuing.calls(jobs, by_queue, self.clock.now(), max_depth)
        return self._enqueuing.results(jobs, by_queue, self._blocking.run_many(calls), max_depth)

    async def _inbox_allowed(self) -> int:
        """The inbox level every live worker drains (`_inbox.py`; 0: none), from the
        registry read at most every few seconds."""
        allowed = self._inbox.cached()
        if allowed is not None:
            return allowed
        try:
            reply = await self._x.run("workers", self._worker_keys(), [num(self.clock.now())])
        except BrokerError:
            return self._inbox.failed()
        return self._inbox.learn(reply)

    def _inbox_allowed_blocking(self) -> int:
        """`_inbox_allowed` from the calling thread (`enqueue_blocking`)."""
        allowed = self._inbox.cached()
        if allowed is not None:
            return allowed
        call: Call = ("workers", self._worker_keys(), [num(self.clock.now())])
        try:
            [reply] = self._blocking.run_many([call])
        except BrokerError:
            return self._inbox.failed()
        return self._inbox.learn(reply)

    # -- consumer -------------------------------------------------------------------------

    async def reserve(
        self, queues: Sequence[str], *, worker_id: str, lease_s: float, limit: int
    ) -> list[Lease]:
        """The worker's parking ticket, if it has one, ends first (`_handoff.py`): what
        was handed to it and not yet returned comes back with the new leases."""
        return await self._reserver.reserve(queues, worker_id, lease_s, limit)

    async def wait(self, queues: Sequence[str], timeout_s: float) -> None:
        """Return when a job is made ready now in `queues` (by any process), or after
        `timeout_s`. A job that becomes due later wakes nobody: `next_due` tells the
        caller how long to wait at most. A plain enqueue onto a queue whose inbox
        already holds jobs wakes nobody either: the push that filled it first woke the
        queue, and the reservation that leads to drains the whole inbox. If the
        subscriber connection fails, this sleeps (at most a second) so that the
        caller's next call sees the error."""
        channels = [self._x.channel(q) for q in queues]
        try:
            listener = await self._subscribed(channels)
        except Exception:  # BrokerError, or redis-py failing mid-reconnect
            await asyncio.sleep(min(timeout_s, 1.0))
            return
        await listener.wait(channels, timeout_s)

    async def wait_for_work(
        self,
        queues: Sequence[str],
        timeout_s: float,
        *,
        worker_id: str,
        lease_s: float,
        limit: int,
    ) -> list[Lease]:
        """A worker of one queue parks there (`_handoff.py`): one script reserves, or
        parks it if nothing is ready; then it waits for jobs handed to it, a wake-up
        (from a producer that does not hand over) or the timeout."""
        names = list(dict.fromkeys(queues))
        channel = self._handoff.channel(worker_id)
        try:
            if len(names) != 1 or limit <= 0:
                raise LookupError("parking takes one queue")
            await self._subscribed([channel], handler=self._handoff.received, confirm=True)
            listener = await self._subscribed([self._x.channel(names[0])])
        except Exception:  # LookupError, BrokerError, redis-py failing mid-reconnect
            return await super().wait_for_work(
                names, timeout_s, worker_id=worker_id, lease_s=lease_s, limit=limit
            )
        old = self._handoff.retire(worker_id)
        ticket = self._handoff.issue(names[0], worker_id, lease_s, limit)
        park = (ticket, num(self.clock.now() + timeout_s + MARGIN_S))
        try:
            reserved = self._reserver.lease(names, worker_id, lease_s, limit, old, park)
            leases = await self._given_back_if_cancelled(reserved)
            if not ticket.parked:  # work was ready: nothing can be handed to the ticket
                self._handoff.retire(worker_id)
            if leases:  # (else parked: the next reserve ends the ticket)
                return leases
            if ticket.due is not None:
                timeout_s = min(timeout_s, max(ticket.due - self.clock.now(), 0.0))
            await listener.wait([self._x.channel(names[0])], timeout_s, lambda: bool(ticket.inbox))
            return self._handoff.take(ticket)
        except asyncio.CancelledError:
            self._handoff.retire(worker_id)
            handed = self._handoff.take(ticket)
            await self.release(handed + await self._reserver.unpark(ticket))
            raise

    async def _subscribed(
        self,
        channels: Sequence[str],
        *,
        handler: Callable[[bytes], None] | None = None,
        confirm: bool = False,
    ) -> Listener:
        await self._redis()
        if self._listener is not None and self._listener.failed:
            await self._listener.close()
            self._listener = None
        if self._listener is None:
            # A plain connection even to a cluster: PUBLISH reaches every node of one.
            self._listener = Listener(plain_client(self.options))
        with errors(self._where):
            await self._listener.subscribe(channels, handler=handler, confirm=confirm)
        return self._listener

    async def next_due(self, queues: Sequence[str]) -> float | None:
        commands = [("ZRANGE", self._x.q(q).scheduled, 0, 0, "WITHSCORES") for q in queues]
        heads = await self._x.commands(commands)
        # redis-py 5.0.1 (our floor) returns a raw ZRANGE ... WITHSCORES flat ([member,
        # score]); newer releases pair it ([[member, score]]).
        due = [float(h[0][1] if isinstance(h[0], list | tuple) else h[1]) for h in heads if h]
        return min(due, default=None)

    async def extend(self, leases: Sequence[Lease], lease_s: float) -> list[bool]:
        return await self._settler.extend(leases, lease_s)

    async def settle_many(self, settlements: Sequence[Settlement]) -> list[bool]:
        """One pipeline: the acks one `ack.lua` call per queue, every other ending one
        script call each."""
        return await self._settler.settle_many(settlements)

    async def cancel_requested(self, leases: Sequence[Lease]) -> set[str]:
        return await self._signals.cancel_requested(leases)

    async def release(self, leases: Sequence[Lease]) -> None:
        await self._settler.release(leases)

    async def cancel(self, job_id: str) -> bool:
        return await self._signals.cancel(job_id)

    async def outbox(self, limit: int = 500) -> list[Ended]:
        """Merges the per-queue outboxes (see `_flow.py`)."""
        return await self._flow.outbox(limit)

    async def clear_outbox(self, job_ids: Sequence[str]) -> list[str]:
        return await self._flow.clear_outbox(job_ids)

    async def wait_finished(self, job_id: str, timeout_s: float) -> None:
        """Pushed from any process, for jobs someone waits on (see `_signals.py`)."""
        await self._signals.wait_finished(job_id, timeout_s)

    # -- inspection -----------------------------------------------------------------------

    async def counts(self, queues: Sequence[str] | None = None) -> dict[str, QueueStats]:
        return await self._inspector.counts(queues)

    async def finished(self, since: float, queues: Sequence[str] | None = None) -> list[Finished]:
        return await self._inspector.finished(since, queues)

    async def get_job(self, job_id: str) -> JobInfo | None:
        return await self._inspector.get_job(job_id)

    async def set_progress(self, job_id: str, progress: bytes) -> None:
        ttl_ms = str(math.ceil(self.retention_s * 1000))
        await self._x.commands(
            [("SET", K.progress_key(self.prefix, job_id), progress, "PX", ttl_ms)]
        )

    async def find(self, key: str) -> JobInfo | None:
        return await self._inspector.find(key)

    async def workflow_jobs(self, workflow_id: str, *, limit: int = 1000) -> list[JobInfo]:
        return await self._workflows.workflow_jobs(workflow_id, limit)

    async def list_jobs(
        self,
        *,
        queue: str | None = None,
        state: JobState | None = None,
        limit: int = 50,
        cursor: str | None = None,
        since: float | None = None,
        until: float | None = None,
    ) -> Page:
        """Newest first across the chosen queues; the cursor is the member of the
        page's last job in the index listed: `jobs` (enqueue time, sequence, id), or
        with a time range `created` (creation time, then the same)."""
        return await self._inspector.list_jobs(queue, state, limit, cursor, since, until)

    async def replay_dead(
        self, queue: str | None = None, job_ids: Sequence[str] | None = None
    ) -> int:
        return await self._inspector.replay_dead(queue, job_ids)

    async def purge_dead(
        self,
        queue: str | None = None,
        job_ids: Sequence[str] | None = None,
        *,
        older_than: float | None = None,
    ) -> int:
        return await self._inspector.purge_dead(queue, job_ids, older_than)

    async def queues(self) -> list[str]:
        return await self._x.known_queues()

    # -- coordination and housekeeping ----------------------------------------------------

    async def take_rate(self, key: str, *, limit: int, per_s: float) -> float:
        return await self._flow.take_rate(key, limit, per_s)

    async def join(
        self, group_id: str, member_id: str, *, index: int, total: int, outcome: bytes
    ) -> list[bytes] | None:
        return await self._flow.join(group_id, member_id, index, total, outcome)

    async def acquire_slot(self, key: str, *, limit: int, holder: str, ttl_s: float) -> bool:
        return await self._flow.acquire_slot(key, limit, holder, ttl_s)

    async def compare_and_set(
        self, name: str, expected: str | None, new: str, *, ttl_s: float
    ) -> str | None:
        return await self._flow.compare_and_set(name, expected, new, ttl_s)

    async def release_slot(self, key: str, holder: str) -> None:
        await self._flow.release_slot(key, holder)

    def _worker_keys(self) -> list[str]:
        return [self.global_keys.workers, self.global_keys.workers_seen]

    async def register_worker(self, info: WorkerInfo, ttl_s: float) -> None:
        """Also says that this worker drains queue inboxes (`_inbox.py`): producers use
        them only while every live worker does."""
        now = self.clock.now()
        extra = {**info.extra, INBOX_FLAG: INBOX_LEVEL}
        data = msgspec.json.encode(replace(info, last_seen=now, extra=extra))
        until = num(now + ttl_s)
        await self._x.run("worker_register", self._worker_keys(), [info.id, data, until])

    async def unregister_worker(self, worker_id: str) -> None:
        """Also ends the worker's parking ticket, if one is left (a stop between two
        waits), giving back at once what was handed to it (`_handoff.py`)."""
        if (ticket := self._handoff.retire(worker_id)) is not None:
            await self.release(await self._reserver.unpark(ticket))
        await self._x.run("worker_forget", self._worker_keys(), ["id", worker_id])

    async def workers(self) -> list[WorkerInfo]:
        reply = await self._x.run("workers", self._worker_keys(), [num(self.clock.now())])
        infos = [msgspec.json.decode(raw, type=WorkerInfo) for raw in reply]
        for info in infos:  # the broker's own flag (`register_worker`), not the worker's
            info.extra.pop(INBOX_FLAG, None)
        return infos

    async def sweep(self) -> SweepReport:
        """Expire, purge and forget, in batches of `BATCH` per queue and script call
        until nothing is left, so that no call holds Redis for long."""
        now = self.clock.now()
        expired = purged = 0
        pending = await self._x.known_queues()
        while pending:
            args = [num(now), num(now + self.retention_s), str(BATCH), self._x.ended_channel]
            args.append(str(minute_of(now - FINISHED_KEEP_S)))
            replies = await self._x.run_many([("sweep", self._x.q(q), args) for q in pending])
            expired += sum(int(r[0]) for r in replies)
            purged += sum(int(r[1]) for r in replies)
            pending = [
                q for q, r in zip(pending, replies, strict=True) if max(map(int, r)) >= BATCH
            ]
        removed = await self._x.run("worker_forget", self._worker_keys(), ["lapsed", num(now)])
        return SweepReport(expired=expired, purged=purged, workers_removed=int(removed))

    # -- operations: pause flags and attempt history (`_operate.py`) --------------------

    async def set_paused(self, name: str, paused: bool) -> bool:
        return await self._operations.set_paused(name, paused)

    async def paused(self) -> dict[str, float]:
        return await self._operations.paused()

    async def record_attempt(self, job_id: str, token: str, record: bytes, *, keep: int) -> None:
        await self._operations.record_attempt(job_id, token, record, keep)

    async def attempt_records(self, job_id: str) -> tuple[list[bytes], int]:
        return await self._operations.attempt_records(job_id)
