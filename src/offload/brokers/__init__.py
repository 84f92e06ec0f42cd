"""Broker registry: a URL scheme names a broker class (or the function that builds a
broker of several parts), imported only when used.

`import offload` never imports a broker's third-party client; the broker module is
imported when a URL with its scheme is first opened.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from offload.brokers.base import Broker
from offload.brokers.roles import Delivery
from offload.errors import ConfigurationError

__all__ = ["SCHEMES", "from_url"]

#: URL scheme → (module, class), or (module, function) for a broker whose URL names
#: its own state store: `open_broker(url, *, state_url=None, **kwargs) -> Broker`.
#: Add a broker by adding a line.
SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("offload.brokers.memory", "MemoryBroker"),
    "sqlite": ("offload.brokers.sqlite", "SQLiteBroker"),
    "redis": ("offload.brokers.redis", "RedisBroker"),
    "rediss": ("offload.brokers.redis", "RedisBroker"),
    "postgresql": ("offload.brokers.postgres", "PostgresBroker"),
    "postgres": ("offload.brokers.postgres", "PostgresBroker"),
    "amqp": ("offload.brokers.amqp", "AmqpDelivery"),
    "amqps": ("offload.brokers.amqp", "AmqpDelivery"),
    "sqs": ("offload.brokers.sqs", "open_broker"),
}


def from_url(url: str, *, state_url: str | None = None, **kwargs: Any) -> Broker:
    """Build the broker a URL names (not yet connected).

    A URL naming a broker that only delivers (`offload.brokers.roles.Delivery`) is
    combined with a full broker for the other roles (`offload.brokers.composite`):
    the one `state_url` names, else the URL's own (`state=` of `amqp://`), else
    `OFFLOAD_STATE_URL`. `kwargs` go to both.

    Raises:
        ConfigurationError: the URL is malformed (a bad host or port too) or its scheme
            is unknown, saying which schemes exist; like every offload error, its
            message shows the URL without its credentials. Also when the URL names a
            delivery-only broker and no state store is set (naming the setting).
    """
    target = _broker_class(url)
    if not isinstance(target, type):  # a broker of parts, built by its package
        return target(url, state_url=state_url, **kwargs)
    cls: type[Delivery] = target
    if issubclass(cls, Broker):
        return cls(url, **kwargs)
    from offload.brokers.composite import with_state_store

    delivery = cls(url, **kwargs)
    state_url = state_url or delivery.state_url() or os.environ.get("OFFLOAD_STATE_URL") or None
    store = None if state_url is None else from_url(state_url, **kwargs)
    return with_state_store(delivery, store)


def _broker_class(url: str) -> type[Delivery] | Callable[..., Broker]:
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
    cls: type[Delivery] | Callable[..., Broker] = getattr(module, class_name)
    return cls
