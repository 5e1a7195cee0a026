"""Uploads into a temporary file, written in the background so the core never waits on the wire.

upload_chunk hands its chunk to the upload's sender thread and returns; the
sender keeps several chunks in flight on the upload's own connection and
collects the server's acknowledgements. At most HELD_LIMIT bytes wait or
fly at once; end_upload waits for the last acknowledgement.

What the core saves after each chunk (md.extra) says how far the server has
acknowledged ("acked") and, for the chunks still in flight, where they go
and their CRC-32 ("unconfirmed"). A connection that drops keeps those
chunks in memory, and restart_upload writes them again. After a crash the
memory is gone: restart_upload then reads the unconfirmed chunks back from
the temporary file and resumes only if every one of them arrived whole;
otherwise it raises DriverError, and the core starts the upload over.
"""

from __future__ import annotations

import collections
import contextlib
import threading
import time
import zlib
from dataclasses import dataclass, field
from typing import Any

from onitufs.plug import DriverError, RemoteUnavailable

from .connect import Connection
from .pool import Pool, lost
from .sftp import O_CREAT, O_TRUNC, O_WRITE, STATUS, Attrs, SftpError

HELD_LIMIT = 16 * 1024 * 1024  # bytes queued or unacknowledged per upload
IN_FLIGHT = 4  # chunks sent and not yet acknowledged, at most


def digest(data: bytes) -> int:
    # tells a chunk that landed whole from one a crash cut short; what the remote holds in
    # the end is checked against the core's SHA-256 of every block when it is read
    return zlib.crc32(data)


@dataclass
class Chunk:
    offset: int
    data: bytes
    digest: int
    ids: list[int] | None = None  # the write requests, once sent

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass
class Upload:
    """One upload's connection, open temporary file and chunks not yet acknowledged."""

    pool: Pool
    temp: bytes  # the temporary file's full path on the server
    conn: Connection | None = None
    handle: bytes | None = None
    held: collections.deque[Chunk] = field(default_factory=collections.deque)
    acked: int = 0  # every byte below this is on the server
    error: str | None = None
    error_lost: bool = False  # the error was the connection's (not a refused write)
    last_used: float = field(default_factory=time.monotonic)
    cond: threading.Condition = field(default_factory=threading.Condition)
    _sender: threading.Thread | None = None
    _stop: bool = False

    # the calling threads (one at a time: the core calls one transfer's handlers in order)

    def create(self) -> None:
        self.conn = self.pool.get()
        try:
            # the name is this upload's alone: what a crash left there is ours to replace
            self.handle = self.conn.sftp.open(self.temp, O_WRITE | O_CREAT | O_TRUNC, Attrs(mode=0o600))
        except BaseException as error:
            self._release(lost(error))
            raise

    def send(self, offset: int, data: bytes) -> None:
        """Queue a chunk; returns at once unless HELD_LIMIT bytes are held already."""
        self.last_used = time.monotonic()
        chunk = Chunk(offset, data, digest(data))
        with self.cond:
            while self.error is None and self.held and \
                    sum(len(c.data) for c in self.held) + len(data) > HELD_LIMIT:
                self.cond.wait()
            self._raise_error()
            if self.conn is None:
                raise DriverError("the upload is not open (resume it first)")
            self.held.append(chunk)
            self.cond.notify_all()
            if self._sender is None:
                self._stop = False
                self._sender = threading.Thread(target=self._send_loop, daemon=True,
                                                name="ssh-upload")
                self._sender.start()

    def saved_state(self) -> dict[str, Any]:
        """What md.extra must hold for a resume after a crash."""
        with self.cond:
            return {"acked": self.acked,
                    "unconfirmed": [[c.offset, len(c.data), c.digest] for c in self.held]}

    def flush(self) -> None:
        """Until every chunk is acknowledged."""
        with self.cond:
            while self.error is None and self.held:
                self.cond.wait()
            self._raise_error()
        self._stop_sender()

    def resume(self, offset: int, saved: dict[str, Any], in_memory: bool) -> None:
        """Make the temporary file hold exactly the first `offset` bytes of the upload."""
        self._stop_sender()
        self.last_used = time.monotonic()
        if self.conn is not None and (self.error_lost or not self.conn.alive()):
            self._release(True)
        if self.conn is None:
            self.conn = self.pool.get()
            try:
                self.handle = self.conn.sftp.open(self.temp, O_WRITE)
            except SftpError as error:
                self._release(False)
                raise DriverError(f"the partial upload is gone ({error})") from None
            except BaseException as error:
                self._release(lost(error))
                raise
        assert self.handle is not None
        sftp = self.conn.sftp
        try:
            if in_memory:
                covered = self.acked
                for chunk in list(self.held):
                    if chunk.offset < offset and chunk.offset <= covered:
                        sftp.write(self.handle, chunk.offset, chunk.data)
                        covered = max(covered, chunk.end)
            else:
                covered = int(saved.get("acked", 0))
                size = sftp.fstat(self.handle).size or 0
                for at, length, expected in saved.get("unconfirmed", []):
                    if at > covered or at + length > offset or at + length > size:
                        break
                    if digest(sftp.read(self.handle, at, length)) != expected:
                        break
                    covered = max(covered, at + length)
            if covered < offset:
                raise DriverError(f"the partial upload holds {covered} bytes, not {offset}: "
                                  "starting over")
            sftp.fsetstat(self.handle, Attrs(size=offset))
        except BaseException as error:
            if lost(error):
                self._release(True)
            raise
        with self.cond:
            self.held.clear()
            self.acked = offset
            self.error, self.error_lost = None, False

    def close(self) -> None:
        """Close the temporary file (once flushed) and give the connection back."""
        self._stop_sender()
        if self.conn is not None and self.handle is not None:
            with contextlib.suppress(SftpError):
                self.conn.sftp.close_handle(self.handle)
        self._release(False)

    def drop_connection(self) -> None:
        """The connection failed under the caller: let it go, keep the upload's state."""
        self._stop_sender()
        self._release(True)

    def drop(self) -> None:
        """Forget the upload at once (abort): the connection is closed, not reused."""
        with self.cond:
            self._stop = True
            self.held.clear()
            self.cond.notify_all()
        self._release(True)
        self._stop_sender()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise (RemoteUnavailable if self.error_lost else DriverError)(self.error)

    def _release(self, broken: bool) -> None:
        conn, self.conn, self.handle = self.conn, None, None
        if conn is not None:
            self.pool.put(conn, broken)

    def _stop_sender(self) -> None:
        with self.cond:
            sender, self._sender = self._sender, None
            self._stop = True
            self.cond.notify_all()
        if sender is not None:
            sender.join()

    # the sender thread

    def _send_loop(self) -> None:
        conn, handle = self.conn, self.handle
        assert conn is not None and handle is not None
        flying: collections.deque[Chunk] = collections.deque()
        try:
            while True:
                with self.cond:
                    while not self._stop and not flying and all(c.ids for c in self.held):
                        self.cond.wait()
                    if self._stop and not flying:
                        return
                    unsent = next((c for c in self.held if c.ids is None), None)
                    if self._stop:
                        unsent = None
                if unsent is not None and len(flying) < IN_FLIGHT:
                    unsent.ids = conn.sftp.write_requests(handle, unsent.offset, unsent.data)
                    flying.append(unsent)
                    continue
                done = flying.popleft()
                assert done.ids is not None
                for request_id in done.ids:
                    conn.sftp.check(request_id, STATUS, "write")
                with self.cond:
                    if self.held and self.held[0] is done:
                        self.held.popleft()
                        self.acked = max(self.acked, done.end)
                    self.cond.notify_all()
        except Exception as error:
            with self.cond:
                for chunk in self.held:
                    chunk.ids = None
                self.error_lost = lost(error)
                self.error = f"connection lost during the upload: {error}" if self.error_lost \
                    else f"the server refused a write: {error}"
                self.cond.notify_all()
