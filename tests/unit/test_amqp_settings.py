"""The `amqp://` URL and the RabbitMQ topology rules, without a server."""

from __future__ import annotations

import pytest

from offload._redact import redact
from offload.brokers.amqp import AmqpDelivery, parse_url
from offload.brokers.amqp.topology import (
    BUCKET_MAX_MS,
    BUCKET_MIN_MS,
    Names,
    amqp_priority,
    bucket_for,
)
from offload.codec import encode_envelope
from offload.envelope import Envelope, new_job_id
from offload.errors import BrokerUnavailable, ConfigurationError


def test_url_parameters_are_read_and_kept_out_of_the_connection_url() -> None:
    settings = parse_url(
        "amqp://u:secret@h:5673/v?state=postgresql://p:pw@db/app&prefix=app1"
        "&queue_type=quorum&prefetch=8&consumer_timeout=3600&heartbeat=10"
    )
    assert settings.connect_url == "amqp://u:secret@h:5673/v?heartbeat=10"
    assert settings.state_url == "postgresql://p:pw@db/app"
    assert (settings.prefix, settings.queue_type, settings.prefetch) == ("app1", "quorum", 8)
    assert (settings.consumer_timeout_s, settings.heartbeat_s) == (3600.0, 10)


def test_without_state_the_url_names_no_state_store() -> None:
    assert parse_url("amqp://guest:guest@127.0.0.1/").state_url is None


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("prefecth=3", "prefecth"),
        ("prefetch=-1", "prefetch="),
        ("prefetch=many", "prefetch="),
        ("queue_type=stream", "queue_type="),
        ("prefix=a b", "prefix="),
        ("consumer_timeout=0", "consumer_timeout="),
        ("state=mysql://db", "state="),
    ],
)
def test_a_bad_parameter_is_refused_by_name(query: str, named: str) -> None:
    with pytest.raises(ConfigurationError, match=named):
        parse_url(f"amqp://u:secret@h/?{query}")


def test_a_bad_state_store_scheme_names_the_stores_that_work() -> None:
    """The README names sqlite:///, postgresql:// and memory:// (Redis is refused as a
    store); the message named redis:// among them and left memory:// out."""
    with pytest.raises(ConfigurationError) as caught:
        parse_url("amqp://u:secret@h/?state=mysql://db")
    message = str(caught.value)
    assert "sqlite:///" in message and "postgresql://" in message and "memory://" in message
    assert "redis://" not in message


def test_an_error_about_the_url_shows_no_password() -> None:
    with pytest.raises(ConfigurationError) as caught:
        parse_url("amqp://u:secret@h/?nope=1")
    assert "secret" not in str(caught.value)
    assert "secret" not in redact(repr(caught.value))


@pytest.mark.parametrize(
    ("remaining_ms", "bucket"),
    [
        (0, None),
        (BUCKET_MIN_MS - 1, None),
        (BUCKET_MIN_MS, BUCKET_MIN_MS),
        (900, 512),
        (1024, 1024),
        (10**12, BUCKET_MAX_MS),
    ],
)
def test_a_delay_goes_to_the_largest_bucket_not_above_it(
    remaining_ms: int, bucket: int | None
) -> None:
    assert bucket_for(remaining_ms) == bucket


def test_any_delay_reaches_its_due_time_in_few_hops() -> None:
    for delay in (65, 1000, 3_600_000, 86_400_000 * 7):
        remaining, hops = delay, 0
        while (bucket := bucket_for(remaining)) is not None:
            remaining -= bucket
            hops += 1
        assert remaining < BUCKET_MIN_MS
        assert hops <= delay.bit_length()


def test_priorities_around_the_default_keep_their_order_and_the_rest_are_clamped() -> None:
    assert [amqp_priority(p) for p in range(-5, 6)] == list(range(11))
    assert amqp_priority(-(2**31)) == 0
    assert amqp_priority(2**31 - 1) == 10


def test_a_queue_name_too_long_for_amqp_becomes_a_digest() -> None:
    names = Names("offload")
    assert names.work("emails") == "offload.q.emails"
    long = "é" * 200  # 400 bytes
    assert len(names.work(long).encode()) <= 255
    assert names.work(long) != names.work("è" * 200)


async def test_an_unreachable_rabbitmq_is_broker_unavailable_without_driver_noise(
    caplog: pytest.LogCaptureFixture,
) -> None:
    delivery = AmqpDelivery("amqp://guest:s3cret@127.0.0.1:1/")
    envelope = Envelope(id=new_job_id(), task="t")
    with pytest.raises(BrokerUnavailable, match="RabbitMQ connect failed") as caught:
        await delivery.enqueue([(envelope, encode_envelope(envelope))])
    assert "s3cret" not in str(caught.value)
    assert [r for r in caplog.records if r.name.startswith("aiormq")] == []
    await delivery.close()
