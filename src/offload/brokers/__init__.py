"""Broker registry: a URL scheme names a broker class (or the function that builds a
broker of several parts), imported only when used.

`import offload` never imports a broker's third-party client; the broker module is
imported when a URL with its scheme is first opened.
"""

from __future__ import annotations

import importlib
import os
from typing import Any
from urllib.parse import urlsplit

from offload.brokers.base import Broker
from offload.brokers.roles import Delivery
from offload.errors import ConfigurationError

__all__ = ["SCHEMES", "from_url"]

#: URL scheme → (module, class). Add a broker by adding a line.
SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("offload.brokers.memory", "MemoryBroker"),
    "sqlite": ("offload.brokers.sqlite", "SQLiteBroker"),
    "redis": ("offload.brokers.redis", "RedisBroker"),
    "rediss": ("offload.brokers.redis", "RedisBroker"),
    "postgresql": ("offload.brokers.postgres", "PostgresBroker"),
    "postgres": ("offload.brokers.postgres", "PostgresBroker"),
    "amqp": ("offload.brokers.amqp", "AmqpDelivery"),
    "amqps": ("offload.brokers.amqp", "AmqpDelivery"),
    "sqs": ("offload.brokers.sqs", "SQSBroker"),
}


def from_url(url: str, *, state_url: str | None = None, **kwargs: Any) -> Broker:
    """Build the broker a URL names (not yet connected).

    A URL naming a broker that only delivers (`offload.brokers.roles.Delivery`:
    `amqp://`, `sqs://`) is combined with a full broker for the other roles
    (`offload.brokers.composite`): the one `state_url` names, else the URL's own
    (`state=`), else `OFFLOAD_STATE_URL`. `kwargs` go to both. Without any, the
    delivery stands alone where it can (`offload.brokers.stateless`: what it cannot
    do raises a `ConfigurationError` naming those settings).

    Raises:
        ConfigurationError: the URL is malformed (a bad host or port too) or its scheme
            is unknown, saying which schemes exist; like every offload error, its
            message shows the URL without its credentials. Also when a state store
            cannot keep a delivery's jobs (naming the stores that can).
    """
    cls = _broker_class(url)
    if issubclass(cls, Broker):
        return cls(url, **kwargs)
    from offload.brokers.composite import with_state_store

    delivery = cls(url, **kwargs)
    state_url = state_url or delivery.state_url() or os.environ.get("OFFLOAD_STATE_URL") or None
    facts = delivery.facts()
    if state_url is None and facts is not None:
        from offload.brokers.stateless import alone

        return alone(delivery, facts)
    store = None if state_url is None else from_url(state_url, **kwargs)
    return with_state_store(delivery, store)


def _broker_class(url: str) -> type[Delivery]:
    """The class (or builder function) a URL's scheme names, imported now."""
    if not isinstance(url, str) or "://" not in url:
        raise ConfigurationError(
            f"invalid broker URL {url!r}: expected SCHEME://…, "
            f"with SCHEME one of {', '.join(sorted(SCHEMES))}"
        )
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - parsing it is the check: a bad or out-of-range port raises
    except ValueError as exc:
        raise ConfigurationError(f"invalid broker URL {url!r}: {exc}") from None
    scheme = parts.scheme.lower()
    if scheme not in SCHEMES:
        raise ConfigurationError(
            f"unknown broker scheme {scheme!r} in {url!r}; "
            f"known schemes: {', '.join(sorted(SCHEMES))}"
        )
    module_name, class_name = SCHEMES[scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigurationError(
            f"the {scheme!r} broker needs an extra: "
            f"pip install 'offload[{module_name.rpartition('.')[2]}]' ({exc})"
        ) from exc
    cls: type[Delivery] = getattr(module, class_name)
    return cls
