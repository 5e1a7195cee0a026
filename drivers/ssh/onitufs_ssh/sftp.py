"""A small SFTP version 3 client over one pipe to the server, built for pipelining.

paramiko's own SFTPClient sends reads and writes of 32 KiB and waits on
most of them; here every request is sent without waiting, responses are
matched to requests by id, and reads and writes use the largest size the
server accepts (OpenSSH's limits@openssh.com), so one connection keeps the
pipe full. The pipe (openssh.py) carries the bytes; the session knows
nothing of SSH. A session is not thread-safe: one thread uses it at a time (the
connection pool in pool.py hands it out).

Server errors raise SftpError (with an errno where the status maps to one);
a dropped connection raises ConnectionLost.
"""

from __future__ import annotations

import errno
import struct
import time
from collections import deque
from collections.abc import Generator
from dataclasses import dataclass
from typing import NamedTuple, Protocol

# packet types
INIT, VERSION, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT, SETSTAT, FSETSTAT = 1, 2, 3, 4, 5, 6, 7, 8, 9, 10
OPENDIR, READDIR, REMOVE, MKDIR, RMDIR, REALPATH, STAT, RENAME, READLINK, SYMLINK = range(11, 21)
STATUS, HANDLE, DATA, NAME, ATTRS, EXTENDED, EXTENDED_REPLY = 101, 102, 103, 104, 105, 200, 201
# status codes
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, BAD_MESSAGE, NO_CONNECTION, CONNECTION_LOST, \
    OP_UNSUPPORTED = range(9)
ST_RDONLY = 1  # statvfs@openssh.com's flags
# open flags
O_READ, O_WRITE, O_APPEND, O_CREAT, O_TRUNC, O_EXCL = 1, 2, 4, 8, 0x10, 0x20
# attribute flags
A_SIZE, A_UIDGID, A_PERMISSIONS, A_ACMODTIME, A_EXTENDED = 1, 2, 4, 8, 0x80000000

# (OpenSSH's server answers BAD_MESSAGE for EINVAL and ENAMETOOLONG, and for a request it
# cannot parse, which this client never sends)
_ERRNO = {NO_SUCH_FILE: errno.ENOENT, PERMISSION_DENIED: errno.EACCES,
          OP_UNSUPPORTED: errno.EOPNOTSUPP, BAD_MESSAGE: errno.EINVAL}
DEFAULT_LIMIT = 32768  # what every server accepts, when it does not say more
MAX_LIMIT = 255 * 1024
WINDOW = 64  # requests in flight per session


class SftpError(OSError):
    """The server refused a request."""


class ConnectionLost(Exception):
    """The connection closed under a request."""


class Pipe(Protocol):
    """Both ways of one connection to the server's SFTP subsystem (whoever opened it
    closes it)."""

    def sendall(self, data: bytes | memoryview) -> None: ...

    def recv(self) -> bytes:
        """What has come, at least one byte; ConnectionLost when nothing more will."""


@dataclass
class Attrs:
    size: int | None = None
    mode: int | None = None  # st_mode, file type bits included
    mtime: int | None = None  # seconds
    atime: int | None = None
    uid: int | None = None
    gid: int | None = None


# (request type, its payload, the answer type expected, what it is about for errors)
Call = tuple[int, bytes, int, str]
Sent = tuple[int, int, str]  # (request id, the answer type expected, what)


def refusal(code: int, message: str, what: str) -> SftpError:
    """The error for a status other than OK."""
    text = f"{what}: {message or 'failed'}"
    error = _ERRNO.get(code)
    return SftpError(error, text) if error is not None else SftpError(text)


def pack_string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def pack_attrs(attrs: Attrs) -> bytes:
    flags, body = 0, b""
    if attrs.size is not None:
        flags |= A_SIZE
        body += struct.pack(">Q", attrs.size)
    if attrs.mode is not None:
        flags |= A_PERMISSIONS
        body += struct.pack(">I", attrs.mode)
    if attrs.mtime is not None:
        flags |= A_ACMODTIME
        body += struct.pack(">II", u32_time(attrs.atime if attrs.atime is not None
                                            else attrs.mtime), u32_time(attrs.mtime))
    return struct.pack(">I", flags) + body


def u32_time(seconds: int) -> int:
    """A time as SFTP v3 carries it: whole seconds from 1970 to 2106, the nearest one of
    those for a file dated before or after."""
    return min(max(seconds, 0), 2**32 - 1)


class Reader:
    """Reads the fields of one response."""

    def __init__(self, data: bytes | memoryview, pos: int = 0) -> None:
        self.data = memoryview(data)
        self.pos = pos

    def u32(self) -> int:
        value: int = struct.unpack_from(">I", self.data, self.pos)[0]
        self.pos += 4
        return value

    def u64(self) -> int:
        value: int = struct.unpack_from(">Q", self.data, self.pos)[0]
        self.pos += 8
        return value

    def string(self) -> bytes:
        return bytes(self.view())

    def view(self) -> memoryview:
        """The next string without copying it."""
        length = self.u32()
        value = self.data[self.pos:self.pos + length]
        self.pos += length
        return value

    def attrs(self) -> Attrs:
        flags = self.u32()
        attrs = Attrs()
        if flags & A_SIZE:
            attrs.size = self.u64()
        if flags & A_UIDGID:
            attrs.uid, attrs.gid = self.u32(), self.u32()
        if flags & A_PERMISSIONS:
            attrs.mode = self.u32()
        if flags & A_ACMODTIME:
            attrs.atime, attrs.mtime = self.u32(), self.u32()
        if flags & A_EXTENDED:
            for _ in range(self.u32()):
                self.string()
                self.string()
        return attrs


class Session:
    """One SFTP session on its own connection."""

    def __init__(self, pipe: Pipe) -> None:
        self.pipe = pipe
        self._buffer = bytearray()
        self._next_id = 1
        self._waiting: set[int] = set()
        self._arrived: dict[int, tuple[int, Reader]] = {}
        self._held: list[bytes] = []  # requests sent later (see request)
        self.extensions: dict[bytes, bytes] = {}
        self._send(INIT, struct.pack(">I", 3))
        kind, reader = self._read_packet()
        if kind != VERSION:
            raise ConnectionLost(f"not an SFTP server (answered type {kind})")
        reader.u32()
        while reader.pos < len(reader.data):
            name = reader.string()
            self.extensions[name] = reader.string()
        self.read_limit = self.write_limit = DEFAULT_LIMIT
        self.round_trip = min(self._time_round_trip() for _ in range(3))  # a busy moment inflates one
        if b"limits@openssh.com" in self.extensions:
            limits = self._call(EXTENDED, pack_string(b"limits@openssh.com"), EXTENDED_REPLY)
            limits.u64()
            read, write = limits.u64(), limits.u64()
            self.read_limit = min(MAX_LIMIT, read or MAX_LIMIT)
            self.write_limit = min(MAX_LIMIT, write or MAX_LIMIT)

    def _time_round_trip(self) -> float:
        """Seconds for one small request to be answered."""
        started = time.monotonic()
        self.realpath(b".")
        return time.monotonic() - started

    def has(self, extension: str) -> bool:
        return extension.encode() in self.extensions

    # the wire

    def _send(self, kind: int, payload: bytes, data: bytes | memoryview = b"",
              later: bool = False) -> None:
        self._held.append(b"".join((struct.pack(">IB", len(payload) + len(data) + 1, kind),
                                    payload, data)))
        if not later:
            self.flush()

    def flush(self) -> None:
        """Send the requests held back (see request), in the order they were made."""
        if not self._held:
            return
        packets = b"".join(self._held)  # one alone is not copied
        self._held.clear()
        self.pipe.sendall(packets)

    def _fill(self, wanted: int) -> None:
        while len(self._buffer) < wanted:
            self.flush()  # what is held back may be what the server's answer waits on
            self._buffer += self.pipe.recv()

    def _read_packet(self) -> tuple[int, Reader]:
        self._fill(4)
        length = struct.unpack_from(">I", self._buffer)[0]
        self._fill(4 + length)
        with memoryview(self._buffer) as view:  # one copy: a slice of the bytearray is another
            body = bytes(view[4:4 + length])
        del self._buffer[:4 + length]
        return body[0], Reader(body, 1)

    def request(self, kind: int, payload: bytes, data: bytes | memoryview = b"",
                later: bool = False) -> int:
        """Send a request (payload, then data) without waiting; returns its id for `response`.

        `later`: hold it back, to go with the next request sent, or before waiting for an
        answer that has not come, or at `flush`: many small requests in one SSH packet
        cost the client and the server far less than one packet each.
        """
        request_id = self._next_id
        self._next_id = (self._next_id + 1) & 0xFFFFFFFF or 1
        self._waiting.add(request_id)
        self._send(kind, struct.pack(">I", request_id) + payload, data, later)
        return request_id

    def response(self, request_id: int) -> tuple[int, Reader]:
        """The answer to one request (answers to others that come first are kept)."""
        while request_id not in self._arrived:
            kind, reader = self._read_packet()
            answered = reader.u32()
            if answered in self._waiting:
                self._arrived[answered] = (kind, reader)
        self._waiting.discard(request_id)
        return self._arrived.pop(request_id)

    def discard(self, request_id: int) -> None:
        """Forget a request whose answer no longer matters (it is dropped when it comes)."""
        self._waiting.discard(request_id)
        self._arrived.pop(request_id, None)

    def check(self, request_id: int, expected: int, what: str) -> Reader:
        kind, reader = self.response(request_id)
        if kind == STATUS:
            code = reader.u32()
            message = reader.string().decode("utf-8", "replace")
            if code == OK and expected == STATUS:
                return reader
            if code == EOF and expected == DATA:
                return Reader(pack_string(b""))
            raise refusal(code, message, what)
        if kind != expected:
            raise ConnectionLost(f"{what}: unexpected answer (type {kind})")
        return reader

    def _call(self, kind: int, payload: bytes, expected: int, what: str = "sftp") -> Reader:
        return self.check(self.request(kind, payload), expected, what)

    # operations

    def stat(self, path: bytes) -> Attrs:
        return self._call(STAT, pack_string(path), ATTRS, path.decode(errors="replace")).attrs()

    def lstat(self, path: bytes) -> Attrs:
        return self._call(LSTAT, pack_string(path), ATTRS, path.decode(errors="replace")).attrs()

    def fstat(self, handle: bytes) -> Attrs:
        return self._call(FSTAT, pack_string(handle), ATTRS).attrs()

    def realpath(self, path: bytes) -> bytes:
        return self.named(self.request(REALPATH, pack_string(path)), path.decode(errors="replace"))

    def open(self, path: bytes, flags: int, attrs: Attrs | None = None) -> bytes:
        return self.handle(self.open_request(path, flags, attrs), path.decode(errors="replace"))

    def open_request(self, path: bytes, flags: int, attrs: Attrs | None = None) -> int:
        payload = pack_string(path) + struct.pack(">I", flags) + pack_attrs(attrs or Attrs())
        return self.request(OPEN, payload)

    def handle(self, request_id: int, what: str) -> bytes:
        """The handle an OPEN was answered with."""
        return self.check(request_id, HANDLE, what).string()

    def close_handle(self, handle: bytes) -> None:
        self._call(CLOSE, pack_string(handle), STATUS)

    def setstat(self, path: bytes, attrs: Attrs) -> None:
        self._call(SETSTAT, pack_string(path) + pack_attrs(attrs), STATUS,
                   path.decode(errors="replace"))

    def fsetstat(self, handle: bytes, attrs: Attrs) -> None:
        self._call(FSETSTAT, pack_string(handle) + pack_attrs(attrs), STATUS)

    def send_later(self, calls: list[Call]) -> list[Sent]:
        """Send the calls with the next request that goes (or at flush); `answers` gives
        what they were answered. The server takes one session's requests in the order
        sent, so each finds what the ones before it did."""
        return [(self.request(kind, payload, later=True), expected, what)
                for kind, payload, expected, what in calls]

    def answers(self, sent: list[Sent]) -> list[Reader | SftpError]:
        """Each sent call's answer or refusal, in order."""
        results: list[Reader | SftpError] = []
        try:
            for request_id, expected, what in sent:
                try:
                    results.append(self.check(request_id, expected, what))
                except SftpError as error:
                    results.append(error)
        finally:
            for request_id, _, _ in sent[len(results):]:
                self.discard(request_id)
        return results

    def in_one_flight(self, calls: list[Call]) -> list[Reader | SftpError]:
        """Send the calls together: each one's answer or refusal, in order."""
        return self.answers(self.send_later(calls))

    def fsetstat_then_fstat(self, handle: bytes, attrs: Attrs) -> Attrs:
        """fsetstat, and the attributes it left, in one round trip."""
        return succeeded(self.in_one_flight([
            (FSETSTAT, pack_string(handle) + pack_attrs(attrs), STATUS, "fsetstat"),
            (FSTAT, pack_string(handle), ATTRS, "fstat")]))[1].attrs()

    def closing(self, handle: bytes, path: bytes, attrs: Attrs, mode: int) -> list[Call]:
        """An upload's last steps before its rename: the size and time set through its
        handle, its data made durable where the server can (fsync), its mode set at its
        path."""
        what = path.decode(errors="replace")
        return [(FSETSTAT, pack_string(handle) + pack_attrs(attrs), STATUS, what),
                *self.fsyncing(handle, what),
                (SETSTAT, pack_string(path) + pack_attrs(Attrs(mode=mode)), STATUS, what)]

    def fsyncing(self, handle: bytes, what: str) -> list[Call]:
        """For in_one_flight: the fsync of what the handle holds, where the server can."""
        if not self.has("fsync@openssh.com"):
            return []
        return [(EXTENDED, pack_string(b"fsync@openssh.com") + pack_string(handle), STATUS, what)]

    def opening_to_sync(self, path: bytes) -> list[Call]:
        """An open of a file or folder (OpenSSH's server opens a folder as it opens a file),
        for in_one_flight, whose handle serves syncing: none where the server cannot fsync."""
        if not self.has("fsync@openssh.com"):
            return []
        return [(OPEN, pack_string(path) + struct.pack(">I", O_READ) + pack_attrs(Attrs()),
                 HANDLE, path.decode(errors="replace"))]

    def syncing(self, opened: list[Reader | SftpError]) -> list[Call]:
        """For in_one_flight: the fsync of each file or folder opening_to_sync was answered
        with, which makes it durable as it is then (a folder: its entries, a rename into it
        among them), and its close."""
        calls: list[Call] = []
        for answer in opened:
            if not isinstance(answer, SftpError):
                handle = answer.string()
                calls += [*self.fsyncing(handle, "fsync"), (CLOSE, pack_string(handle), STATUS,
                                                            "close")]
        return calls

    def sync_paths(self, paths: list[bytes]) -> list[SftpError]:
        """Make each file or folder durable as `syncing` says, in two round trips; what the
        server refused."""
        opened = self.in_one_flight([call for path in paths for call in self.opening_to_sync(path)])
        synced = self.in_one_flight(self.syncing(opened))
        return [answer for answer in [*opened, *synced] if isinstance(answer, SftpError)]

    def looking(self, path: bytes, what: str) -> Call:
        """An lstat, for in_one_flight (see found)."""
        return (LSTAT, pack_string(path), ATTRS, what)

    def fsync(self, handle: bytes) -> None:
        succeeded(self.in_one_flight(self.fsyncing(handle, "fsync")))

    def remove(self, path: bytes) -> None:
        self._call(REMOVE, pack_string(path), STATUS, path.decode(errors="replace"))

    def rmdir(self, path: bytes) -> None:
        self._call(RMDIR, pack_string(path), STATUS, path.decode(errors="replace"))

    def mkdir(self, path: bytes, mode: int) -> None:
        self._call(MKDIR, pack_string(path) + pack_attrs(Attrs(mode=mode)), STATUS,
                   path.decode(errors="replace"))

    def rename(self, old: bytes, new: bytes) -> None:
        """SFTP's own RENAME, which never replaces."""
        self._call(*self.renaming(old, new, replace=False))

    def renaming(self, old: bytes, new: bytes, replace: bool) -> Call:
        """A rename; with `replace`, atomically over what is at `new`, with rename(2) on the
        server (posix-rename@openssh.com) where it has it."""
        what = new.decode(errors="replace")
        if replace and self.has("posix-rename@openssh.com"):
            return (EXTENDED, pack_string(b"posix-rename@openssh.com") + pack_string(old)
                    + pack_string(new), STATUS, what)
        return (RENAME, pack_string(old) + pack_string(new), STATUS, what)

    def readlink(self, path: bytes) -> bytes:
        return self.named(self.request(READLINK, pack_string(path)), path.decode(errors="replace"))

    def named(self, request_id: int, what: str) -> bytes:
        """The one name a READLINK (the link's target) or a REALPATH (the path resolved)
        was answered with."""
        reader = self.check(request_id, NAME, what)
        reader.u32()
        return reader.string()

    def symlink(self, target: bytes, path: bytes) -> None:
        # OpenSSH takes the target first, against the draft's order; so does every server
        # that follows it
        self._call(SYMLINK, pack_string(target) + pack_string(path), STATUS,
                   path.decode(errors="replace"))

    def names(self, request_id: int, what: str) -> list[tuple[bytes, Attrs]] | None:
        """The entries a READDIR was answered with (but . and ..), or None at the folder's
        end."""
        answer = self.name_answer(request_id, what)
        return None if answer is None else decode_names(answer)

    def batches(self, folder: bytes) -> Generator[list[tuple[bytes, Attrs]], None, None]:
        """The entries of `folder` (but . and ..), in the batches the server answers with;
        its handle is closed once they are read, or given up."""
        what = folder.decode(errors="replace")
        handle = self.check(self.request(OPENDIR, pack_string(folder)), HANDLE, what).string()
        try:
            while (names := self.names(self.request(READDIR, pack_string(handle)), what)) \
                    is not None:
                yield names
        finally:
            self.close_handle(handle)

    def name_answer(self, request_id: int, what: str) -> memoryview | None:
        """A READDIR's answer as the server sent it (what `decode_names` decodes), or None at the
        folder's end."""
        kind, reader = self.response(request_id)
        if kind == STATUS:
            code = reader.u32()
            if code == EOF:
                return None
            raise refusal(code, reader.string().decode("utf-8", "replace"), what)
        if kind != NAME:
            raise ConnectionLost(f"{what}: unexpected answer (type {kind})")
        return reader.data[reader.pos:]

    # bulk data

    def read(self, handle: bytes, offset: int, size: int) -> tuple[bytes, Attrs]:
        """`size` bytes from `offset`, fewer only at the end of the file, and the file's
        attributes as they were when read: an FSTAT sent after every READ, pipelined with
        them (a server answers requests on one handle as if one at a time, in order)."""
        parts: dict[int, bytes] = {}
        todo: deque[tuple[int, int]] = deque()
        position, end = offset, offset + size
        while position < end:
            length = min(self.read_limit, end - position)
            todo.append((position, length))
            position += length
        flying: deque[tuple[int, int, int]] = deque()  # (id, offset, length); length 0: FSTAT
        eof_at = end
        attrs = Attrs()
        unchecked = True  # an FSTAT is owed: none was sent since the last READ
        try:
            while todo or flying or unchecked:
                while todo and len(flying) < WINDOW:
                    at, length = todo.popleft()
                    if at >= eof_at:
                        continue
                    flying.append((self.request(READ, pack_string(handle)
                                                + struct.pack(">QI", at, length)), at, length))
                    unchecked = True
                if not todo and unchecked:
                    flying.append((self.request(FSTAT, pack_string(handle)), 0, 0))
                    unchecked = False
                if not flying:
                    break
                request_id, at, length = flying.popleft()
                if not length:
                    attrs = self.check(request_id, ATTRS, "fstat").attrs()
                    continue
                data = self.check(request_id, DATA, "read").string()
                if not data:
                    eof_at = min(eof_at, at)
                    continue
                parts[at] = data
                if len(data) < length:  # a short read: ask again for the rest
                    todo.appendleft((at + len(data), length - len(data)))
        finally:
            for request_id, _, _ in flying:
                self.discard(request_id)
        out = bytearray()
        for at in sorted(parts):
            if at != offset + len(out) or at >= eof_at:
                break
            out += parts[at]
        return bytes(out[:max(0, eof_at - offset)]), attrs

    def write_requests(self, handle: bytes, offset: int, data: bytes | memoryview) -> list[int]:
        """Send the writes of `data` at `offset` without waiting; the ids to `check`."""
        view = memoryview(data)
        ids = []
        prefix = pack_string(handle)
        for start in range(0, len(view), self.write_limit):
            piece = view[start:start + self.write_limit]
            ids.append(self.request(WRITE, prefix + struct.pack(">QI", offset + start, len(piece)),
                                    piece))
        return ids

    def free_bytes(self, handle: bytes) -> int | None:
        """What the file system holding an open file has free for the server's user
        (fstatvfs@openssh.com); None where the server does not say."""
        if not self.has("fstatvfs@openssh.com"):
            return None
        found = FileSystem.read(self._call(
            EXTENDED, pack_string(b"fstatvfs@openssh.com") + pack_string(handle),
            EXTENDED_REPLY, "fstatvfs"))
        return found.blocks_available * found.fragment_size

    def write(self, handle: bytes, offset: int, data: bytes | memoryview) -> None:
        for request_id in self.write_requests(handle, offset, data):
            self.check(request_id, STATUS, "write")


class FileSystem(NamedTuple):
    """What a statvfs@openssh.com or fstatvfs@openssh.com was answered with."""

    block_size: int  # f_bsize
    fragment_size: int  # f_frsize, the unit of the counts
    blocks: int
    blocks_free: int  # with what only root may take
    blocks_available: int  # for the server's user
    inodes: int
    inodes_free: int
    inodes_available: int
    fsid: int
    flags: int  # ST_RDONLY (1), ST_NOSUID (2)
    name_max: int

    @classmethod
    def read(cls, reply: Reader) -> FileSystem:
        return cls(*(reply.u64() for _ in range(11)))

    @property
    def read_only(self) -> bool:
        return bool(self.flags & ST_RDONLY)


def succeeded(results: list[Reader | SftpError]) -> list[Reader]:
    """The answers of in_one_flight, or the first refusal raised."""
    for result in results:
        if isinstance(result, SftpError):
            raise result
    return [result for result in results if isinstance(result, Reader)]


def found(answer: Reader | SftpError) -> Attrs | None:
    """The attributes an lstat was answered with; None where nothing is there."""
    if isinstance(answer, SftpError):
        if answer.errno == errno.ENOENT:
            return None
        raise answer
    return answer.attrs()


def decode_names(answer: memoryview) -> list[tuple[bytes, Attrs]]:
    """The names and attributes in a READDIR's answer (but . and ..)."""
    reader = Reader(answer)
    found = []
    for _ in range(reader.u32()):
        name = reader.string()
        reader.view()  # the long name, as ls -l would print it
        attrs = reader.attrs()
        if name not in (b".", b".."):
            found.append((name, attrs))
    return found
