"""Broker registry: a URL scheme names a broker class, imported only when used.

`import offload` never imports a broker's third-party client; the broker module is
imported when a URL with its scheme is first opened.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from offload.brokers.base import Broker
from offload.errors import ConfigurationError

__all__ = ["SCHEMES", "from_url"]

#: URL scheme → (module, class or factory). Add a broker by adding a line.
SCHEMES: dict[str, tuple[str, str]] = {
    "memory": ("offload.brokers.memory", "MemoryBroker"),
    "sqlite": ("offload.brokers.sqlite", "SQLiteBroker"),
    "redis": ("offload.brokers.redis", "RedisBroker"),
    "rediss": ("offload.brokers.redis", "RedisBroker"),
    "postgresql": ("offload.brokers.postgres", "PostgresBroker"),
    "postgres": ("offload.brokers.postgres", "PostgresBroker"),
    # A delivery-only broker, made whole by the state store its URL names (`state=`).
    "amqp": ("offload.brokers.amqp", "open_broker"),
    "amqps": ("offload.brokers.amqp", "open_broker"),
}


def from_url(url: str, **kwargs: Any) -> Broker:
    """Build the broker a URL names (not yet connected).

    Raises:
        ConfigurationError: the URL is malformed (a bad host or port too) or its scheme
            is unknown, saying which schemes exist; like every offload error, its
            message shows the URL without its credentials.
    """
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
    factory: Callable[..., Broker] = getattr(module, class_name)
    return factory(url, **kwargs)
