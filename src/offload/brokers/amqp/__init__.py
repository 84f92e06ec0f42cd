"""RabbitMQ (`amqp://`): the delivery layer of offload's RabbitMQ broker.

RabbitMQ holds jobs in flight and hands each to one consumer at a time; it cannot list
jobs, look one up by id or key, hold results, or delay a message without a plugin. So
this package is the delivery role only (`delivery.AmqpDelivery`: enqueue with publisher
confirms, reserve from a consumer with a bounded prefetch, extend, release, and the
settlements), over the topology in `topology` (work queues with priorities, TTL'd delay
buckets, dead-letter queues) and one connection managed by `_connection.Link`.
Everything else comes from the state store named by `state=` in the URL
(`settings.parse_url`), combined with this layer by the broker roles of issue #11.
"""

from __future__ import annotations

from typing import Any

from offload.brokers.amqp.delivery import AmqpDelivery
from offload.brokers.amqp.settings import STATE_SETTING, AmqpSettings, parse_url
from offload.brokers.composite import missing_roles, with_state_store
from offload.brokers.roles import Broker
from offload.errors import ConfigurationError

__all__ = ["AmqpDelivery", "AmqpSettings", "open_broker", "parse_url"]


def open_broker(url: str, **kwargs: Any) -> Broker:
    """The broker an `amqp://` URL names: RabbitMQ's delivery combined with the state
    store of its `state=` parameter (built with the same keyword arguments, such as
    `clock`), not yet connected.

    Raises:
        ConfigurationError: the URL names no state store. Only delivery works without
            one: `AmqpDelivery(url)` can enqueue jobs without keys, and a process that
            needs the rest (a worker, results, inspection) must name a state store.
    """
    delivery = AmqpDelivery(url, **kwargs)
    state_url = delivery.settings.state_url
    if state_url is None:
        lacking = ", ".join(role.name.lower() for role in missing_roles(delivery))
        raise ConfigurationError(
            f"amqp:// only delivers jobs; {lacking} (keys, results, progress, "
            f"cancellation, joins, limits, inspection, schedules) need a state store: "
            f"set {STATE_SETTING}"
        )
    from offload.brokers import from_url

    store = from_url(state_url, **kwargs)
    if not isinstance(store, Broker):
        raise ConfigurationError(
            f"the state store {store!r} does not play the broker roles of "
            "offload.brokers.roles yet, so it cannot be combined with amqp://"
        )
    return with_state_store(delivery, store)
