"""`sqs://`: Amazon SQS (or an SQS-compatible server) as offload's delivery layer.

SQS delivers: it holds each job as a message, leases it to one worker with its
visibility timeout, redelivers it when the lease lapses, and parks it in a
dead-letter queue. It cannot look a job up, hold a result, a key or a limit: a state
store (`state=` in the URL) keeps those. The modules:

    config.py     the URL and its options (`SQSConfig`)
    client.py     the aiobotocore client, SQS's errors in offload's words
    topology.py   the SQS queues behind one offload queue (main, DLQ, FIFO delay)
    messages.py   a job as a message: body, attributes, the size rule
    delivery.py   send / receive / extend / delete / move / dead letters (`SQSDelivery`)
    broker.py     the delivery role on top of it (`SQSBroker`)
    facts.py      what SQS answers without a state store (`offload.brokers.stateless`)

Imported only through the broker registry, so `import offload` never imports botocore.
"""

from __future__ import annotations

from offload.brokers.sqs.broker import SQSBroker
from offload.brokers.sqs.config import SQSConfig
from offload.brokers.sqs.delivery import SQSDelivery
from offload.brokers.sqs.messages import Outgoing, Received

__all__ = ["Outgoing", "Received", "SQSBroker", "SQSConfig", "SQSDelivery"]
