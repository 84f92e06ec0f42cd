"""Sync producers without the portal's thread hop (`Broker.enqueue_blocking`).

A sync `task.enqueue()` used to hand its coroutine to the portal loop and wait for it:
a thread hop and the asyncio client's packing cost most of a call (profile in
`benchmarks/README.md`). Here the calling thread runs the same `enqueue.lua` on a
plain, thread-safe `redis.Redis` client. It takes only the plain case: a single
Redis (a cluster keeps the portal path), queues this broker has recorded already, and
jobs outside workflows (`RedisBroker.enqueue_blocking` decides); anything else goes
through `enqueue`, which records queues and indexes workflows first.

A call of one script (one job, `enqueue_one.lua`) goes out on a connection of its own,
without redis-py's command machinery. redis-py's `execute_command` (pool checkout with
a readiness poll, retry wrapper, observability hooks), and even its connection's
`send_packed_command` / `read_response` (a health check, a parser layer per read),
cost more client CPU per call than a raw `LPUSH`'s whole client side (issue 16,
benchmarks/README.md). So redis-py's `Connection` only opens the connection (TCP or
TLS or Unix socket, timeouts, AUTH, SELECT: the URL's options, through the client's
own `connection_kwargs`) and closes it; a call is the command packed by hiredis,
`sendall` on the connection's socket, and `recv` into a `hiredis.Reader` of ours until
it holds the whole reply (however many reads it takes). That connection speaks RESP2
(`protocol=2`, whatever the URL asks): no push message (RESP3's maintenance
notifications, say) can come between a call and its reply, and a script's reply reads
the same in either protocol. Error replies become redis-py's exceptions
(`BaseParser.parse_error`: NOSCRIPT is `NoScriptError`, and so on), turned into
offload's as `errors` does (`broker_error`). The socket keeps the URL's
`socket_timeout`: a read or write that times out fails the call here (on Linux the
kernel times them, `_kernel_timeouts`, so no `poll()` comes before each).

One thread uses that connection at a time; a thread that finds it busy, and any call
that fails on it (a connection error or timeout, NOSCRIPT after a Redis restart, a
LOADING Redis), goes the ordinary way, which reconnects, reloads the scripts and
retries: safe, since `enqueue` is idempotent by job id. A failed connection is closed
and dropped (its reply may be half read), the next call opens a fresh one; so is one
interrupted mid-call (`KeyboardInterrupt`). A forked child opens its own (the socket
is its parent's): the connection remembers the process that opened it.
"""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any

from redis import Redis
from redis._parsers.base import BaseParser
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import InvalidResponse, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from offload.brokers.redis._connection import RedisURL, blocking_client, broker_error, errors
from offload.brokers.redis._executor import SCRIPTS
from offload.brokers.redis._scripts import Call

__all__ = ["BlockingClient"]

#: `_direct_call`'s answer when the call must go the ordinary way.
_FAILED: Any = object()

#: Bytes asked of the socket per read (redis-py's `socket_read_size` default).
_READ_SIZE = 65536

#: hiredis's command packer and reply reader; without hiredis (it comes with the redis
#: extra), every call goes the ordinary way.
_pack: Callable[[tuple[Any, ...]], bytes]
_Reader: Any
try:
    from hiredis import Reader as _Reader
    from hiredis import pack_command as _pack
except ImportError:  # pragma: no cover
    _Reader = None


#: Whether the kernel can time a plain socket's reads and writes out (Linux: a
#: `struct timeval` of two longs).
_KERNEL_TIMEOUTS = sys.platform == "linux"


def _kernel_timeouts(sock: socket.socket) -> None:
    """Move `sock`'s timeout into the kernel (SO_RCVTIMEO, SO_SNDTIMEO) and make it a
    blocking socket. Python waits for a socket with a timeout in `poll()` before each
    `send` and `recv`: two more system calls per call, ~2 µs here. A read or write that
    times out now fails with `BlockingIOError` (EAGAIN) instead of `TimeoutError`; both
    are `OSError`s, which `_direct_call` handles alike. Not for TLS sockets (their reads
    and writes are OpenSSL's), nor for a socket without a timeout (already blocking)."""
    timeout = sock.gettimeout()
    if type(sock) is not socket.socket or not timeout:
        return
    seconds = int(timeout)
    value = struct.pack("ll", seconds, int((timeout - seconds) * 1e6))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, value)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, value)
    sock.settimeout(None)


class BlockingClient:
    """A plain client of `options`, opened on first use, shared by every thread."""

    def __init__(self, options: RedisURL, where: str) -> None:
        self._options = options
        self._where = where
        self._lock = threading.Lock()
        self._client: Redis | None = None
        # The direct connection of `run_one`, held by one thread at a time: the redis-py
        # Connection that opened it (and closes it), its socket, our reader of its
        # replies, and the process that opened it.
        self._direct: Any = None  # a redis-py Connection (its methods are untyped)
        self._sock: socket.socket | None = None
        self._reader: Any = None  # a hiredis.Reader
        self._direct_pid = 0
        self._direct_lock = threading.Lock()

    def get(self) -> Redis:
        with self._lock:
            if self._client is None:
                self._client = blocking_client(self._options)
            return self._client

    def run_many(self, calls: Sequence[Call]) -> list[Any]:
        """The scripts `calls`, in one pipeline from the calling thread."""
        with errors(self._where):
            return SCRIPTS.run_many_blocking(self.get(), calls)

    def run_one(self, call: Call) -> Any:
        """One script `call` from the calling thread: on the direct connection when it
        is free, else (or if it fails there) as `run_many` sends it."""
        if _Reader is not None and self._direct_lock.acquire(blocking=False):
            try:
                reply = self._direct_call(call)
            except Exception as exc:  # `errors`, without a context manager per call
                error = broker_error(exc, self._where)
                if error is None:
                    raise
                raise error from exc
            finally:
                self._direct_lock.release()
            if reply is not _FAILED:
                return reply
        return self.run_many([call])[0]

    def _direct_call(self, call: Call) -> Any:
        """The reply of `call` on the direct connection, or `_FAILED` if it could not
        be had there (the connection is then dropped, for a fresh one next time)."""
        name, keys, args = call
        try:
            sock = self._sock
            if sock is None or self._direct_pid != os.getpid():
                sock = self._open()
            sock.sendall(_pack(("EVALSHA", SCRIPTS.shas[name], str(len(keys)), *keys, *args)))
            reader = self._reader
            reply = reader.gets()
            while reply is False:  # RESP2 has no false: the reply is not all here yet
                data = sock.recv(_READ_SIZE)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                reader.feed(data)
                reply = reader.gets()
        except (RedisConnectionError, RedisTimeoutError, OSError):
            self._drop()
            return _FAILED
        except BaseException:  # e.g. KeyboardInterrupt: its reply may still be unread
            self._drop()
            raise
        if isinstance(reply, ResponseError):  # the whole reply was read
            if isinstance(reply, NoScriptError):  # Redis restarted: `run_many` loads them
                return _FAILED
            if isinstance(reply, RedisConnectionError):  # LOADING, too many clients
                self._drop()
                return _FAILED
            raise reply
        return reply

    def _open(self) -> socket.socket:
        """Connect the direct connection, with the client's options but RESP2."""
        if self._direct_pid == os.getpid():
            self._drop()  # else it is the parent's: leave its socket alone
        self._direct = self._sock = None
        pool = self.get().connection_pool
        conn = pool.connection_class(**{**pool.connection_kwargs, "protocol": 2})
        conn.connect()
        self._direct, self._direct_pid = conn, os.getpid()
        encoder = conn.encoder
        reader_options: dict[str, Any] = {"protocolError": InvalidResponse}
        if encoder.decode_responses:
            reader_options.update(encoding=encoder.encoding, errors=encoder.encoding_errors)
        self._reader = _Reader(replyError=BaseParser.parse_error, **reader_options)
        sock: socket.socket = conn._sock
        if _KERNEL_TIMEOUTS:
            _kernel_timeouts(sock)
        self._sock = sock
        return sock

    def _drop(self) -> None:
        conn, self._direct, self._sock, self._reader = self._direct, None, None, None
        if conn is not None:
            conn.disconnect()

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        with self._direct_lock:
            if self._direct_pid == os.getpid():
                self._drop()
            self._direct = self._sock = self._reader = None
        if client is not None:
            client.close()
