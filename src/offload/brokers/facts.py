"""`QueueFacts`: what a delivery-only broker (a message queue) knows of its own queues,
and how it refuses what only a state store can do (see `offload.brokers.stateless`)."""

from __future__ import annotations

import abc
from collections.abc import Sequence

from offload.brokers.records import QueueStats
from offload.envelope import Envelope
from offload.errors import ConfigurationError

__all__ = ["QueueFacts"]


class QueueFacts(abc.ABC):
    """What a delivery knows of its own queues, without a state store."""

    #: How a user gives this broker a state store, quoted by every refusal.
    setting: str
    #: The URL scheme, for the refusals' wording.
    scheme: str
    #: Whether `names` lists every queue the server has (False: only those this process
    #: used, so an operation over "every queue" must be given its queue instead).
    lists_queues: bool = True

    def needs_state(self, what: str) -> ConfigurationError:
        """The error for an operation the delivery alone cannot do."""
        return ConfigurationError(
            f"{what} needs a state store on {self.scheme}://: set {self.setting}"
        )

    def check_enqueue(self, jobs: Sequence[tuple[Envelope, bytes]], max_depth: int | None) -> None:
        """Refuse, before anything is sent, what an enqueue without a state store
        cannot do: `max_depth` (the queue cannot count and publish in one step), a
        key (nothing to look it up in), a workflow step (its follow-ups are enqueued
        under a key, and a chord's join is a store's register).

        Raises:
            ConfigurationError: naming the job and the setting that gives a store.
        """
        if max_depth is not None:
            raise self.needs_state("max_depth (a bounded queue)")
        for envelope, _ in jobs:
            if envelope.key is not None:
                raise self.needs_state(f"the idempotency key of job {envelope.id}")
            if envelope.has_follow_ups:
                raise self.needs_state(f"a workflow (chain or chord) step, job {envelope.id}")

    def unlisted(self, what: str) -> ConfigurationError:
        """The error for `what` over every queue where the server cannot list them."""
        return ConfigurationError(
            f"{what} without a queue: {self.scheme}:// cannot list its queues without a "
            f"state store; name the queue (queue=..., `-q/--queue` in the CLI) or set "
            f"{self.setting}"
        )

    @abc.abstractmethod
    async def stats(self, queue: str) -> QueueStats:
        """The counts the server keeps for `queue` (only the states it can count)."""

    @abc.abstractmethod
    async def names(self) -> list[str]:
        """The offload queues the server has (or, where it cannot list them, the ones
        this process has used)."""

    @abc.abstractmethod
    async def replay_dead(self, queue: str, job_ids: Sequence[str] | None) -> int:
        """Put dead jobs of `queue` (all, or those in `job_ids`) back on it with their
        attempts reset; how many."""

    @abc.abstractmethod
    async def purge_dead(self, queue: str, job_ids: Sequence[str] | None) -> int:
        """Delete dead jobs of `queue` (all, or those in `job_ids`); how many."""
