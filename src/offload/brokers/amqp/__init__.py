"""RabbitMQ (`amqp://`, `amqps://`): the delivery layer of offload's RabbitMQ broker.

RabbitMQ holds jobs in flight and hands each to one consumer at a time; it cannot list
jobs, look one up by id or key, hold results, or delay a message without a plugin. So
this package is the delivery role only (`delivery.AmqpDelivery`: enqueue with publisher
confirms, reserve from a consumer with a bounded prefetch, extend, release, the
settlements, and `publish` for a state store), over the topology in `topology` (work
queues with priorities, TTL'd delay buckets, dead-letter queues) and one connection
managed by `_connection.Link`. `offload.brokers.from_url` makes it a whole broker with
the state store named by `state=` in the URL (`settings.parse_url`), `state_url=` or
`OFFLOAD_STATE_URL` (`offload.brokers.composite`); without one it stands alone
(`offload.brokers.stateless`, with what RabbitMQ itself knows from `facts`).
"""

from __future__ import annotations

from offload.brokers.amqp.delivery import AmqpDelivery
from offload.brokers.amqp.settings import AmqpSettings, parse_url

__all__ = ["AmqpDelivery", "AmqpSettings", "parse_url"]
