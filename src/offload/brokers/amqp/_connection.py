"""One AMQP connection, opened when first needed and again after a loss.

A `Session` is one connection with two channels: a confirming publisher channel (every
publish returns once RabbitMQ has the message, or raises) and a consumer channel
(manual acks, a bounded prefetch). A lost connection ends its session for good: every
delivery it carried is void (RabbitMQ requeues them at once, which is the lease ending),
so nothing of it is reused. The next call opens a new session, with a new generation
number that leases carry to tell the sessions apart.

Reconnection is not a loop of its own: a call on a lost connection raises
`BrokerUnavailable`, and the caller's `BrokerHealth` (the worker's, the scheduler's)
retries with backoff and logs the outage once. This module only says, once per loss,
that the connection went away and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

import aiormq
import aiormq.exceptions
import pamqp.exceptions
from pamqp import commands as spec
from pamqp.common import FieldTable

from offload.brokers.amqp.settings import AmqpSettings
from offload.errors import BrokerUnavailable, ConfigurationError

__all__ = ["CONNECT_TIMEOUT_S", "Link", "Session", "unavailable"]

logger = logging.getLogger("offload.brokers.amqp")


class _RaisedAnyway(logging.Filter):
    """Drops aiormq's own error line for a failed connect: the same error is raised to
    offload as `BrokerUnavailable`, and the caller's `BrokerHealth` reports an outage
    once, which a line per reconnect attempt from every loop of every worker would
    bury. Also drops its two lines for a connection the server closed (an ERROR, then
    a WARNING with its reader's traceback): `Link` logs that loss itself, once, as a
    warning naming the reason."""

    _DROPPED = (
        "error when creating transport",
        "Unexpected connection close from remote",
        "Cancelling cause reader exited abnormally",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self._DROPPED)


_RAISED_ANYWAY = _RaisedAnyway()


def _quiet_driver() -> None:
    """Install the filter on aiormq's logger (again, if a logging reconfiguration
    dropped it): called before every connect."""
    driver = logging.getLogger("aiormq.connection")
    if _RAISED_ANYWAY not in driver.filters:
        driver.addFilter(_RAISED_ANYWAY)


#: How long opening a connection (TCP, TLS, AMQP handshake) may take, in seconds.
CONNECT_TIMEOUT_S = 10.0

#: Errors that mean "the server or the path to it is gone" (transient).
_LOST = (
    aiormq.exceptions.AMQPConnectionError,
    aiormq.exceptions.ChannelInvalidStateError,
    aiormq.exceptions.ChannelClosed,
    ConnectionError,
    OSError,
    TimeoutError,
)


def _vhost(url: str) -> str:
    """The vhost an amqp:// URL names (its path, percent-decoded; "/" when empty)."""
    path = urlsplit(url).path
    return unquote(path[1:]) if len(path) > 1 else "/"


def unavailable(what: str, exc: BaseException) -> BrokerUnavailable:
    """`exc` (a client error) as the `BrokerUnavailable` offload's callers expect."""
    return BrokerUnavailable(f"RabbitMQ {what} failed: {type(exc).__name__}: {exc}")


@dataclass
class Session:
    """One live connection and its channels; `generation` numbers it."""

    generation: int
    connection: aiormq.abc.AbstractConnection
    publisher: aiormq.abc.AbstractChannel
    consumer: aiormq.abc.AbstractChannel
    opened_at: float = field(default_factory=time.monotonic)
    declared: set[str] = field(default_factory=set)

    @property
    def alive(self) -> bool:
        return not (
            self.connection.is_closed or self.publisher.is_closed or self.consumer.is_closed
        )


async def _loop_end() -> AsyncGenerator[None, None]:
    """An async generator that the loop closes as it ends (`asyncio.run` cancels every
    task, then closes the loop's async generators). By then a cancelled aiormq reader
    has started a task that closes the socket's writer; without a few more loop turns it
    is destroyed pending, which Python 3.13 reports as an error at the end of a script
    that never closed its app. Closing this generator gives it those turns."""
    try:
        yield
    finally:
        for _ in range(3):
            await asyncio.sleep(0)


class Link:
    """The broker's connection to RabbitMQ: `session()` returns a live one."""

    def __init__(self, settings: AmqpSettings) -> None:
        self._settings = settings
        self._session: Session | None = None
        self._generation = 0
        self._opening = asyncio.Lock()
        self._closed = False
        self._loop_end: AsyncGenerator[None, None] | None = None
        #: What RabbitMQ shows for the connection (management UI, rabbitmqctl).
        self._name = f"offload {settings.prefix} pid {os.getpid()}"

    @property
    def current(self) -> Session | None:
        """The session, if it is still alive (without connecting)."""
        session = self._session
        return session if session is not None and session.alive else None

    async def session(self) -> Session:
        """A live session, opened now if there is none.

        Raises:
            BrokerUnavailable: RabbitMQ cannot be reached.
            ConfigurationError: it refused the credentials or the vhost.
        """
        session = self.current
        if session is not None:
            return session
        async with self._opening:
            session = self.current
            if session is not None:
                return session
            if self._closed:
                raise BrokerUnavailable("the RabbitMQ broker is closed")
            await self._drop()
            self._session = await self._open()
            if self._loop_end is None:
                self._loop_end = _loop_end()
                await self._loop_end.__anext__()
            return self._session

    async def _open(self) -> Session:
        _quiet_driver()
        try:
            async with asyncio.timeout(CONNECT_TIMEOUT_S):
                connection = await aiormq.connect(
                    self._settings.connect_url,
                    client_properties={"connection_name": self._name},
                )
        except aiormq.exceptions.ProbableAuthenticationError as exc:
            raise ConfigurationError(
                "RabbitMQ refused the login (wrong user, password or vhost in the "
                f"amqp:// URL): {exc}"
            ) from exc
        except (aiormq.exceptions.InvalidFrameError, pamqp.exceptions.AMQPInternalError) as exc:
            if "Connection.Close" not in str(exc):
                raise unavailable("connect", exc) from exc
            # RabbitMQ answers Connection.Open with Connection.Close (530 NOT_ALLOWED)
            # for a vhost that does not exist or that the user may not access; aiormq
            # reports it as an unexpected frame (aiormq 6.8, our floor: pamqp's error).
            raise ConfigurationError(
                f"RabbitMQ refused the vhost {_vhost(self._settings.connect_url)!r} (it does "
                "not exist, or the user may not access it): check the amqp:// URL's path"
            ) from None
        except _LOST as exc:
            raise unavailable("connect", exc) from exc
        try:
            publisher = await connection.channel(publisher_confirms=True)
            consumer = await connection.channel(publisher_confirms=False)
        except _LOST as exc:
            await connection.close()
            raise unavailable("open channel", exc) from exc
        self._generation += 1
        session = Session(self._generation, connection, publisher, consumer)
        connection.closing.add_done_callback(lambda fut: self._lost(session, fut))
        return session

    def _lost(self, session: Session, closing: asyncio.Future[object]) -> None:
        if self._closed or closing.cancelled():
            return
        reason = closing.exception()
        if reason is None or isinstance(reason, asyncio.CancelledError):
            return  # closed, or its reader cancelled by the loop's end (`asyncio.run` exiting)
        logger.warning(
            "RabbitMQ connection lost (%s: %s); its jobs in flight go back to their queues, "
            "and the next call reconnects",
            type(reason).__name__,
            reason,
            extra={"action": "broker_unavailable", "generation": session.generation},
        )

    async def _drop(self) -> None:
        session, self._session = self._session, None
        if session is not None and not session.connection.is_closed:
            try:
                await session.connection.close()
            except Exception:  # a half-dead connection: nothing more to release
                logger.debug("closing a lost RabbitMQ connection failed", exc_info=True)

    async def close(self) -> None:
        self._closed = True
        await self._drop()

    @contextlib.asynccontextmanager
    async def channel(self) -> AsyncIterator[aiormq.abc.AbstractChannel]:
        """A channel of its own for a short task (counting, dead letters), closed after.

        Not the publisher's or the consumer's: a passive declare of a missing queue
        closes its channel, and messages it got but did not ack go back to their queue
        when it closes.

        Raises:
            BrokerUnavailable: RabbitMQ cannot be reached, or the connection was lost
                while the block ran.
        """
        session = await self.session()
        try:
            channel = await session.connection.channel(publisher_confirms=False)
        except _LOST as exc:
            raise unavailable("open channel", exc) from exc
        try:
            yield channel
        except _LOST as exc:
            raise unavailable("channel", exc) from exc
        finally:
            if not channel.is_closed:
                with contextlib.suppress(*_LOST):
                    await channel.close()

    async def declare_queue(
        self,
        name: str,
        arguments: FieldTable,
        *,
        exchange: str = "",
        exchange_type: str = "direct",
        binding: FieldTable | None = None,
    ) -> None:
        """Declare a durable queue, and (if `exchange` is named) a durable exchange of
        `exchange_type` with the queue bound to it (by the queue's name, or by the
        headers `binding` on a headers exchange); once per session (declaring is
        idempotent, and cheap to repeat after a reconnect).

        Raises:
            ConfigurationError: a queue of that name exists with other arguments (for
                example declared by another `queue_type`).
        """
        session = await self.session()
        if name in session.declared:
            return
        try:
            await session.publisher.queue_declare(name, durable=True, arguments=arguments)
            if exchange:
                await session.publisher.exchange_declare(
                    exchange, exchange_type=exchange_type, durable=True
                )
                await session.publisher.queue_bind(
                    name,
                    exchange,
                    routing_key="" if binding else name,
                    arguments={"x-match": "all", **binding} if binding else None,
                )
        except aiormq.exceptions.ChannelPreconditionFailed as exc:
            raise ConfigurationError(
                f"the RabbitMQ queue {name!r} exists with other arguments than offload "
                f"declares ({arguments}): {exc}; delete it or use another prefix="
            ) from exc
        except _LOST as exc:
            raise unavailable("queue declare", exc) from exc
        session.declared.add(name)

    async def publish(
        self,
        body: bytes,
        *,
        routing_key: str,
        properties: spec.Basic.Properties,
        exchange: str = "",
    ) -> None:
        """Publish one message and return once RabbitMQ confirms it.

        Raises:
            BrokerUnavailable: the connection was lost, or RabbitMQ refused the message
                (a nack, or no queue to route it to): it may or may not be stored, so
                the caller retries (enqueue is idempotent by job id only with a state
                store; without one a retried enqueue may store a job twice).
        """
        session = await self.session()
        try:
            confirmation = await session.publisher.basic_publish(
                body,
                exchange=exchange,
                routing_key=routing_key,
                properties=properties,
                mandatory=True,
            )
        except _LOST as exc:
            raise unavailable("publish", exc) from exc
        except aiormq.exceptions.DeliveryError as exc:
            raise unavailable("publish (not confirmed)", exc) from exc
        if not isinstance(confirmation, spec.Basic.Ack):
            raise BrokerUnavailable(
                f"RabbitMQ did not take a message for {routing_key!r} "
                f"({type(getattr(confirmation, 'delivery', confirmation)).__name__})"
            )
