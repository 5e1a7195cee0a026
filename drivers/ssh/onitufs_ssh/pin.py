"""The file system an SSH remote's changes go to: the one that held the remote's marker.

The server's folder may be a disk mounted there. Unplugged, it leaves its empty mount
point at the path, and a change the core asks just after (it reads the marker again only
when its last look is a second old) would land in it: recorded as made on the remote, it
would read as deleted once the disk is back, and the delete would travel.

So the driver pins the file system the root path leads to, as the local driver pins its
root folder (onitufs_local/pin.py), and after each change that makes or deletes an entry
makes sure the path still leads there. SFTP gives no inode numbers: the file system's id
(f_fsid, through OpenSSH's statvfs@openssh.com) stands for the folder. That tells a disk from
the folder it is mounted on; a folder swapped for another on the same file system is the
core's to find, by the marker. A server without the extension is not looked at.

A path that leads to another file system is taken only if the folder there holds a marker:
the same one (the disk plugged in again, whose id may be new), or any where none was pinned
(a disk absent when the remote started). Once onitufs knows the remote's marker
(Plug.marked), a folder without one is never taken, the one pinned included: a remote whose
first change came while its disk was away pinned the empty mount point. Only the marker's own
upload may go to such a folder, one that holds something: the core writes it again where a
person deleted it, having found there what the remote held, which an empty mount point never
holds. The marker's upload is looked at like any change: a disk that could not be marked
(read-only), then unplugged, must not have it written into its mount point. SFTP cannot hold
a folder open to read it: what is read of the folder counts only where the path led to one
file system before and after the read.
"""

from __future__ import annotations

import contextlib
import errno
import threading
from collections.abc import Callable
from typing import TypeVar

from onitufs.plug import MARKER, MARKER_MAX, TEMP_SUFFIX, RemoteUnavailable

from .connect import Connection
from .sftp import (
    EXTENDED,
    EXTENDED_REPLY,
    O_READ,
    Call,
    FileSystem,
    Reader,
    SftpError,
    pack_string,
)

STATVFS = "statvfs@openssh.com"
T = TypeVar("T")


class Pin:
    """The file system changes go to, and the marker its folder held; thread-safe."""

    def __init__(self, root: Callable[[Connection], bytes], marked: Callable[[], bool]) -> None:
        self.root = root
        self._marked = marked  # whether onitufs knows the remote's marker (Plug.marked)
        self._lock = threading.Lock()
        self._file_system: int | None = None
        self._marker: bytes | None = None

    def look(self, conn: Connection) -> list[Call]:
        """The request that looks where the root path leads, to send right after a change
        (in its flight: no round trip of its own); none where the server cannot say."""
        if not conn.sftp.has(STATVFS):
            return []
        return [(EXTENDED, pack_string(STATVFS.encode()) + pack_string(self.root(conn)),
                 EXTENDED_REPLY, "statvfs")]

    def confirm(self, conn: Connection, answers: list[Reader | SftpError] | None = None,
                for_marker: bool = False) -> None:
        """After a change (`for_marker`: the marker's own upload): RemoteUnavailable unless
        the root path still leads to the pinned file system, or to one that may be pinned
        instead (the first call pins it). `answers`: what look()'s request was answered,
        where it went with the change."""
        if answers is None:
            answers = conn.sftp.in_one_flight(self.look(conn))
        if not answers:
            return
        file_system = self._file_system_in(conn, answers[0])
        with self._lock:
            if file_system == self._file_system and self._marker is not None:
                return  # every change: one look in the change's flight, no read
        marker = self._read_on(conn, file_system, self._read_marker)
        if marker is None and self._marked():
            if for_marker and self._read_on(conn, file_system, self._holds_something):
                with self._lock:
                    self._file_system, self._marker = file_system, None  # (marker_written)
                return
            # (the mount point of a disk absent at the remote's first change, pinned then)
            raise RemoteUnavailable(f"{self.root(conn).decode(errors='replace')} holds no "
                                    f"marker {MARKER}, and the remote has one (unmounted disk?)")
        with self._lock:
            if self._file_system is None or file_system == self._file_system:
                self._file_system, self._marker = file_system, marker
                return
            if marker is None or (self._marker is not None and marker != self._marker):
                raise RemoteUnavailable(
                    f"{self.root(conn).decode(errors='replace')} is no longer on the file "
                    f"system that held this remote's marker {MARKER} (unmounted disk?)")
            self._file_system, self._marker = file_system, marker

    def marker_written(self, conn: Connection) -> None:
        """The core wrote the marker: the file system it went to is the remote's."""
        answers = conn.sftp.in_one_flight(self.look(conn))
        if answers:
            file_system = self._file_system_in(conn, answers[0])
            marker = self._read_on(conn, file_system, self._read_marker)
            with self._lock:
                self._file_system, self._marker = file_system, marker

    def _file_system_in(self, conn: Connection, answer: Reader | SftpError) -> int:
        """The file system id a statvfs@openssh.com was answered with."""
        if isinstance(answer, SftpError):
            if answer.errno == errno.ENOENT:
                raise RemoteUnavailable(f"{self.root(conn).decode(errors='replace')} is "
                                        "missing (unmounted disk?)")
            raise answer
        return FileSystem.read(answer).fsid

    def _read_on(self, conn: Connection, file_system: int, read: Callable[[Connection], T]) -> T:
        """What `read` reads of the folder on `file_system`, where the root led just before:
        read by path, so the root must still lead there after the read (else a disk plugged
        in between would have the empty mount point pinned with the disk's marker)."""
        found = read(conn)
        if self._file_system_in(conn, conn.sftp.in_one_flight(self.look(conn))[0]) \
                != file_system:
            raise RemoteUnavailable(f"{self.root(conn).decode(errors='replace')} changed "
                                    "while it was looked at (a disk plugged in or unplugged?)")
        return found

    def _holds_something(self, conn: Connection) -> bool:
        """Whether the root folder holds an entry besides uploads' temp files."""
        with contextlib.closing(conn.sftp.batches(self.root(conn))) as batches:
            return any(not name.endswith(TEMP_SUFFIX.encode())
                       for batch in batches for name, _ in batch)

    def _read_marker(self, conn: Connection) -> bytes | None:
        sftp = conn.sftp
        try:
            handle = sftp.open(self.root(conn) + b"/" + MARKER.encode(), O_READ)
        except SftpError as error:
            if error.errno in (errno.ENOENT, errno.EACCES):
                return None
            raise
        try:
            return sftp.read(handle, 0, MARKER_MAX)[0]
        finally:
            sftp.close_handle(handle)
