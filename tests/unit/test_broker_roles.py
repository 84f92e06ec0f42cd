"""The broker contract in roles: a `Settlement` takes what its ending needs and nothing
else; a broker that can only deliver is refused without a state store (naming the
setting) and, with one, runs jobs through a real worker; and the worker settles every
outcome in batches through `settle_many`."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from offload import JobState, Offload, Retry, Worker
from offload.brokers import SCHEMES, from_url
from offload.brokers.base import Broker, Lease, Settlement
from offload.brokers.composite import Composite, with_state_store
from offload.brokers.roles import Ending, Role, roles_of
from offload.brokers.sqlite import SQLiteBroker
from offload.envelope import ErrorInfo
from offload.errors import ConfigurationError
from tests.conformance.delivery_only import DeliveryOnly

LEASE = Lease("job", "token", "default", 1, 0.0, b"{}")
BOOM = ErrorInfo("ValueError", "boom")


class SQLiteDelivery(DeliveryOnly):
    """`sqlitedelivery:///path`: the delivery of the SQLite file at `path`, nothing else,
    standing in for a message queue (its state store is another file)."""

    def __init__(self, url: str, **kwargs: Any) -> None:
        super().__init__(SQLiteBroker("sqlite" + url.removeprefix("sqlitedelivery"), **kwargs))


@pytest.fixture
def delivery_scheme(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setitem(SCHEMES, "sqlitedelivery", (__name__, "SQLiteDelivery"))
    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)
    return "sqlitedelivery"


@pytest.mark.parametrize(
    ("ending", "fields"),
    [
        (Ending.ACK, {"error": BOOM}),
        (Ending.RETRY, {"error": BOOM}),  # no `at`
        (Ending.RETRY, {"at": 1.0}),  # no error
        (Ending.BURY, {}),
        (Ending.DEFER, {"at": 1.0, "error": BOOM}),
        (Ending.CANCEL, {"error": BOOM, "result": b"1"}),
    ],
    ids=str,
)
def test_a_settlement_refuses_fields_its_ending_does_not_take(
    ending: Ending, fields: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=str(ending)):
        Settlement(LEASE, ending, **fields)


def test_each_ending_names_the_state_it_leaves_the_job_in() -> None:
    states = {ending: ending.state for ending in Ending}
    assert states == {
        Ending.ACK: JobState.SUCCEEDED,
        Ending.RETRY: JobState.SCHEDULED,
        Ending.BURY: JobState.DEAD,
        Ending.DEFER: JobState.SCHEDULED,
        Ending.CANCEL: JobState.CANCELLED,
    }


def test_every_broker_of_the_registry_plays_every_role(tmp_path: Path) -> None:
    for url in ("memory://", f"sqlite:///{tmp_path / 'a.db'}"):
        assert roles_of(from_url(url)) == frozenset(Role)


def test_a_delivery_only_broker_without_a_state_store_names_the_setting(
    delivery_scheme: str, tmp_path: Path
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        from_url(f"{delivery_scheme}:///{tmp_path / 'jobs.db'}")
    message = str(caught.value)
    assert "state_url" in message and "OFFLOAD_STATE_URL" in message
    assert "flow, inspection, fleet, signals" in message


def test_a_state_store_must_play_every_role(tmp_path: Path) -> None:
    store = DeliveryOnly(from_url("memory://"))
    with pytest.raises(ConfigurationError, match="must be a full broker"):
        with_state_store(DeliveryOnly(from_url("memory://")), store)  # type: ignore[arg-type]


def test_a_state_store_that_keeps_no_ledger_is_refused_naming_those_that_do() -> None:
    redis = from_url("redis://127.0.0.1:6379/15")  # a full broker without `Ledger` (yet)
    with pytest.raises(ConfigurationError, match=r"use a sqlite:///, postgresql://"):
        with_state_store(DeliveryOnly(from_url("memory://")), redis)


def test_the_state_url_makes_a_composite_of_the_two(
    delivery_scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLOAD_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    broker = from_url(f"{delivery_scheme}:///{tmp_path / 'queue.db'}")
    assert isinstance(broker, Composite)
    assert isinstance(broker.delivery, SQLiteDelivery)
    assert isinstance(broker.inspection, SQLiteBroker)
    parts: list[object] = [broker.flow, broker.fleet, broker.signals]
    assert all(part is broker.inspection for part in parts)


async def test_a_worker_runs_jobs_on_a_delivery_only_broker_with_a_state_store(
    delivery_scheme: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OFFLOAD_STATE_URL", f"sqlite:///{tmp_path / 'state.db'}")
    app = Offload(f"{delivery_scheme}:///{tmp_path / 'queue.db'}")
    tries: list[int] = []

    @app.task(max_attempts=3)
    async def flaky(n: int) -> int:
        tries.append(n)
        if tries.count(n) == 1:
            raise Retry(delay=0)
        return n * 2

    try:
        jobs = [await flaky.enqueue_async(n) for n in range(3)]
        await Worker(app).drain()
        assert [await job.result_async(timeout=5) for job in jobs] == [0, 2, 4]
    finally:
        await app.aclose()


class Recording:
    """Counts the `settle_many` calls of a broker and the endings in each."""

    def __init__(self, broker: Broker) -> None:
        self.batches: list[list[Ending]] = []
        settle_many = broker.settle_many

        async def recorded(settlements: Any) -> list[bool]:
            self.batches.append([item.ending for item in settlements])
            await asyncio.sleep(0.01)  # a slow broker: what finishes meanwhile joins the next
            return await settle_many(settlements)

        broker.settle_many = recorded  # type: ignore[method-assign]


async def test_the_worker_batches_every_kind_of_outcome_through_settle_many() -> None:
    app = Offload("memory://")

    @app.task(max_attempts=2, give_up_on=(ValueError,))
    async def outcome(kind: str) -> str:
        await asyncio.sleep(0)
        if kind == "retry":
            raise Retry(delay=3600)
        if kind == "bury":
            raise ValueError("bad input")
        return kind

    recording = Recording(app.broker)
    try:
        kinds = ["ack", "retry", "bury"] * 10
        await outcome.enqueue_many_async(outcome.call(kind) for kind in kinds)
        await Worker(app, concurrency=30).drain()
        endings = [ending for batch in recording.batches for ending in batch]
        assert sorted(endings) == sorted([Ending.ACK, Ending.RETRY, Ending.BURY] * 10)
        assert len(recording.batches) < len(endings)  # batched, not one call per job
        assert any(len(set(batch)) > 1 for batch in recording.batches)  # kinds mixed
    finally:
        await app.aclose()
