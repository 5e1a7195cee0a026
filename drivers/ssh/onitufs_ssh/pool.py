"""A pool of SSH connections shared by the handler threads of one remote.

A thread borrows a connection for one piece of work (`with pool.use() as
conn`) and gives it back; a connection that failed under it is closed and
replaced by a new one the next time. While the server cannot be reached,
borrowing fails at once with RemoteUnavailable for a short backoff instead of
every thread waiting on its own connection attempt.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from onitufs.plug import DriverError, RemoteUnavailable

from .connect import ConnectError, Connection, HostKeyError, connect
from .settings import Settings
from .sftp import ConnectionLost, SftpError

log = logging.getLogger(__name__)
MAX_BACKOFF = 10.0
WAIT_FOR_CONNECTION = 300.0


def lost(error: BaseException) -> bool:
    """Whether an exception means the connection is gone (not a refused request)."""
    return not isinstance(error, SftpError | DriverError) and isinstance(
        error, ConnectionLost | OSError)


class Pool:
    def __init__(self, settings: Settings, size: int) -> None:
        self.settings = settings
        self.size = size
        self._idle: list[Connection] = []
        self._count = 0
        self._cond = threading.Condition()
        self._failures = 0
        self._down_until = 0.0
        self._down_reason = ""
        self._closed = False
        self.last_host_key_error: str | None = None
        # One each_holding_files at a time: the idle connections it takes out meanwhile
        # (a tidy of idle files) are then back for the next (a release of one file's).
        self._holding = threading.Lock()

    def get(self) -> Connection:
        conn = self._take(wait=True)
        assert conn is not None
        return conn

    def try_get(self) -> Connection | None:
        """A connection if one is idle or can be opened now, without waiting for a busy one."""
        try:
            return self._take(wait=False)
        except RemoteUnavailable:
            return None

    def _take(self, wait: bool, reuse: bool = True) -> Connection | None:
        """An idle connection (with `reuse`) or a new one, if the pool has room."""
        deadline = time.monotonic() + WAIT_FOR_CONNECTION
        with self._cond:
            while True:
                if self._closed:
                    raise RemoteUnavailable("the remote is shutting down")
                while reuse and self._idle:
                    conn = self._idle.pop()
                    if conn.alive():
                        return conn
                    self._count -= 1
                    conn.close()
                if self._count < self.size:
                    if time.monotonic() < self._down_until:
                        raise RemoteUnavailable(self._down_reason)
                    self._count += 1
                    break
                if not wait:
                    return None
                if not self._cond.wait(max(0.0, deadline - time.monotonic())):
                    raise DriverError("every SSH connection stayed busy for "
                                      f"{WAIT_FOR_CONNECTION:.0f}s")
        try:
            conn = connect(self.settings)
        except ConnectError as error:
            with self._cond:
                self._count -= 1
                self._failures += 1
                self._down_until = time.monotonic() + min(MAX_BACKOFF,
                                                          0.25 * 2 ** min(self._failures, 8))
                self._down_reason = str(error)
                self._cond.notify()
            if isinstance(error, HostKeyError) and self.last_host_key_error != str(error):
                self.last_host_key_error = str(error)
                log.error("%s", error)
            raise RemoteUnavailable(str(error)) from None
        with self._cond:
            self._failures = 0
            self._down_until = 0.0
        return conn

    def warm(self, count: int | Callable[[Connection], int]) -> None:
        """Open `count` connections in the background, or as many as `count` says seeing the
        first: a login takes a sizeable part of a second, which the first transfers should
        not wait for."""
        threading.Thread(target=self._warm, args=(count,), daemon=True, name="ssh-warm").start()

    def _warm(self, count: int | Callable[[Connection], int]) -> None:
        try:
            conn = self.get()
            wanted = count if isinstance(count, int) else count(conn)
            self.put(conn)  # usable at once, while the others log in
            for _ in range(wanted - 1):
                more = self._take(wait=False, reuse=False)
                if more is None:
                    break  # the pool is full
                self.put(more)
        except (RemoteUnavailable, DriverError):
            pass  # the server is away: connections open on demand once it is back

    def put(self, conn: Connection, broken: bool = False) -> None:
        with self._cond:
            if broken or self._closed or not conn.alive():
                self._count -= 1
                conn.close()
            else:
                self._idle.append(conn)
            self._cond.notify()

    @contextmanager
    def use(self) -> Iterator[Connection]:
        """Borrow a connection; a lost connection becomes RemoteUnavailable, a refused
        request DriverError."""
        conn = self.get()
        try:
            yield conn
        except BaseException as error:
            broken = lost(error)
            self.put(conn, broken)
            if broken:
                raise RemoteUnavailable(f"{self.settings.host}: connection lost: {error}") from None
            if isinstance(error, SftpError):
                raise DriverError(str(error)) from None
            raise
        self.put(conn)

    def each_holding_files(self, work: Callable[[Connection], None]) -> None:
        """Run `work` on each idle connection that keeps files open, out of the pool
        meanwhile (a request finds it busy); one lost on the way is closed. Runs after
        any other under way, which would hide the connections it works on."""
        with self._holding:
            with self._cond:
                holding = [conn for conn in self._idle if conn.handles]
                self._idle = [conn for conn in self._idle if not conn.handles]
            for conn in holding:
                broken = False
                try:
                    work(conn)
                except SftpError:  # that handle is the server's concern now
                    pass
                except Exception as error:
                    if not lost(error):
                        raise
                    broken = True
                finally:
                    self.put(conn, broken)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._cond.notify_all()
        for conn in idle:
            conn.close()
