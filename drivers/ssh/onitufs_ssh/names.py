"""How the mount's paths are stored on the server: a name its disk refuses, under its escape.

A server whose folder is on exFAT or FAT (a USB disk on it, a Windows machine) refuses
" * : < > ? \\ | and control characters in a name (onitufs.storednames.disk_refusable):
OpenSSH's server answers that the file is not there (exfat-fuse's ENOENT) or that the
request is bad (the kernel's EINVAL). As the local driver does (onitufs_local.disknames),
the server is asked once whether it refuses such names, the first time one is to be
made, by making an empty hidden file of such a name in the root; such a server gets those
names under their escape (onitufs.storednames.escape), every other one as they are, and
either is found where it is. A name that reads as such an escape is escaped again
everywhere. Every other name is stored as it is, at no cost: only a name the disk may
refuse costs a round trip (the two forms looked at at once).
"""

from __future__ import annotations

import errno
import stat

from onitufs.plug import TEMP_SUFFIX
from onitufs.storednames import disk_escaped, disk_refusable, escape

from .connect import Connection
from .listing import encode
from .sftp import O_CREAT, O_EXCL, O_WRITE, Attrs, Reader, SftpError, found

NAME_MAX = 255  # bytes, on every disk a server has
PROBE = encode(f".onitufs-probe:{TEMP_SUFFIX}")
REFUSALS = (errno.ENOENT, errno.EINVAL)  # what a server answers for a name its disk refuses


def asks_server(path: str) -> bool:
    """Whether where `path` is stored depends on what the server holds or refuses."""
    return any(disk_refusable(name) for name in path.split("/"))


def looked_at(answer: Reader | SftpError) -> Attrs | None:
    """found(), with a name the disk refuses taken for one not there."""
    if isinstance(answer, SftpError) and answer.errno in REFUSALS:
        return None
    return found(answer)


class ServerNames:
    """Thread-safe: one answer is kept, and two threads asking at once make the same."""

    def __init__(self) -> None:
        self._refuses: bool | None = None  # None: not known yet

    def refuses(self, conn: Connection, root: bytes) -> bool:
        """Whether the server's disk refuses the names disk_refusable() names; not kept
        where it could not tell (read-only, full)."""
        if self._refuses is None:
            sftp, probe = conn.sftp, root + b"/" + PROBE
            try:
                sftp.close_handle(sftp.open(probe, O_WRITE | O_CREAT | O_EXCL))
            except SftpError as error:
                if looked_at(sftp.in_one_flight([sftp.looking(probe, "probe")])[0]) is None:
                    if error.errno in REFUSALS and stat.S_ISDIR(sftp.lstat(root).mode or 0):
                        self._refuses = True
                    return bool(self._refuses)
                # (left by a crash, or made by another thread now): it holds the name
            try:
                sftp.remove(probe)
            except SftpError as error:
                if error.errno != errno.ENOENT:
                    raise
            self._refuses = False
        return self._refuses

    def path(self, conn: Connection | None, root: bytes, path: str, making: bool = True
             ) -> str:
        """Where the mount's `path` is stored, relative to the root; `conn` may be None
        where asks_server() says no. `making`: where it is not there yet, where it is
        to be made (the server may be asked whether it refuses the name); else only
        where to look."""
        stored: list[str] = []
        for name in path.split("/"):
            if disk_escaped(name) is not None:
                name = escape(name)  # (too long for the disk: making it fails, and says so)
            elif disk_refusable(name):
                assert conn is not None, "asks_server() says it needs the server"
                name = self._either(conn, root, "/".join(stored), name, making)
            stored.append(name)
        return "/".join(stored)

    def _either(self, conn: Connection, root: bytes, folder: str, name: str, making: bool
                ) -> str:
        """A name the disk may refuse: as it is or as its escape, whichever is there (a
        server written by a mount that found it refusing may have been copied to one
        that is not); where neither is, as this server needs."""
        escaped = escape(name)
        if len(encode(escaped)) > NAME_MAX:
            return name  # making it fails, and says so
        at = root + b"/" + encode(folder) if folder else root
        sftp = conn.sftp
        plain, other = sftp.in_one_flight([sftp.looking(at + b"/" + encode(name), name),
                                           sftp.looking(at + b"/" + encode(escaped), escaped)])
        if looked_at(plain) is not None:
            return name
        if looked_at(other) is not None or (making and self.refuses(conn, root)):
            return escaped
        return name
