"""get_chunk with read-ahead: the blocks after a sequential read are fetched before they are asked for.

The core asks for one cache block at a time, in order, and waits for each.
A block asked for out of order is fetched with pipelined requests
(sftp.Session.read). Once a file is read in order, a Stream takes over:
threads on connections of their own (one, or two on a long link, each
taking the next block no other took) that keep READ requests in flight over
the rest of the file, at most AHEAD_BYTES past the reader, so the pipe never
drains between blocks and the core finds each block waiting. A file open
for reading is kept open per connection, so a block costs no open of its
own.

Every block is proven to be of the version asked for: an FSTAT on the handle
is sent right after the block's last READ, pipelined with the reads (no round
trip of its own), and the block is given only if the size and mtime it
answers still make the revision's token. The server answers the requests on
a handle in the order sent, so an edit made on the server before any of the
block's reads shows in that FSTAT (to the second: an edit in the same second
that keeps the size is the racy case the core settles, remote_changes.py).
"""

from __future__ import annotations

import collections
import errno
import stat
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from onitufs.plug import DriverError, at_or_below

from .connect import Connection, OpenFile
from .pool import Pool, lost
from .sftp import (
    ATTRS,
    DATA,
    FSTAT,
    LSTAT,
    O_READ,
    READ,
    REALPATH,
    Attrs,
    Session,
    SftpError,
    pack_string,
)

AHEAD_BYTES = 8 * 1024 * 1024  # read ahead of the reader, at most
# Blocks kept below the furthest one asked for: the kernel reads ahead with several
# requests at once, and they reach the driver out of order.
BEHIND = 4
WINDOW = 16  # read requests in flight
IDLE_STOP = 10.0  # a stream whose reader stopped reading ends after this long
MAX_FILES = 16  # files read at once whose read-ahead is kept
HANDLES_PER_CONNECTION = 8
HANDLE_IDLE = 10.0  # a file kept open that no read used for this long is closed

Token = Callable[[Attrs], str]


class OtherVersion(DriverError):
    """The file on the server is not the version asked for; `attrs` are of the one there."""

    def __init__(self, path: bytes, attrs: Attrs) -> None:
        super().__init__(f"{path.decode(errors='replace')}: changed on the remote since it was "
                         "indexed")
        self.attrs = attrs


class NotThere(DriverError):
    """The path holds no file of the remote now: gone, or something else in its place."""


class Stream:
    """Reads one file in order from `start`, ahead of the reader, on connections of its own:
    one, or Connection.lanes() on a long link, each lane taking the next block not taken."""

    def __init__(self, reads: Reads, state: FileState, start: int, block: int) -> None:
        self.reads = reads
        self.state = state
        self.block = block
        self.start = start
        self.furthest = start  # the furthest block asked for: the read-ahead runs from there
        self.reader_at = start  # the lowest block that may still be asked for: nothing below is kept
        self.wanted: collections.Counter[int] = collections.Counter()  # blocks being waited for
        self.next_claim = start  # the next block no lane has taken
        self.reading: set[int] = set()  # blocks taken by a lane and not yet read whole
        self.blocks: dict[int, bytes] = {}
        self.error: BaseException | None = None
        self.stopped = False
        self.lanes = 1
        self.cond = threading.Condition()
        threading.Thread(target=self._lane, args=(True,), daemon=True,
                         name="ssh-read-ahead").start()

    def take(self, offset: int, size: int) -> bytes | None:
        """The block at offset, once read; None if this stream cannot give it."""
        with self.cond:
            # Blocks can be asked for at once by several threads (the kernel reads ahead
            # too): none may drop a block that another still waits for.
            self.wanted[offset] += 1
            self.furthest = max(self.furthest, offset)
            self.reader_at = min(min(self.wanted), self.furthest - BEHIND * self.block)
            for at in [at for at in self.blocks if at < self.reader_at]:
                del self.blocks[at]
            self.cond.notify_all()
            try:
                while offset not in self.blocks and self._coming(offset) \
                        and self.error is None and not self.stopped:
                    if not self.cond.wait(60):
                        return None
                data = self.blocks.pop(offset, None)  # None: passed and dropped before
            finally:
                self.wanted[offset] -= 1
                if not self.wanted[offset]:
                    del self.wanted[offset]
        if data is None or len(data) != size:
            return None
        return data

    def _coming(self, offset: int) -> bool:
        return offset >= self.next_claim or offset in self.reading

    def covers(self, offset: int, size: int) -> bool:
        return size == self.block and offset >= self.start \
            and (offset - self.start) % self.block == 0 and self.error is None and not self.stopped

    def stop(self) -> None:
        with self.cond:
            self.stopped = True
            self.cond.notify_all()

    def _lane(self, first: bool) -> None:
        pool = self.reads.stream_pool
        conn: Connection | None = None
        broken = False
        try:
            conn = pool.get() if first else pool.try_get()
            if conn is None:
                return  # every connection is busy: the other lanes go on
            if first:
                more = conn.lanes() - 1
                with self.cond:
                    self.lanes += more
                for _ in range(more):
                    threading.Thread(target=self._lane, args=(False,), daemon=True,
                                     name="ssh-read-ahead").start()
            self._read(conn)
        except BaseException as error:
            broken = lost(error)
            with self.cond:
                self.error = error
                self.cond.notify_all()
        finally:
            if conn is not None:
                pool.put(conn, broken)
            with self.cond:
                self.lanes -= 1
                last = not self.lanes
                if conn is not None or last:
                    self.stopped = True
                self.cond.notify_all()
            if last:
                with self.reads.lock:
                    self.reads.streams -= 1

    def _claimable(self) -> bool:
        """Whether a block is left to read and the reader is near enough; under the lock."""
        at = self.next_claim
        return at < (self.state.size or 0) and at - self.furthest < AHEAD_BYTES

    def _claim(self) -> int | None:
        """The next block for a lane to read, if there is one to take now; under the lock."""
        if self.stopped or not self._claimable():
            return None
        at = self.next_claim
        self.next_claim += self.block
        self.reading.add(at)
        return at

    def _read(self, conn: Connection) -> None:
        """One lane, on a handle of its own."""
        sftp = conn.sftp
        handle = open_file(conn, self.state)
        # (id, block, offset, length): a READ, or with length 0 the FSTAT after a block's READs
        flying: collections.deque[tuple[int, int, int, int]] = collections.deque()
        try:
            self._pump(sftp, handle, flying)
        except (DriverError, SftpError):  # this file failed, not the session: it goes on
            self._close(sftp, handle, flying)
            raise
        self._close(sftp, handle, flying)

    @staticmethod
    def _close(sftp: Session, handle: bytes,
               flying: collections.deque[tuple[int, int, int, int]]) -> None:
        for request_id, _, _, _ in flying:
            sftp.discard(request_id)
        sftp.close_handle(handle)

    def _pump(self, sftp: Session, handle: bytes,
              flying: collections.deque[tuple[int, int, int, int]]) -> None:
        """Keep WINDOW READs in flight over the blocks this lane takes, each block's READs
        followed by an FSTAT that proves them of the version wanted."""
        size = self.state.size or 0
        parts: list[bytes | memoryview] = []
        whole = b""  # the block read whole, until its FSTAT answers
        block_at = issued = end = 0  # the block being requested, and how far
        stats = 0  # FSTATs in flying: the window counts READs, the bytes on their way
        while True:
            while len(flying) - stats < WINDOW:
                if issued >= end:
                    with self.cond:
                        claimed = self._claim()
                    if claimed is None:
                        break
                    block_at, issued, end = claimed, claimed, min(size, claimed + self.block)
                length = min(sftp.read_limit, end - issued)
                flying.append((sftp.request(READ, pack_string(handle)
                                            + struct.pack(">QI", issued, length)),
                               block_at, issued, length))
                issued += length
                if issued >= end:
                    flying.append((sftp.request(FSTAT, pack_string(handle)), block_at, end, 0))
                    stats += 1
            if not flying:
                with self.cond:
                    if self.stopped:
                        break
                    if not self._claimable() and not self.cond.wait(IDLE_STOP):
                        self.stopped = True  # the reader went away: free the connections
                continue
            request_id, at_block, at, length = flying.popleft()
            if not length:
                stats -= 1
                self.reads.check(self.state, sftp.check(request_id, ATTRS, "fstat").attrs())
                with self.cond:
                    self.reading.discard(at_block)
                    if at_block >= self.reader_at:
                        self.blocks[at_block] = whole
                    self.cond.notify_all()
                continue
            data: bytes | memoryview = sftp.check(request_id, DATA, "read").view()
            if len(data) < length:  # short: the rest at once, synchronously, and checked
                rest, attrs = sftp.read(handle, at + len(data), length - len(data))
                self.reads.check(self.state, attrs)
                data = bytes(data) + rest
                if len(data) < length:
                    raise DriverError(f"{self.state.path.decode(errors='replace')}: "
                                      "shorter than when it was listed")
            parts.append(data)
            if at + length >= min(size, at_block + self.block):
                whole = b"".join(parts)
                parts = []


@dataclass
class FileState:
    root: bytes  # the remote's folder, resolved: the file's folder must lead there
    path: bytes
    revision: str | None
    stream: Stream | None = None
    next_offset: int = -1  # where a sequential read goes on
    size: int | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)


class Reads:
    def __init__(self, pool: Pool, stream_pool: Pool, token: Token, max_streams: int) -> None:
        self.pool = pool
        self.stream_pool = stream_pool  # for the streams' lanes
        self.max_streams = max_streams
        self.streams = 0
        self.lock = threading.Lock()
        self.token = token
        self._files: collections.OrderedDict[tuple[bytes, str | None], FileState] = \
            collections.OrderedDict()
        self._lock = threading.Lock()

    def close(self) -> None:
        with self._lock:
            for state in self._files.values():
                if state.stream is not None:
                    state.stream.stop()
            self._files.clear()

    def _state(self, root: bytes, path: bytes, revision: str | None) -> FileState:
        key = (path, revision)
        with self._lock:
            state = self._files.get(key)
            if state is None:
                state = self._files[key] = FileState(root, path, revision)
                while len(self._files) > MAX_FILES:
                    _, old = self._files.popitem(last=False)
                    if old.stream is not None:
                        old.stream.stop()
            self._files.move_to_end(key)
            return state

    def get(self, root: bytes, path: bytes, revision: str | None, offset: int,
            size: int) -> bytes:
        """Bytes of the file at `path` (in the folder `root`, resolved), of that revision."""
        state = self._state(root, path, revision)
        with state.lock:
            stream = state.stream
            # a block a little behind is one of the kernel's requests overtaken by another
            behind = state.next_offset - BEHIND * size <= offset < state.next_offset
            sequential = offset in (state.next_offset, 0) or behind
            if not behind:
                state.next_offset = offset + size
        if stream is not None and stream.covers(offset, size):
            data = stream.take(offset, size)
            if data is not None:
                return data
        if stream is not None:
            stream.stop()
        data = self.fetch(state, offset, size)
        with state.lock:
            if state.stream is stream:
                state.stream = None
                if sequential and state.size is not None and offset + size < state.size:
                    with self.lock:
                        room = self.streams < self.max_streams
                        self.streams += room
                    if room:
                        state.stream = Stream(self, state, offset + size, size)
        return data

    def fetch(self, state: FileState, offset: int, size: int) -> bytes:
        with self.pool.use() as conn:
            key = (state.path, state.revision)
            handle = self._open(conn, state)
            data, attrs = conn.sftp.read(handle, offset, size)
            try:
                self.check(state, attrs)
            except OtherVersion:
                del conn.handles[key]
                conn.sftp.close_handle(handle)
                raise
            state.size = attrs.size
            return data

    def check(self, state: FileState, attrs: Attrs) -> None:
        """Raise OtherVersion unless attrs, answered after some reads, are of the version
        wanted: then so were the bytes read."""
        if state.revision is not None and self.token(attrs) != state.revision:
            raise OtherVersion(state.path, attrs)

    @staticmethod
    def _open(conn: Connection, state: FileState) -> bytes:
        """This connection's handle on the file, opened once for every read of the version."""
        handles = conn.handles
        key = (state.path, state.revision)
        kept = handles.get(key)
        if kept is None:
            kept = handles[key] = OpenFile(open_file(conn, state), time.monotonic())
            while len(handles) > HANDLES_PER_CONNECTION:
                conn.sftp.close_handle(handles.popitem(last=False)[1].handle)
        kept.used = time.monotonic()
        handles.move_to_end(key)
        return kept.handle

    def close_idle(self) -> None:
        """Close the files no read used for HANDLE_IDLE seconds. An open file is kept on the
        server's disk after it is deleted there, its space taken, for as long as it stays
        open: a disk filled up once is not given back by a delete."""
        self.pool.each_holding_files(close_idle_handles)

    def release(self, conn: Connection, path: bytes) -> None:
        """Drop the read-ahead of the file at `path`, and close the handles reads keep on
        it, on `conn` and on the idle connections, before it is removed or replaced: a
        disk that keeps a file removed while open under another name until its last close
        (libfuse's .fuse_hidden*, NFS's .nfs*) shows that name in its folder meanwhile,
        which a listing would report."""
        with self._lock:
            for key in [k for k in self._files if k[0] == path]:
                stream = self._files.pop(key).stream
                if stream is not None:
                    stream.stop()
        close_handles_of(conn, path)
        self.pool.each_holding_files(lambda held: close_handles_of(held, path))


def close_idle_handles(conn: Connection) -> None:
    """Close this connection's files no read used for HANDLE_IDLE seconds."""
    stale = time.monotonic() - HANDLE_IDLE
    while conn.handles:
        key, kept = next(iter(conn.handles.items()))  # the least recently used
        if kept.used > stale:
            return
        del conn.handles[key]
        conn.sftp.close_handle(kept.handle)


def close_handles_of(conn: Connection, path: bytes) -> None:
    """Close this connection's handles on the file at `path` (one a version read)."""
    for key in [key for key in conn.handles if key[0] == path]:
        conn.sftp.close_handle(conn.handles.pop(key).handle)


def open_file(conn: Connection, state: FileState) -> bytes:
    """A handle to read the file, refused if it is not a file (a symbolic link put in its
    place: SFTP cannot open without following it) or its folder leads outside the
    remote's (a symlink there): nothing outside the remote is read into the mount. The
    server answers both in the same round trip as the open."""
    sftp, what = conn.sftp, state.path.decode(errors="replace")
    resolving = sftp.request(REALPATH, pack_string(state.path.rpartition(b"/")[0]), later=True)
    looking = sftp.request(LSTAT, pack_string(state.path), later=True)
    try:
        handle = sftp.handle(sftp.open_request(state.path, O_READ), what)
    except SftpError as error:
        sftp.discard(resolving)
        sftp.discard(looking)
        gone = NotThere if error.errno == errno.ENOENT else DriverError
        raise gone(f"{error}: no longer on the remote") from None
    try:
        folder = sftp.named(resolving, what)
        mode = sftp.check(looking, ATTRS, what).attrs().mode or 0
    except SftpError:  # gone meanwhile: not known to be inside, nor a file
        folder, mode = b"", 0
    finally:
        sftp.discard(looking)
    if not at_or_below(folder, state.root) or not stat.S_ISREG(mode):
        sftp.close_handle(handle)
        raise NotThere(f"{what}: not a file of the remote's folder (a symbolic link?)")
    return handle

