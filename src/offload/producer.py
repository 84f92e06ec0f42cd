"""`Producer`: builds envelopes and enqueues them; the one way a job enters a broker.

Tasks (`task.enqueue`), enqueue by name (`app.enqueue`), workflows, the scheduler, the
Django backend and the workflow engine's follow-ups all build their jobs here
(`envelope`, `items`) and send them here: from async code (`enqueue_async`), from sync
code (`enqueue`: the broker's blocking fast path where it has one, else the portal
loop), or on the application's own connection, inside its transaction (`enqueue_in`).

It also owns the broker connection of its app: the broker for `url`, connected on
first use, the sync portal, and the portal's own broker where the broker is loop-bound.
It returns the broker's `EnqueueResult`s; `Job` handles are made above it (tasks, the
app), so that the handle, whose `cancel` runs the workflow engine, may sit above the
engine that sits above the producer.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from offload import validation
from offload._portal import Portal
from offload._redact import redact_url
from offload.brokers import from_url
from offload.brokers.base import Broker, EnqueueResult, TransactionalEnqueue
from offload.clock import Clock
from offload.envelope import Envelope, new_job_id
from offload.errors import ConfigurationError
from offload.hooks import Hooks
from offload.options import Call, Declared, KeySpec, Overrides

__all__ = ["Item", "Producer"]

#: A checked envelope and its encoding: what a broker's `enqueue` stores.
Item = tuple[Envelope, bytes]


class Producer:
    """Builds and enqueues the jobs of one app.

    Args:
        url: the broker URL.
        clock: time source for envelopes (`created_at`, delays, expiry) and the broker.
        tasks: the app's registry, read at each enqueue (a task's defaults, its
            signature); a name not in it is enqueued with the app's defaults.
        default_queue: queue of jobs whose task names none.
        max_queue_depth: an app-wide `QueueFull` bound (a task's `max_depth` wins).
    """

    def __init__(
        self,
        url: str,
        *,
        clock: Clock,
        tasks: Mapping[str, Declared],
        default_queue: str,
        max_queue_depth: int | None,
    ) -> None:
        self.url = url
        self.clock = clock
        self.broker: Broker = from_url(url, clock=clock)
        self.tasks = tasks
        self.default_queue = default_queue
        self.max_queue_depth = max_queue_depth
        self.portal = Portal(on_exit=self._close_brokers)
        self._connected = False
        # A loop-bound broker (Capabilities.loop_bound) cannot serve the sync portal's
        # loop and the caller's (a worker's) at once: the portal gets its own instance.
        self._portal_broker: Broker | None = None
        self._pid = os.getpid()
        self._fork_lock = threading.Lock()
        #: A forked child's copies of its parent's brokers: kept, never used or closed
        #: (their connections are the parent's; closing them would end its sessions).
        self._inherited: list[Broker] = []
        #: Lifecycle hooks (`offload.hooks`): every enqueue path runs `before_enqueue`
        #: on each job it builds and `after_enqueue` once the broker answered (or not).
        self.hooks = Hooks()

    # -- building ----------------------------------------------------------------------

    def envelope(self, name: str, call: Call, overrides: Overrides, now: float) -> Envelope:
        """Build one job of task `name`. Routing (queue, priority) and time (delay,
        expiry) are fixed here; attempts, backoff, timeout and result TTL travel only
        when overridden, so the worker's task definition stays the source of truth
        (max_attempts is also copied when known, for inspection)."""
        task = self.tasks.get(name)
        defaults = task.defaults if task is not None else None
        o = overrides
        not_before = o.at if o.at is not None else (now + o.delay_s if o.delay_s else None)
        expires_s = o.expires_s
        if expires_s is None and defaults is not None:
            expires_s = defaults.expires_s
        if o.expires_at is not None:
            expires_at: float | None = o.expires_at
        else:
            expires_at = now + expires_s if expires_s is not None else None
        priority = o.priority
        if priority is None:
            priority = defaults.priority if defaults is not None else 0
        return Envelope(
            id=new_job_id(),
            task=name,
            args=list(call.args),
            kwargs=call.kwargs,
            queue=o.queue or (defaults.queue if defaults is not None else self.default_queue),
            priority=priority,
            max_attempts=o.max_attempts or (defaults.max_attempts if defaults else None),
            backoff=o.backoff,
            not_before=not_before,
            expires_at=expires_at,
            key=_key(o.key, call),
            timeout_s=o.timeout_s,
            created_at=now,
        )

    def items(
        self, name: str, calls: Sequence[Call], overrides: Overrides, *, hooks: bool = True
    ) -> list[Item]:
        """Checked, encoded envelopes: everything an enqueue sends to the broker. The
        whole batch is checked before the broker sees any of it (all or nothing).

        `hooks=False` leaves out the `before_enqueue` hooks, for jobs that may never be
        sent (Django's on-commit enqueue): `hooked` runs them once the send is certain,
        so that every `before_enqueue` a hook hears is followed by its `after_enqueue`.

        Raises:
            InvalidArguments: a call does not fit the registered task's signature.
            SerializationError / ConfigurationError: an argument or option is bad.
        """
        task = self.tasks.get(name)
        now = self.clock.now()
        items: list[Item] = []
        hooked: Envelope | None = None  # the job the hooks saw last, not checked yet
        try:
            for call in calls:
                if task is not None:
                    task.check_arguments(call.args, call.kwargs)
                envelope = self.envelope(name, call, call.overrides or overrides, now)
                if envelope.expires_at is not None and envelope.not_before is not None:
                    _check_due_before_expiry(envelope, now)
                if not self.hooks or not hooks:
                    items.append(validation.checked(envelope))
                    continue
                hooked = self.hooks.before_enqueue(envelope)
                items.append(validation.checked(hooked))
                hooked = None
        except Exception as exc:  # a later call of the batch is bad: the hooks saw the
            if self.hooks and hooks:  # jobs before it, tell them none was sent
                self.not_sent([*items, *([] if hooked is None else [(hooked, b"")])], exc)
            raise
        return items

    def hooked(self, items: Sequence[Item]) -> list[Item]:
        """`items` made with `items(..., hooks=False)`, passed through the
        `before_enqueue` hooks now and checked again, just before they are sent.

        Raises:
            SerializationError / ConfigurationError: a hook made an envelope invalid
                (the hooks hear that none of the batch was sent).
        """
        if not self.hooks:
            return list(items)
        hooked: list[Item] = []
        for envelope, _ in items:
            envelope = self.hooks.before_enqueue(envelope)
            try:
                hooked.append(validation.checked(envelope))
            except Exception as exc:
                self.not_sent([*hooked, (envelope, b"")], exc)
                raise
        return hooked

    # -- sending -----------------------------------------------------------------------

    def enqueue(
        self, name: str, calls: Sequence[Call], overrides: Overrides
    ) -> list[EnqueueResult]:
        """Enqueue jobs of task `name` from synchronous code."""
        return self.send(name, self.items(name, calls, overrides))

    async def enqueue_async(
        self, name: str, calls: Sequence[Call], overrides: Overrides
    ) -> list[EnqueueResult]:
        """`enqueue` for async code."""
        return await self.send_async(name, self.items(name, calls, overrides))

    def send(self, name: str, items: list[Item]) -> list[EnqueueResult]:
        """Send checked, encoded envelopes (`items`) from synchronous code: on the
        calling thread where the broker can (`Capabilities.blocking_enqueue`), else on
        the portal loop."""
        self._own_connections()
        broker = self._portal_broker or self.broker
        if broker.capabilities.blocking_enqueue and not self.portal.is_current():
            try:
                results = broker.enqueue_blocking(items, max_depth=self.max_depth(name))
            except BaseException as exc:
                self.not_sent(items, exc)
                raise
            if results is not None:  # else the broker leaves it to `enqueue`
                return self.sent(items, results)
        return self.portal.run(self.send_async(name, items))

    async def send_async(self, name: str, items: list[Item]) -> list[EnqueueResult]:
        """`send` for async code."""
        if not items:
            return []
        try:
            broker = await self.connected_broker()
            results = await broker.enqueue(items, max_depth=self.max_depth(name))
        except BaseException as exc:
            self.not_sent(items, exc)
            raise
        return self.sent(items, results)

    async def enqueue_envelopes_async(self, envelopes: Sequence[Envelope]) -> list[EnqueueResult]:
        """Enqueue prepared envelopes, of any tasks, in one broker call (a workflow's
        stages); all are checked before any is sent."""
        if self.hooks:
            envelopes = [self.hooks.before_enqueue(e) for e in envelopes]
        try:
            items = [validation.checked(e) for e in envelopes]  # all, before any broker call
        except Exception as exc:
            self.not_sent([(e, b"") for e in envelopes], exc)
            raise
        try:
            broker = await self.connected_broker()
            results = await broker.enqueue(items, max_depth=self.max_queue_depth)
        except BaseException as exc:
            self.not_sent(items, exc)
            raise
        return self.sent(items, results)

    def sent(self, items: Sequence[Item], results: list[EnqueueResult]) -> list[EnqueueResult]:
        """`results`, once the hooks heard of them."""
        if self.hooks:
            self.hooks.after_enqueue([e for e, _ in items], [r.created for r in results])
        return results

    def not_sent(self, items: Sequence[Item], error: BaseException) -> None:
        """Tell the hooks that these jobs were not enqueued, and why."""
        if self.hooks:
            self.hooks.after_enqueue([e for e, _ in items], None, error)

    def enqueue_in(
        self, connection: Any, name: str, calls: Sequence[Call], overrides: Overrides
    ) -> list[EnqueueResult]:
        """Enqueue on the application's synchronous connection, in its transaction.

        Raises:
            ConfigurationError: the broker cannot join a transaction.
        """
        items = self.items(name, calls, overrides)
        try:
            results = self.transactional().enqueue_in_sync(connection, items)
        except BaseException as exc:
            self.not_sent(items, exc)
            raise
        return self.sent(items, results)

    async def enqueue_in_async(
        self, connection: Any, name: str, calls: Sequence[Call], overrides: Overrides
    ) -> list[EnqueueResult]:
        """Enqueue on the application's async connection, in its transaction."""
        items = self.items(name, calls, overrides)
        try:
            results = await self.transactional().enqueue_in(connection, items)
        except BaseException as exc:
            self.not_sent(items, exc)
            raise
        return self.sent(items, results)

    def transactional(self) -> TransactionalEnqueue:
        """The broker, as one that can write in the application's transaction.

        Raises:
            ConfigurationError: it cannot (only PostgreSQL can).
        """
        broker = self.broker
        if broker.capabilities.transactional_enqueue and isinstance(broker, TransactionalEnqueue):
            return broker
        raise ConfigurationError(
            f"the broker {redact_url(broker.url)!r} cannot enqueue inside your transaction: "
            "use a postgresql:// broker, or enqueue after your commit"
        )

    def max_depth(self, name: str) -> int | None:
        """The `QueueFull` bound of task `name`'s queue."""
        task = self.tasks.get(name)
        max_depth = task.defaults.max_depth if task is not None else None
        return self.max_queue_depth if max_depth is None else max_depth

    # -- the connection ----------------------------------------------------------------

    async def connected_broker(self) -> Broker:
        """The broker, connected on first use.

        On the sync portal's loop a loop-bound broker is a second instance of the same
        URL, so that sync producers and an async worker may share this app.
        """
        self._own_connections()
        if self.broker.capabilities.loop_bound and self.portal.is_current():
            if self._portal_broker is None:
                self._portal_broker = from_url(self.url, clock=self.clock)
            await self._portal_broker.connect()  # idempotent
            return self._portal_broker
        if not self._connected:
            await self.broker.connect()
            self._connected = True
        return self.broker

    def rebind(self, url: str, clock: Clock) -> Callable[[], None]:
        """Point at a new broker for `url` and at `clock` (for `app.testing()`);
        returns the function that gives the old ones back. The caller closes the new
        broker (and the portal's, `portal_broker`) before calling it."""
        saved = (self.url, self.clock, self.broker, self._connected, self._portal_broker)
        self.url, self.clock = url, clock
        self.broker = from_url(url, clock=clock)
        self._connected, self._portal_broker = False, None

        def restore() -> None:
            self.url, self.clock, self.broker, self._connected, self._portal_broker = saved

        return restore

    @property
    def portal_broker(self) -> Broker | None:
        """The portal loop's own broker, if one was made (loop-bound brokers)."""
        return self._portal_broker

    def _own_connections(self) -> None:
        """In a forked child, start over from a fresh broker for `url`: the inherited
        one is connected through the parent's sockets, and served by the parent's
        portal loop, whose thread the child does not have (it would wait forever)."""
        if self._pid == os.getpid():
            return
        with self._fork_lock:
            if self._pid == os.getpid():
                return
            self._inherited += [b for b in (self.broker, self._portal_broker) if b is not None]
            self.broker = from_url(self.url, clock=self.clock)
            self._connected, self._portal_broker = False, None
            self._pid = os.getpid()

    async def aclose(self) -> None:
        """Close the broker."""
        self._own_connections()
        if self._connected:
            self._connected = False
            await self.broker.close()

    def close(self) -> None:
        """Close the broker and the sync portal (see `Offload.close`)."""
        if self.portal.started or self._connected:
            self.portal.run(self._close_brokers())
        self.portal.close()

    async def _close_brokers(self) -> None:
        """Close the portal's broker and the main one (run on the portal loop)."""
        self._own_connections()
        portal_broker, self._portal_broker = self._portal_broker, None
        if portal_broker is not None:
            await portal_broker.close()
        await self.aclose()


def _key(spec: KeySpec | None, call: Call) -> str | None:
    if spec is None or isinstance(spec, str):
        return spec
    return validation.job_key(spec(*call.args, **call.kwargs), "the key function's result")


def _check_due_before_expiry(envelope: Envelope, now: float) -> None:
    """Refuse a job that expires before it is due: it could never run, and was stored
    only to turn `expired` (a task's `expires=900` with `options(delay=3600)`).

    Raises:
        ConfigurationError: naming both times, from now.
    """
    assert envelope.expires_at is not None and envelope.not_before is not None
    if envelope.expires_at <= envelope.not_before:
        raise ConfigurationError(
            f"a job of task {envelope.task!r} would expire {envelope.expires_at - now:g} s "
            f"from now, before it is due ({envelope.not_before - now:g} s from now: delay= "
            "or at=), so it could never run; give it a later expires="
        )
