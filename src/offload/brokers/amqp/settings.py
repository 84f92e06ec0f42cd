"""What an `amqp://` URL asks for, checked once, before any connection is made.

    amqp://user:password@host:5672/vhost?state=postgresql://…&prefix=offload
        &queue_type=classic&prefetch=0&consumer_timeout=1800&heartbeat=30

RabbitMQ holds the jobs in flight; every job's state (keys, results, progress,
cancellation, delays, attempts, dead letters, inspection) is kept by the state store
named by `state=` (a `postgresql://` or `sqlite:///` URL; `AmqpDelivery.state_url`),
which `offload.brokers.from_url` combines with it. Without one, `from_url` raises a
`ConfigurationError` naming the settings that give one; `AmqpDelivery` alone can still
enqueue and deliver jobs without keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal
from urllib.parse import parse_qsl, unquote, urlsplit, urlunsplit

from offload._redact import dataclass_repr
from offload.errors import ConfigurationError

__all__ = ["DEFAULT_CONSUMER_TIMEOUT_S", "STATE_SETTING", "AmqpSettings", "parse_url"]

#: How a user names the state store, quoted by every error about a missing one.
STATE_SETTING = (
    "state= in the amqp:// URL (amqp://…/?state=postgresql://… or sqlite:///…, "
    "percent-encoded), state_url= or OFFLOAD_STATE_URL"
)

#: RabbitMQ's own default `consumer_timeout` (30 minutes, in seconds): a delivery not
#: acknowledged within it makes the server close the channel and redeliver every job
#: the channel held. The server's value cannot be read over AMQP, so a server
#: configured otherwise is told to offload by `consumer_timeout=` (seconds).
DEFAULT_CONSUMER_TIMEOUT_S = 1800.0

#: The URL parameters offload reads; any other is a typo, and refused.
_KNOWN = frozenset({"state", "prefix", "queue_type", "prefetch", "consumer_timeout", "heartbeat"})

QueueType = Literal["classic", "quorum"]


@dataclass(frozen=True, slots=True)
class AmqpSettings:
    """One RabbitMQ broker's configuration.

    Attributes:
        connect_url: the URL without offload's parameters, for the AMQP client (it may
            hold the password: never shown; see `offload._redact`).
        state_url: the state store's URL, None without one.
        prefix: the first part of every queue and exchange name, so several apps (and
            tests) share a vhost without meeting.
        queue_type: `classic` work queues (durable, with priorities) or `quorum` ones
            (replicated, but RabbitMQ 3.10's quorum queues have no priorities).
        prefetch: unacknowledged deliveries per consumer channel; 0 chooses twice the
            largest `reserve` limit seen (a worker's concurrency), at least 16.
        consumer_timeout_s: the server's `consumer_timeout`, in seconds (see
            `DEFAULT_CONSUMER_TIMEOUT_S`).
        heartbeat_s: AMQP heartbeat: how soon either side notices a silent peer.
    """

    connect_url: str
    state_url: str | None = None
    prefix: str = "offload"
    queue_type: QueueType = "classic"
    prefetch: int = 0
    consumer_timeout_s: float = DEFAULT_CONSUMER_TIMEOUT_S
    heartbeat_s: int = 30

    __repr__ = dataclass_repr  # the URL keeps the password: never shown


def parse_url(url: str) -> AmqpSettings:
    """The settings an `amqp://` or `amqps://` URL names.

    Raises:
        ConfigurationError: an unknown parameter, or a bad value, naming it.
    """
    parts = urlsplit(url)
    if parts.scheme not in ("amqp", "amqps"):
        raise ConfigurationError(f"not an AMQP URL: {url!r} (expected amqp:// or amqps://)")
    params: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True):
        if name not in _KNOWN:
            raise ConfigurationError(
                f"unknown parameter {name!r} in the AMQP URL {url!r}; "
                f"known: {', '.join(sorted(_KNOWN))}"
            )
        params[name] = value
    connect_url = urlunsplit(
        (parts.scheme, parts.netloc, parts.path or "/", f"heartbeat={_heartbeat(params)}", "")
    )
    return AmqpSettings(
        connect_url=connect_url,
        state_url=_state(params.get("state")),
        prefix=_prefix(params.get("prefix", "offload")),
        queue_type=_queue_type(params.get("queue_type", "classic")),
        prefetch=_int(params, "prefetch", 0, low=0, high=65535),
        consumer_timeout_s=_seconds(params, "consumer_timeout", DEFAULT_CONSUMER_TIMEOUT_S),
        heartbeat_s=_heartbeat(params),
    )


def _state(value: str | None) -> str | None:
    if value is None or value == "":
        return None
    state = unquote(value)
    scheme = state.partition("://")[0].lower()
    if scheme not in ("postgresql", "postgres", "redis", "rediss", "sqlite", "memory"):
        raise ConfigurationError(
            f"state= must be a sqlite:///, postgresql:// or memory:// URL, got {state!r}"
        )
    return state


def _prefix(value: str) -> str:
    if not value or len(value) > 64 or not all(c.isalnum() or c in "._-" for c in value):
        raise ConfigurationError(
            f"prefix= must be 1 to 64 letters, digits, '.', '_' or '-', got {value!r}"
        )
    return value


def _queue_type(value: str) -> QueueType:
    if value == "classic":
        return "classic"
    if value == "quorum":
        return "quorum"
    raise ConfigurationError(f"queue_type= must be 'classic' or 'quorum', got {value!r}")


def _int(params: dict[str, str], name: str, default: int, *, low: int, high: int) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = low - 1
    if not low <= value <= high:
        raise ConfigurationError(f"{name}= must be an integer from {low} to {high}, got {raw!r}")
    return value


def _seconds(params: dict[str, str], name: str, default: float) -> float:
    raw = params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 1.0 <= value <= 10 * 365 * 86400:
        raise ConfigurationError(f"{name}= must be seconds (at least 1), got {raw!r}")
    return value


def _heartbeat(params: dict[str, str]) -> int:
    return _int(params, "heartbeat", 30, low=0, high=3600)
