"""Broker outages as one signal: a warning when the broker goes away, capped
exponential backoff with jitter while it is away, a line when it is back.

A worker calls its broker from several loops at once (fetch, leases, heartbeat, sweep,
cancel checks, outbox, scheduler, and each job's settlement). When the broker goes
away (a restart, a failover, a connection cut by a proxy) every one of them fails, and
each logging its own traceback every second buries the one fact that matters. So the
loops of one process share one `BrokerHealth`. A `BrokerUnavailable` marks the broker
down; if a call still fails a moment later (`BLIP_S`), one warning says so (every
failure is logged at debug level), and the first call that succeeds again logs how
long it was away. Failures that end within the moment (the calls in flight on
connections that a proxy, an idle timeout or a failover cut, which the pool then
replaced) are one info line, not an outage. Each loop
keeps its own `Attempts`, so its retries spread out (and workers do not reconnect in
lockstep), and sleeps in `pause`, which a recovery seen by any other loop cuts short.

The broker is back when the probe (a write) succeeds and every recurring loop that
failed during the outage has succeeded since. A broker of two parts fails in part: with
RabbitMQ or SQS away and its state store up, the fetch loop fails while the heartbeat,
which is the probe, goes on succeeding; a success of another loop says nothing about
the part that failed. It does hint that the broker may be back, though: it wakes the
failing loops to try again at once, at most once a second (`POKE_S`), so a broker back
after a long outage is seen by all of them within a moment, not after their backoff.

Errors other than `BrokerUnavailable` are not an outage: each is logged with its
traceback, as a bug or a bad record should be, but still retried with backoff rather
than in a tight loop.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

from offload.envelope import Backoff
from offload.errors import BrokerUnavailable
from offload.retry import backoff_delay

__all__ = ["Attempts", "BrokerHealth"]

T = TypeVar("T")

#: The retry delays of a loop while the broker is unavailable: capped exponential with
#: full jitter (`offload.retry.backoff_delay`, as for job retries). The cap is how late
#: a loop may notice the broker is back, unless another loop notices first (which
#: wakes it).
RECONNECT = Backoff(base_s=0.2, cap_s=5.0, jitter=True)
#: Failures within this many seconds of the first are one event (the calls in flight
#: when connections were cut); a failure later than that is an outage.
BLIP_S = 0.05
#: While loops still fail, another loop's success wakes them at most this often (s).
POKE_S = 1.0


class Attempts:
    """One loop's consecutive failures, and the delay before its next try."""

    def __init__(self, policy: Backoff = RECONNECT) -> None:
        self.policy = policy
        self.failures = 0

    def next_delay(self) -> float:
        """The delay before the next try; counts one more failure."""
        self.failures += 1
        return backoff_delay(self.policy, self.failures)

    def reset(self) -> None:
        self.failures = 0


class BrokerHealth:
    """Whether this process reaches its broker, as all of its loops see it.

    Args:
        log: where the outage and the recovery are reported.
        probe: a cheap broker call. A loop whose action succeeded while the broker is
            down may not have called the broker at all (nothing to extend, no tick
            due), so recovery is declared only by a call that certainly did: this one.
        on_failure: told of every failed call (the worker's hooks: broker error metrics).
    """

    def __init__(
        self,
        log: logging.Logger,
        probe: Callable[[], Awaitable[object]],
        *,
        monotonic: Callable[[], float] = time.monotonic,
        on_failure: Callable[[str, BaseException], None] | None = None,
    ) -> None:
        self._log = log
        self._on_failure = on_failure
        self._probe = probe
        self._monotonic = monotonic
        self._down_since: float | None = None
        self._first_error = ""
        self._warned = False
        self._failed_calls = 0
        self._back = asyncio.Event()
        self._failing: set[str] = set()  # recurring loops that failed and not succeeded since
        self._poke = asyncio.Event()  # wakes the failing loops' pauses (`succeeded`)
        self._poked_at = float("-inf")

    @property
    def down(self) -> bool:
        return self._down_since is not None

    def failed(self, what: str, exc: BaseException, *, recurring: bool = False) -> None:
        """Record that a call (`what`, e.g. "reserve") raised `exc`. `recurring`: the
        call is a loop's, which tries again and says `succeeded(what)` once it works:
        until then the broker is not back, whatever other loops see."""
        if self._on_failure is not None:
            self._on_failure(what, exc)
        if not isinstance(exc, BrokerUnavailable):  # the broker answered: not an outage
            self._failing.discard(what)
            self._log.error("%s failed", what, exc_info=exc, extra={"action": "broker_error"})
            return
        self._log.debug("%s failed: %s", what, exc)
        if recurring:
            self._failing.add(what)
        if self._down_since is None:
            self._down_since = self._monotonic()
            self._first_error = f"{what} failed: {exc}"
            self._warned = False
            self._failed_calls = 1
            self._back = asyncio.Event()
            return
        self._failed_calls += 1
        if not self._warned and self._monotonic() - self._down_since >= BLIP_S:
            self._warned = True
            self._log.warning(
                "broker unavailable (%s); retrying with backoff until it is back",
                self._first_error,
                extra={"action": "broker_unavailable"},
            )

    async def succeeded(self, what: str | None = None) -> None:
        """Record that a loop's action (`what`, as given to `failed`) completed: if the
        broker was down and no recurring loop still fails, confirm with the probe that
        it is back (and say so once)."""
        if what is not None:
            self._failing.discard(what)
        if self._down_since is None:
            return
        if self._failing:
            now = self._monotonic()
            if now - self._poked_at >= POKE_S:
                self._poked_at = now
                self._poke.set()
                self._poke = asyncio.Event()
            return
        try:
            await self._probe()
        except Exception as exc:
            self.failed("probe", exc)
            return
        if self._down_since is None:
            return  # another loop said so first
        if self._warned:
            self._log.info(
                "broker reachable again after %.1f s (%d calls failed meanwhile)",
                self._monotonic() - self._down_since,
                self._failed_calls,
                extra={"action": "broker_reachable"},
            )
        else:
            self._log.info(
                "a broker connection was lost (%s); reconnected",
                self._first_error,
                extra={"action": "broker_reconnected"},
            )
        self._down_since = None
        self._back.set()

    async def pause(self, seconds: float, stopping: asyncio.Event | None = None) -> None:
        """Sleep `seconds`, or less: until `stopping` is set, or, while the broker is
        down, until another loop finds it back."""
        events = [stopping] if stopping is not None else []
        if self._down_since is not None:
            events += [self._back, self._poke]
        if not events:
            await asyncio.sleep(seconds)
            return
        waiters = [asyncio.ensure_future(event.wait()) for event in events]
        try:
            await asyncio.wait(waiters, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()

    async def every(
        self,
        what: str,
        period_s: float | Callable[[], float],
        action: Callable[[], Awaitable[object]],
        stopping: asyncio.Event,
    ) -> None:
        """Run `action` every `period_s` (or the seconds it returns) until `stopping`;
        a failure is recorded and retried after a backoff instead."""
        attempts = Attempts()
        while not stopping.is_set():
            try:
                await action()
            except Exception as exc:
                self.failed(what, exc, recurring=True)
                delay = attempts.next_delay()
            else:
                attempts.reset()
                await self.succeeded(what)
                delay = period_s if isinstance(period_s, float | int) else period_s()
            await self.pause(delay, stopping)

    async def reach(
        self, connect: Callable[[], Awaitable[object]], stopping: asyncio.Event
    ) -> bool:
        """Await `connect()` until it succeeds, retrying `BrokerUnavailable` with backoff,
        or until `stopping` is set; False if it stopped first. A process started while
        its broker is down (a deploy during a broker restart or failover) waits for the
        broker, as it would ride out the same outage a minute later, instead of exiting;
        a bad URL or option (`ConfigurationError`) still ends it at once."""
        attempts = Attempts()
        while not stopping.is_set():
            try:
                await connect()
            except BrokerUnavailable as exc:
                self.failed("connect", exc)
                await self.pause(attempts.next_delay(), stopping)
                continue
            await self.succeeded()
            return True
        return False

    async def retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """Await `call()` until it does not raise `BrokerUnavailable` (with backoff in
        between); any other exception is raised. For a step that must happen, such as
        recording a job's outcome, rather than one a loop will try again anyway."""
        attempts = Attempts()
        while True:
            try:
                result = await call()
            except BrokerUnavailable as exc:
                self.failed(what, exc)
                await self.pause(attempts.next_delay())
                continue
            await self.succeeded()
            return result
