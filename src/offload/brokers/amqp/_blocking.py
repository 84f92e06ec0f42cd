"""Sync producers without the portal's thread hop (`Delivery.enqueue_blocking`).

A sync `task.enqueue()` hands its coroutine to the portal loop and waits for it: two
thread hand-offs and a loop turn on each side, which cost more than RabbitMQ's own
confirm round trip on a local server (benchmarks/README.md). Here the calling thread
publishes on a plain pika `BlockingConnection` whose channel is in confirm mode, so
the call still returns only once RabbitMQ has the job (a confirm: written to disk by a
durable queue), exactly as the asyncio path does.

It takes only the plain case (`AmqpDelivery.enqueue_blocking` decides): one job, due
now, to a queue this process has declared already, without a state store. The
message is the asyncio path's, byte for byte where it matters: the same properties,
headers and priority (`offload.brokers.amqp._publishing`), so a consumer cannot tell
them apart.

The connections are a small pool shared by every thread: a thread takes one (or opens
one), publishes and puts it back; at most `POOL_SIZE` wait idle. pika connections are
not thread-safe, so one is never used by two threads at once. Since a blocking
connection answers the server's heartbeats only while it is used, one idle for longer
than the heartbeat may have been closed by the server: it is closed and replaced, not
tried. A publish that fails on a lost connection (a server restart, a connection closed
by an operator) is tried once more on a fresh one, then raises `BrokerUnavailable`
(at-least-once: a job whose confirm was lost may be stored twice, as with the asyncio
path's retries). A forked child never touches its parent's connections (the socket is
shared): it opens its own.

pika logs a failed connect at ERROR from several modules, once per attempt: those
records are logged again at DEBUG on `offload.brokers.amqp.pika`, and offload says once
per loss, on its own logger, what happened.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, field

import pika
import pika.exceptions
from pamqp.common import FieldTable

from offload._redact import redact
from offload.brokers.amqp.settings import AmqpSettings
from offload.brokers.amqp.topology import CONTENT_TYPE, PERSISTENT
from offload.errors import BrokerUnavailable, ConfigurationError

__all__ = ["CONNECTION_NAME", "POOL_SIZE", "BlockingPublisher"]

logger = logging.getLogger("offload.brokers.amqp")
#: Where pika's own records go, demoted to DEBUG.
_driver_log = logging.getLogger("offload.brokers.amqp.pika")

#: Idle connections kept for the next calls; a thread that finds none opens one, and a
#: connection given back to a full pool is closed.
POOL_SIZE = 4
#: The start of the `connection_name` RabbitMQ shows for these connections
#: (`rabbitmqctl list_connections client_properties`), followed by the broker's prefix
#: and the process id.
CONNECTION_NAME = "offload-producer"
#: How long opening a connection may take (TCP, TLS, AMQP handshake), in seconds.
_CONNECT_TIMEOUT_S = 10.0

#: Errors that mean the connection (or its channel) is gone: try a fresh one.
_LOST: tuple[type[BaseException], ...] = (
    pika.exceptions.AMQPConnectionError,
    pika.exceptions.ChannelClosed,
    pika.exceptions.ChannelWrongStateError,
    ConnectionError,
    OSError,
)


class _Demoted(logging.Filter):
    """Logs pika's records above DEBUG again at DEBUG on `offload.brokers.amqp.pika`,
    and drops the original (module docstring)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno <= logging.DEBUG:
            return True
        _driver_log.debug("%s: %s", record.name, record.getMessage())
        return False


_DEMOTED = _Demoted()


def _quiet_driver() -> None:
    """Install the filter on every pika logger (each module logs on its own, and a
    logger's filters do not apply to its children's records); again before every
    connect, in case a logging reconfiguration dropped it."""
    for name in list(logging.root.manager.loggerDict):
        if name == "pika" or name.startswith("pika."):
            driver = logging.getLogger(name)
            if _DEMOTED not in driver.filters:
                driver.addFilter(_DEMOTED)


@dataclass
class _Connection:
    """One pika connection, its confirming channel, and who opened it when."""

    connection: pika.BlockingConnection
    channel: pika.adapters.blocking_connection.BlockingChannel
    pid: int = field(default_factory=os.getpid)
    used_at: float = field(default_factory=time.monotonic)

    @property
    def usable(self) -> bool:
        return bool(self.connection.is_open and self.channel.is_open)


class BlockingPublisher:
    """Publishes with confirms from the calling thread (module docstring).

    Args:
        settings: the broker's settings (`connect_url` holds the password: never
            shown).
    """

    def __init__(self, settings: AmqpSettings) -> None:
        self._settings = settings
        self._lock = threading.Lock()
        self._idle: list[_Connection] = []
        self._pid = os.getpid()
        self._closed = False

    def publish(
        self,
        body: bytes,
        *,
        routing_key: str,
        job_id: str,
        priority: int,
        headers: FieldTable | None,
    ) -> None:
        """Publish one due job to the default exchange and return once RabbitMQ
        confirmed it; a lost connection is replaced and the publish tried once more.

        Raises:
            BrokerUnavailable: RabbitMQ cannot be reached, lost the connection twice,
                or refused the message (a nack, or no queue to route it to).
            ConfigurationError: RabbitMQ refused the credentials or the vhost.
        """
        properties = pika.BasicProperties(
            delivery_mode=PERSISTENT,
            priority=priority,
            message_id=job_id,
            content_type=CONTENT_TYPE,
            headers=headers,
        )
        for attempt in (1, 2):
            conn = self._take()
            try:
                self._send(conn, body, routing_key, properties)
            except _LOST as exc:
                self._discard(conn)
                if attempt == 2:
                    raise _unavailable("publish", exc) from exc
                logger.warning(
                    "RabbitMQ connection of the sync producer lost (%s); "
                    "publishing again on a new one",
                    _describe(exc),
                    extra={"action": "broker_unavailable"},
                )
            except BaseException:
                self._discard(conn)
                raise
            else:
                self._give_back(conn)
                return

    def _send(
        self, conn: _Connection, body: bytes, routing_key: str, properties: pika.BasicProperties
    ) -> None:
        try:
            conn.channel.basic_publish("", routing_key, body, properties=properties, mandatory=True)
        except pika.exceptions.UnroutableError as exc:
            raise BrokerUnavailable(
                f"RabbitMQ did not take a message for {routing_key!r} (no queue to route it to)"
            ) from exc
        except pika.exceptions.NackError as exc:
            raise BrokerUnavailable(
                f"RabbitMQ did not take a message for {routing_key!r} (nack)"
            ) from exc

    def _take(self) -> _Connection:
        """An idle connection of this process that is still fresh, else a new one."""
        stale: list[_Connection] = []
        conn: _Connection | None = None
        with self._lock:
            if self._closed:
                raise BrokerUnavailable("the RabbitMQ broker is closed")
            if self._pid != os.getpid():  # a forked child: the sockets are the parent's
                self._idle, self._pid = [], os.getpid()
            heartbeat = self._settings.heartbeat_s
            now = time.monotonic()
            while self._idle and conn is None:
                candidate = self._idle.pop()
                if not candidate.usable or (heartbeat and now - candidate.used_at > heartbeat):
                    stale.append(candidate)
                else:
                    conn = candidate
        for old in stale:
            _close(old)
        return conn if conn is not None else self._open()

    def _open(self) -> _Connection:
        _quiet_driver()
        parameters = pika.URLParameters(self._settings.connect_url)
        name = f"{CONNECTION_NAME} {self._settings.prefix} pid {os.getpid()}"
        parameters.client_properties = {"connection_name": name}
        parameters.socket_timeout = _CONNECT_TIMEOUT_S
        parameters.stack_timeout = _CONNECT_TIMEOUT_S
        parameters.connection_attempts = 1
        try:
            connection = pika.BlockingConnection(parameters)
        except (
            pika.exceptions.ProbableAuthenticationError,
            pika.exceptions.ProbableAccessDeniedError,
            pika.exceptions.AuthenticationError,
        ) as exc:
            raise ConfigurationError(
                "RabbitMQ refused the login (wrong user, password or vhost in the "
                f"amqp:// URL): {_describe(exc)}"
            ) from exc
        except (*_LOST, pika.exceptions.AMQPError) as exc:
            raise _unavailable("connect", exc) from exc
        try:
            channel = connection.channel()
            channel.confirm_delivery()
        except (*_LOST, pika.exceptions.AMQPError) as exc:
            _close_connection(connection)
            raise _unavailable("open channel", exc) from exc
        return _Connection(connection, channel)

    def _give_back(self, conn: _Connection) -> None:
        conn.used_at = time.monotonic()
        with self._lock:
            if not self._closed and conn.pid == self._pid and len(self._idle) < POOL_SIZE:
                self._idle.append(conn)
                return
        if conn.pid == os.getpid():
            _close(conn)

    def _discard(self, conn: _Connection) -> None:
        if conn.pid == os.getpid():
            _close(conn)

    def close(self) -> None:
        """Close the idle connections of this process (idempotent); a publish still
        running closes its own when it ends."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            mine = self._pid == os.getpid()
        if mine:
            for conn in idle:
                _close(conn)


def _close(conn: _Connection) -> None:
    _close_connection(conn.connection)


def _close_connection(connection: pika.BlockingConnection) -> None:
    """Close a connection, quietly: it may be half dead already."""
    try:
        if connection.is_open:
            connection.close()
    except Exception:  # nothing more to release
        _driver_log.debug("closing a RabbitMQ connection failed", exc_info=True)


def _describe(exc: BaseException) -> str:
    """`exc` in one line, without a secret (pika's messages may quote parameters)."""
    text = str(exc) or repr(exc)
    return redact(f"{type(exc).__name__}: {' '.join(text.split())}")


def _unavailable(what: str, exc: BaseException) -> BrokerUnavailable:
    return BrokerUnavailable(f"RabbitMQ {what} failed: {_describe(exc)}")
