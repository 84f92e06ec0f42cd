"""Credentials never appear in what offload shows: reprs, errors, log lines."""

from __future__ import annotations

import logging

import pytest

from offload import Offload
from offload._redact import RedactingFormatter, redact, redact_url
from offload.brokers import from_url
from offload.errors import BrokerUnavailable, ConfigurationError

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        (f"redis://:{SECRET}@h:6379/0", "redis://:***@h:6379/0"),
        (f"rediss://user:{SECRET}@h/0?prefix=p", "rediss://user:***@h/0?prefix=p"),
        (f"postgresql://u:{SECRET}@h/db?schema=s", "postgresql://u:***@h/db?schema=s"),
        (
            f"postgresql://u@h/db?password={SECRET}&schema=s",
            "postgresql://u@h/db?password=***&schema=s",
        ),
        ("sqlite:///relative/offload.db", "sqlite:///relative/offload.db"),
        ("redis://user@h/0", "redis://user@h/0"),
        (  # a state store's URL nested in a query value (sqs://, amqp://)
            f"sqs://h:9324/?region=r&state=postgresql%3A%2F%2Fu%3A{SECRET}%40db%2Fapp",
            "sqs://h:9324/?region=r&state=postgresql://u:***@db/app",
        ),
    ],
)
def test_a_url_is_shown_without_its_password(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_free_text_is_scrubbed_of_urls_and_conninfo_passwords() -> None:
    text = f"cannot reach 'redis://:{SECRET}@h/0' (dsn: host=h password={SECRET} user=u)"
    assert SECRET not in redact(text)
    assert "host=h" in redact(text) and "user=u" in redact(text)


def test_a_malformed_url_is_still_scrubbed() -> None:
    assert SECRET not in redact_url(f"postgresql://u:{SECRET}@[::1")


def test_reprs_hide_the_password() -> None:
    app = Offload(f"redis://:{SECRET}@127.0.0.1:1/0")
    assert SECRET not in repr(app)
    assert SECRET not in repr(app.broker)
    assert "127.0.0.1:1" in repr(app)


@pytest.mark.parametrize(
    "url",
    [
        f"postgresql://u:{SECRET}@127.0.0.1:1/db?schema=s",
        f"postgresql://u@127.0.0.1:1/db?password={SECRET}",
        f"redis://:{SECRET}@127.0.0.1:1/0",
        f"amqp://guest:{SECRET}@127.0.0.1:1/?state=postgresql://u:{SECRET}@h/db",
    ],
)
def test_the_parsed_settings_of_a_broker_url_hide_the_password(url: str) -> None:
    """The settings a URL is parsed into keep the password for the client library, so
    their repr (a debugger, `pytest -l`, a log of `vars(broker)`) must not show it."""
    from offload.brokers.amqp.settings import parse_url as amqp_settings
    from offload.brokers.postgres import parse_url as postgres_settings
    from offload.brokers.redis._connection import parse_url as redis_settings

    parse = {"postgresql": postgres_settings, "redis": redis_settings, "amqp": amqp_settings}
    shown = repr(parse[url.partition(":")[0]](url))
    assert SECRET not in shown
    assert "***" in shown and "127.0.0.1:1" in shown


def test_an_inline_runners_repr_hides_the_password() -> None:
    """pytest prints a failing test's fixtures by their repr (`offload_runner = ...`),
    into CI logs: a runner on a server broker must not show its password there."""
    runner = Offload("memory://").testing(f"redis://:{SECRET}@127.0.0.1:1/0")
    assert SECRET not in repr(runner)
    assert "redis://:***@127.0.0.1:1/0" in repr(runner)


@pytest.mark.parametrize(
    "url",
    [
        f"redis://:{SECRET}@h:notaport/0",
        f"redis://:{SECRET}@h:99999/0",
        f"postgresql://u:{SECRET}@[::1",
        f"mysql://u:{SECRET}@h/db",
        f"redis://:{SECRET}@h/0?cluster=maybe",
        # the state store's URL percent-encoded, as the README writes it
        f"amqp://guest:pw@h/?state=postgresql%3A%2F%2Fu%3A{SECRET}%40db%2Fapp&bogus=1",
        f"sqs://k:pw@h:99999/?region=r&state=postgresql%3A%2F%2Fu%3A{SECRET}%40db%2Fapp",
        f"sqs://k:pw@h:1/?region=r&state=postgresql%3a%2f%2fu%3a{SECRET}%40db%2fapp&bogus=1",
    ],
)
def test_a_bad_url_is_a_configuration_error_without_the_password(url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        from_url(url)
    assert SECRET not in str(caught.value)
    assert "***" in str(caught.value)


async def test_an_unreachable_redis_names_the_server_not_the_password() -> None:
    broker = from_url(f"redis://:{SECRET}@127.0.0.1:1")  # no path: the old parser showed it all
    with pytest.raises(BrokerUnavailable) as caught:
        await broker.connect()
    await broker.close()
    assert SECRET not in str(caught.value)
    assert "127.0.0.1:1" in str(caught.value)


def test_every_offload_error_scrubs_its_message() -> None:
    assert SECRET not in str(BrokerUnavailable(f"lost postgresql://u:{SECRET}@h/db"))


def test_the_log_formatter_scrubs_messages_and_tracebacks() -> None:
    formatter = RedactingFormatter(logging.Formatter("%(message)s"))
    try:
        raise RuntimeError(f"driver said redis://:{SECRET}@h/0")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "offload",
            logging.ERROR,
            __file__,
            1,
            "url %s",
            (f"redis://:{SECRET}@h",),
            sys.exc_info(),
        )
    out = formatter.format(record)
    assert SECRET not in out
    assert "RuntimeError" in out


def test_free_text_is_scrubbed_of_percent_encoded_urls() -> None:
    text = f"bad: 'x://h/?state=postgresql%3A%2F%2Fu%3A{SECRET}%40db%2Fapp%3Fschema%3Ds'"
    shown = redact(text)
    assert SECRET not in shown
    assert "%40db%2Fapp%3Fschema%3Ds" in shown
    text = f"bad: 'x://h/?state=postgresql%3A%2F%2Fdb%2Fapp%3Fpassword%3D{SECRET}%26schema%3Ds'"
    shown = redact(text)
    assert SECRET not in shown
    assert "%26schema%3Ds" in shown


@pytest.mark.parametrize("timeout", [None, 30.0])  # in a thread; in a child process
def test_a_failed_jobs_stored_error_is_scrubbed(timeout: float | None) -> None:
    """A handler's error naming the URL it could not reach kept the password in the
    job's stored error (message and traceback), shown whole by `offload show`, `offload
    dlq list` and the dashboard, while the worker's log line showed it scrubbed."""
    app = Offload("memory://")
    reach = app.task(name="reach", max_attempts=1, timeout=timeout)(reach_the_database)
    with app.testing() as runner:
        job = reach.enqueue()
        runner.drain()
        info = job.info()
    assert info.error is not None
    assert SECRET not in info.error.message and SECRET not in info.error.traceback
    assert "postgresql://app:***@db/app" in info.error.message
    assert "postgresql://app:***@db/app" in info.error.traceback


def reach_the_database() -> None:
    """A handler whose error names the URL, password included (importable by name, as
    one with a timeout must be: it runs in a child process)."""
    raise ConnectionError(f"could not reach postgresql://app:{SECRET}@db/app")
