"""`sqs://` in the broker registry: `from_url` (and so `Offload(url)`) builds SQS's
delivery with the state store named by `state_url=`, else the URL's `state=`, else
`OFFLOAD_STATE_URL` (as for every delivery-only broker), or SQS alone (refusing what
needs a store); no secret is shown.
Nothing here connects: these are the objects a URL makes."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import quote

import pytest

from offload import Offload
from offload.brokers import from_url
from offload.brokers.composite import Composite
from offload.brokers.sqlite import SQLiteBroker
from offload.brokers.sqs import SQSBroker
from offload.brokers.stateless import Stateless
from offload.errors import ConfigurationError

SECRET = "wJalrXUtnFEMI-s3cret"
SQS = f"sqs://AKIDEXAMPLE:{SECRET}@127.0.0.1:9324/?region=us-east-1&prefix=app"


@pytest.fixture(autouse=True)
def no_state_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OFFLOAD_STATE_URL", raising=False)


def test_the_state_in_the_url_is_the_store_of_every_other_role(tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path / 'state.db'}"
    broker = from_url(f"{SQS}&state={quote(store, safe='')}")
    assert isinstance(broker, Composite)
    assert isinstance(broker.delivery, SQSBroker)
    assert isinstance(broker.inspection, SQLiteBroker)
    assert broker.inspection.url == store
    assert all(part is broker.inspection for part in (broker.flow, broker.fleet, broker.signals))
    assert broker.capabilities.lapsing_leases  # SQS's visibility timeout, declared


def test_state_url_wins_over_the_url_state_which_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    urls = {name: f"sqlite:///{tmp_path / name}.db" for name in ("in_url", "arg", "env")}
    monkeypatch.setenv("OFFLOAD_STATE_URL", urls["env"])

    def store_of(url: str, **kwargs: str) -> str:
        broker = from_url(url, **kwargs)
        assert isinstance(broker, Composite)
        return broker.inspection.url

    in_url = f"{SQS}&state={quote(urls['in_url'], safe='')}"
    assert store_of(in_url, state_url=urls["arg"]) == urls["arg"]
    assert store_of(in_url) == urls["in_url"]
    assert store_of(SQS) == urls["env"]


def test_without_a_store_sqs_stands_alone_and_offload_takes_the_url() -> None:
    app = Offload(SQS)
    broker = app.broker
    assert isinstance(broker, Composite) and isinstance(broker.inspection, Stateless)
    assert SECRET not in repr(broker) and SECRET not in repr(app)
    assert SECRET not in repr(broker.delivery) and "AKIDEXAMPLE" in repr(broker)


@pytest.mark.parametrize("store", [SQS, "redis://127.0.0.1:6379/0"])
def test_a_state_store_that_cannot_keep_the_jobs_is_refused_naming_those_that_can(
    store: str,
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        from_url(SQS, state_url=store)
    message = str(caught.value)
    assert "cannot keep the jobs" in message and "sqlite:///" in message
    assert SECRET not in message


def test_a_bad_store_url_is_refused_without_showing_either_secret() -> None:
    store = f"postgresql://app:{SECRET}x@db:notaport/app"
    with pytest.raises(ConfigurationError) as caught:
        from_url(f"{SQS}&state={quote(store, safe='')}")
    assert SECRET not in str(caught.value)
