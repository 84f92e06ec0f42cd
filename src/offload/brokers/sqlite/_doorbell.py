"""Cross-process wake-ups for one SQLite file, without polling.

SQLite cannot tell another process that it committed. `SQLiteBroker.wait` used to
learn of work made ready by another process only by polling `PRAGMA data_version`
every `WAIT_POLL_S` (15 ms), so a job enqueued by a web process started about 10 ms
later on average (issue 16). Now every broker that waits binds a Unix datagram socket
in a directory beside the database file (`<file>-wake/`, or a directory in the temp
dir named by a digest of the file's path when that path is too long for a socket
address), and a broker that commits work made ready sends one byte to every socket
there (`ring`). The waiter's thread receives it and wakes the broker's waiters. A ring
that names the queues made ready (newline-separated) lets a waiter of one of them
return at once and one of none sleep on; a ring without names (`1`, as from older
versions) makes every waiter poll at once. The poll stays as the fallback (another
machine's process on a shared volume, a full socket buffer, a platform without Unix
sockets): a ring is only ever a hint, and a waiter woken spuriously reserves nothing.

A socket whose process died is found when a send to it is refused, and removed then.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import socket
import tempfile
import threading
from collections.abc import Callable, Collection
from pathlib import Path

__all__ = ["Doorbell"]

logger = logging.getLogger("offload.brokers.sqlite")

#: Longest socket path we bind: `sockaddr_un.sun_path` holds 108 bytes on Linux and
#: 104 on macOS and the BSDs, including the final NUL.
MAX_SOCKET_PATH = 100
_SUFFIX = ".sock"
#: Longest ring (bytes of queue names); a longer one is sent without names.
MAX_RING = 4096


def wake_directory(db_path: Path) -> Path:
    """Where the sockets of the brokers waiting on `db_path` live."""
    beside = db_path.with_name(db_path.name + "-wake")
    if len(os.fsencode(beside)) + 1 + 24 + len(_SUFFIX) <= MAX_SOCKET_PATH:
        return beside
    digest = hashlib.sha256(os.fsencode(db_path)).hexdigest()[:24]
    return Path(tempfile.gettempdir()) / f"offload-wake-{digest}"


class Doorbell:
    """The wake-up sockets of one database file, as seen by one broker.

    Args:
        db_path: the database file.
        on_ring: called (from the doorbell's thread) when another process rings.
    """

    def __init__(self, db_path: Path, on_ring: Callable[[], None]) -> None:
        self.directory = wake_directory(db_path)
        self._on_ring = on_ring
        self._lock = threading.Lock()
        #: How many rings this broker received; `wait` compares it across a poll.
        self.rings = 0
        #: The count of the last ring without queue names (every waiter polls), and of
        #: the last ring naming each queue.
        self.unnamed = 0
        self.named: dict[str, int] = {}
        self._own: str | None = None  # the path of our bound socket, while listening
        self._receiver: socket.socket | None = None
        self._sender: socket.socket | None = None
        self._peers: tuple[int, list[str]] = (-1, [])  # directory mtime, socket paths
        self._pid = os.getpid()

    # -- the waiting side ----------------------------------------------------------------

    def listen(self) -> None:
        """Bind this broker's socket and start its thread, once; a failure (no Unix
        sockets, a read-only directory) leaves the broker on polling alone."""
        with self._lock:
            if self._pid != os.getpid():  # a forked child: the parent's socket is not ours
                self._receiver = self._own = self._sender = None
                self._pid = os.getpid()
            if self._receiver is not None or not hasattr(socket, "AF_UNIX"):
                return
            try:
                self.directory.mkdir(exist_ok=True)
                path = str(self.directory / f"{os.getpid()}-{os.urandom(8).hex()}{_SUFFIX}")
                receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                receiver.bind(path)
            except OSError as exc:
                logger.debug("no wake-up socket in %s (%s): polling only", self.directory, exc)
                return
            self._receiver, self._own = receiver, path
        threading.Thread(
            target=self._receive, args=(receiver,), name="offload-sqlite-doorbell", daemon=True
        ).start()

    def _receive(self, receiver: socket.socket) -> None:
        while True:
            try:
                data = receiver.recv(MAX_RING)
            except OSError:  # closed under us
                return
            if self._receiver is not receiver:
                return
            rings = self.rings + 1
            if data in (b"", b"1"):
                self.unnamed = rings
            else:
                for name in data.decode(errors="replace").split("\n"):
                    self.named[name] = rings
            self.rings = rings
            self._on_ring()

    def rang_for(self, queues: Collection[str], since: int) -> bool | None:
        """Whether a ring after count `since` named one of `queues` (True), or had no
        names (None: poll to know), or only named other queues (False)."""
        if any(self.named.get(queue, 0) > since for queue in queues):
            return True
        return None if self.unnamed > since else False

    def close(self) -> None:
        """Stop listening: remove the socket file and end the thread."""
        with self._lock:
            receiver, path = self._receiver, self._own
            self._receiver = self._own = None
            sender, self._sender = self._sender, None
        if sender is not None:
            sender.close()
        if receiver is None or path is None:
            return
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
            s.sendto(b"", path)  # wake the thread: it sees it is closed
        with contextlib.suppress(OSError):
            os.unlink(path)
        receiver.close()

    # -- the committing side -------------------------------------------------------------

    def ring(self, queues: Collection[str] = ()) -> None:
        """Tell every other waiting broker of this file that work may be ready in
        `queues` (in any queue if none are named). Never raises and never blocks: a
        waiter that misses it polls. May be called from any thread."""
        data = "\n".join(sorted(queues)).encode() if queues else b"1"
        if len(data) > MAX_RING:
            data = b"1"
        peers = self._listing()
        if not peers:
            return
        sender = self._sender
        if sender is None:
            try:
                sender = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                sender.setblocking(False)
            except OSError:
                return
            self._sender = sender
        for path in peers:
            if path == self._own:
                continue  # this broker's own waiters were woken in-process
            try:
                sender.sendto(data, path)
            except (ConnectionRefusedError, FileNotFoundError):
                with contextlib.suppress(OSError):  # its process is gone
                    os.unlink(path)
            except OSError:  # a full buffer: that waiter has a ring pending anyway
                pass

    def _listing(self) -> list[str]:
        """The socket paths in the directory, listed again only when it changed."""
        try:
            mtime = os.stat(self.directory).st_mtime_ns
        except OSError:
            return []
        cached_mtime, peers = self._peers
        if mtime != cached_mtime:
            try:
                peers = [e.path for e in os.scandir(self.directory) if e.name.endswith(_SUFFIX)]
            except OSError:
                return []
            self._peers = (mtime, peers)
        return peers
