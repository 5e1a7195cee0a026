"""Uploads into a temporary file, written in the background so the core never waits on the wire.

upload_chunk hands its chunk to the upload and returns; sender threads keep
several chunks in flight and collect the server's acknowledgements. A large
upload may be written over several connections at once, each sender taking
the next chunk not yet sent: one SSH channel carries only what the server's
window allows per round trip (OpenSSH: 2 MiB), which caps a single
connection on a long link (Connection.lanes, or as many as
upload_connections says). At most
HELD_LIMIT bytes wait or fly at once; end_upload waits for the last
acknowledgement.

end_upload fsyncs the file before renaming it into place. For a large
upload, one more connection fsyncs it each WRITE_OUT_EVERY bytes
acknowledged, beside the writes, so that the server writes to its disk
while the upload goes on; the last fsync then waits on the tail only, not on
the whole file's worth of the server's dirty pages (measured on loopback:
0.13 s for 256 MiB before, 0.01-0.02 s after).

What the core saves after each chunk (md.extra) says how far the server has
acknowledged every byte ("acked"). Chunks need not follow each other: the core
leaves out chunks of zeros (plug.keeps_holes), which a write past the end of
the file gives back as zeros (a hole, on a POSIX server), as end_upload's size
does for a gap at the end; "acked" counts such a gap with the chunks around it.
A connection that drops keeps the chunks not yet acknowledged in memory, and
restart_upload writes them again. After a crash the memory is gone:
restart_upload then resumes at what was
acknowledged, at most HELD_LIMIT bytes before the offset the core saved, and
the core sends again from there. Either way no further than the file on the
server reaches: a server that lost power lost what it had acknowledged but not
yet written to its disk. (Checking what landed of the chunks in
flight would mean a checksum of every byte sent, to save resending a few
MiB once after a crash.)
"""

from __future__ import annotations

import collections
import errno
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from onitufs.plug import DriverError, RemoteUnavailable

from .connect import Connection
from .pool import Pool, lost
from .sftp import (
    CLOSE,
    O_CREAT,
    O_TRUNC,
    O_WRITE,
    STATUS,
    Attrs,
    Call,
    Reader,
    SftpError,
    pack_string,
)

log = logging.getLogger(__name__)
HELD_LIMIT = 16 * 1024 * 1024  # bytes queued or unacknowledged per upload
IN_FLIGHT = 4  # chunks sent and not yet acknowledged, per connection
SPLIT_FROM = 8 * 1024 * 1024  # uploads smaller than this use one connection
WRITE_OUT_EVERY = 32 * 1024 * 1024
# Less free than this on the server after a write was refused: its disk is full.
FULL_DISK = 1024 * 1024


@dataclass(eq=False)
class Chunk:
    offset: int
    data: bytes
    taken: bool = False  # by a sender, which sends it and collects its acknowledgement

    @property
    def end(self) -> int:
        return self.offset + len(self.data)


@dataclass
class Upload:
    """One upload: its main connection and open temporary file, the chunks not yet
    acknowledged, and the threads that send them."""

    pool: Pool
    temp: bytes  # the temporary file's full path on the server
    size: int  # of the whole upload
    lanes: int | None  # connections to write over; None: as the round trip says
    conn: Connection | None = None  # the main connection: end_upload finishes on it
    handle: bytes | None = None
    held: collections.deque[Chunk] = field(default_factory=collections.deque)  # by offset
    queued_end: int = 0  # where the last chunk queued ends
    acked: int = 0  # every byte below this is on the server
    error: str | None = None
    error_lost: bool = False  # the error was the connection's (not a refused write)
    cond: threading.Condition = field(default_factory=threading.Condition)
    _senders: list[threading.Thread] = field(default_factory=list)
    _helper_conns: list[Connection] = field(default_factory=list)  # the further connections
    _stop: bool = False

    # the calling threads (one at a time: the core calls one transfer's handlers in order)

    def create(self, after: list[Call]) -> list[Reader | SftpError]:
        """Open the temporary file, `after` in the same round trip: what it was answered."""
        self.conn = self.pool.get()
        sftp = self.conn.sftp
        try:
            # the name is this upload's alone: what a crash left there is ours to replace
            opening = sftp.open_request(self.temp, O_WRITE | O_CREAT | O_TRUNC, Attrs(mode=0o600))
            sent = sftp.send_later(after)
            try:
                self.handle = sftp.handle(opening, self.temp.decode(errors="replace"))
            finally:
                answers = sftp.answers(sent)
        except BaseException as error:
            self._release(lost(error))
            raise
        return answers

    def send(self, offset: int, data: bytes) -> None:
        """Queue a chunk; returns at once unless HELD_LIMIT bytes are held already."""
        chunk = Chunk(offset, data)
        with self.cond:
            while self.error is None and self.held and \
                    sum(len(c.data) for c in self.held) + len(data) > HELD_LIMIT:
                self.cond.wait()
            self._raise_error()
            if self.conn is None or self.handle is None:
                raise DriverError("the upload is not open (resume it first)")
            self.held.append(chunk)
            self.queued_end = chunk.end
            self.cond.notify_all()
            if not self._senders:
                self._stop = False
                conn, handle = self.conn, self.handle
                self._start_sender(lambda: self._send_loop(conn, handle))
                if self.size >= SPLIT_FROM:
                    for _ in range(self._lane_count(conn) - 1):
                        self._start_sender(lambda: self._on_own_connection(self._send_loop, "written"))
                if self.size >= 2 * WRITE_OUT_EVERY and conn.sftp.has("fsync@openssh.com"):
                    self._start_sender(lambda: self._on_own_connection(self._write_out, "fsynced"))

    def saved_state(self) -> dict[str, Any]:
        """What md.extra must hold for a resume after a crash."""
        with self.cond:
            return {"acked": self.acked}

    def flush(self) -> None:
        """Until every chunk is acknowledged."""
        with self.cond:
            while self.error is None and self.held:
                self.cond.wait()
            self._raise_error()
        self._stop_senders()

    def resume(self, offset: int, saved: dict[str, Any], in_memory: bool) -> int:
        """Make the temporary file hold exactly the first `offset` bytes of the upload, or
        fewer where not all of them are known to have arrived; returns how many."""
        self._stop_senders()
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
            # What the server acknowledged may have been in its memory only, and gone with
            # a power loss or a crash of the server: its file system then shows the file
            # shorter (ext4, XFS, btrfs grow a file only once its bytes are written).
            there = sftp.fstat(self.handle).size or 0
            covered = min(self.acked if in_memory else int(saved.get("acked", 0)), there)
            if in_memory and covered == self.acked:
                for chunk in list(self.held):
                    if chunk.offset < offset and chunk.offset <= covered:
                        sftp.write(self.handle, chunk.offset, chunk.data)
                        covered = max(covered, chunk.end)
            resumed = min(covered, offset)
            sftp.fsetstat(self.handle, Attrs(size=resumed))
        except BaseException as error:
            if lost(error):
                self._release(True)
            raise
        with self.cond:
            self.held.clear()
            self.acked = self.queued_end = resumed
            self.error, self.error_lost = None, False
        return resumed

    def close(self, also: list[Call]) -> list[Reader | SftpError]:
        """Close the temporary file (once flushed) and give the connection back; `also`
        goes in the same round trip, and what it was answered is returned. The close's
        own answer is not waited for (the file is in place, and written out)."""
        self._stop_senders()
        answers: list[Reader | SftpError] = []
        if self.conn is not None and self.handle is not None:
            sftp = self.conn.sftp
            sent = sftp.send_later(also)
            sftp.discard(sftp.request(CLOSE, pack_string(self.handle), later=True))
            sftp.flush()
            answers = sftp.answers(sent)
        self._release(False)
        return answers

    def drop_connection(self) -> None:
        """The connection failed under the caller: let it go, keep the upload's state."""
        self._stop_senders()
        self._release(True)

    def abandon(self) -> None:
        """Let the upload's file and connection go (an abort, a conflict that waits), the
        file closed first, and the close answered, where no sender is at work (as after
        end_upload) and the connection holds, which is then kept: the file may be removed
        next, and a disk may keep a file removed while open under another name until its
        close (see Reads.release). Else drop(). A resume opens the file again."""
        with self.cond:
            busy = bool(self._senders)
        if busy or self.conn is None or self.handle is None:
            self.drop()
            return
        try:
            self.conn.sftp.close_handle(self.handle)
        except BaseException as error:
            self._release(lost(error))
            raise
        self._release(False)

    def drop(self) -> None:
        """Forget the upload at once: its connections are closed, not reused."""
        with self.cond:
            self._stop = True
            self.held.clear()
            self.cond.notify_all()
            helpers = list(self._helper_conns)
        for conn in helpers:
            conn.close()  # a sender waiting on the server wakes up
        self._release(True)
        self._stop_senders()

    def _raise_error(self) -> None:
        if self.error is not None:
            raise (RemoteUnavailable if self.error_lost else DriverError)(self.error)

    def _release(self, broken: bool) -> None:
        conn, self.conn, self.handle = self.conn, None, None
        if conn is not None:
            self.pool.put(conn, broken)

    def _lane_count(self, conn: Connection) -> int:
        # Close by, a second connection only doubles the server's work (measured on
        # loopback: twice the CPU time of sshd and sftp-server per GiB).
        return self.lanes if self.lanes is not None else conn.lanes()

    def _start_sender(self, target: Callable[[], object]) -> None:
        sender = threading.Thread(target=target, daemon=True, name="ssh-upload")
        self._senders.append(sender)
        sender.start()

    def _stop_senders(self) -> None:
        with self.cond:
            senders, self._senders = self._senders, []
            self._stop = True
            self.cond.notify_all()
        for sender in senders:
            sender.join()

    # the sender threads

    def _on_own_connection(self, work: Callable[[Connection, bytes], bool], doing: str) -> None:
        """Run `work` (it returns whether the connection was lost) on the temporary file,
        opened on a further connection, if one is free at once."""
        conn = self.pool.try_get()
        if conn is None:
            return
        with self.cond:
            self._helper_conns.append(conn)
        broken = True
        try:
            handle = conn.sftp.open(self.temp, O_WRITE)
            log.debug("%s: %s over a further connection too", self.temp.decode(errors="replace"),
                      doing)
            broken = work(conn, handle)
            if not broken:
                conn.sftp.close_handle(handle)
        except Exception as error:  # the file could not be opened or closed: the main lane goes on
            broken = lost(error)
        finally:
            with self.cond:
                self._helper_conns.remove(conn)
            self.pool.put(conn, broken)

    def _write_out(self, conn: Connection, handle: bytes) -> bool:
        """Fsync the file each WRITE_OUT_EVERY bytes acknowledged, until stopped; True if
        the connection was lost."""
        written_out = 0
        while True:
            with self.cond:
                while not self._stop and self.error is None \
                        and self.acked - written_out < WRITE_OUT_EVERY:
                    self.cond.wait()
                if self._stop or self.error is not None:
                    return False
                reached = self.acked
            try:
                conn.sftp.fsync(handle)
            except SftpError:  # refused: only end_upload's fsync has to succeed
                return False
            except Exception as error:
                return lost(error)
            written_out = reached

    def _send_loop(self, conn: Connection, handle: bytes) -> bool:
        """Send chunks no other sender took and collect their acknowledgements, until
        stopped or failed; True if the connection was lost."""
        flying: collections.deque[tuple[Chunk, list[int]]] = collections.deque()  # and its requests
        try:
            while True:
                with self.cond:
                    while not self._stop and self.error is None and not flying \
                            and all(c.taken for c in self.held):
                        self.cond.wait()
                    if (self._stop or self.error is not None) and not flying:
                        return False
                    unsent = None
                    if not self._stop and self.error is None and len(flying) < IN_FLIGHT:
                        unsent = next((c for c in self.held if not c.taken), None)
                        if unsent is not None:
                            unsent.taken = True
                if unsent is not None:
                    flying.append((unsent, conn.sftp.write_requests(handle, unsent.offset,
                                                                     unsent.data)))
                    continue
                done, requests = flying.popleft()
                for request_id in requests:
                    conn.sftp.check(request_id, STATUS, "write")
                with self.cond:
                    if done in self.held:
                        self.held.remove(done)
                    self.acked = self.held[0].offset if self.held else self.queued_end
                    self.cond.notify_all()
        except Exception as error:
            refusal = None if lost(error) else refused_write(conn, handle, error)
            with self.cond:
                for chunk in self.held:
                    chunk.taken = False
                if self.error is None:
                    self.error_lost = refusal is None
                    self.error = refusal or f"connection lost during the upload: {error}"
                self.cond.notify_all()
            return lost(error)


def refused_write(conn: Connection, handle: bytes, error: Exception) -> str:
    """Why the server refused a write, in words for the user. SFTP version 3 has no status
    for a full disk (OpenSSH's sftp-server answers "Failure"), so the server is asked what
    the file's file system has free."""
    try:
        free = conn.sftp.free_bytes(handle)
    except Exception:  # only the words depend on it: the refusal stands
        free = None
    if free is not None and free < FULL_DISK:
        return f"the server refused a write: {os.strerror(errno.ENOSPC)} ({free:,} bytes free)"
    return f"the server refused a write: {error}"
