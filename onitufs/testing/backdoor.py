"""The remote reached directly, behind onitufs's back, for the conformance suite.

A driver's test gives the suite a Backdoor: what it can do to the remote
without the driver (write, rename, delete, read a file there, make the
remote unreachable, fill its disk). Each method it does not override makes
the tests that need it skip, saying which capability is missing: a remote
that has no modes, say, is not held to keep them. FolderBackdoor serves a
remote that is a folder on this machine (a local disk, or the folder an SSH
server on loopback serves).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from onitufs.plug import Kind


class Backdoor:
    """Acts on the remote directly. Paths are relative to the remote's root, '/'-separated,
    surrogate-escaped like Metadata.path; subclasses override what their remote allows."""

    def lacks(self, capability: str) -> NoReturn:
        pytest.skip(f"not applicable: this remote's backdoor cannot {capability}")

    def write(self, path: str, data: bytes) -> None:
        """Create the file, or replace its content."""
        self.lacks("write a file")

    def rewrite_in_place(self, path: str, data: bytes) -> None:
        """Write data, of the file's size, over its own bytes and put its modification time
        back (as touch -r does, or a restore)."""
        self.lacks("rewrite a file in place")

    def read(self, path: str) -> bytes:
        self.lacks("read a file")

    def kind(self, path: str) -> Kind | None:
        """What is at path ("file", "dir", "symlink"), or None for nothing."""
        self.lacks("tell what is at a path")

    def names(self, folder: str = "") -> set[str]:
        """Every name in the folder, upload temporary files and the marker included."""
        self.lacks("list a folder")

    def mkdir(self, path: str) -> None:
        self.lacks("make a folder")

    def remove(self, path: str) -> None:
        """Delete a file, a symbolic link or an empty folder."""
        self.lacks("delete a file")

    def rename(self, old: str, new: str) -> None:
        self.lacks("rename")

    def symlink(self, target: str, path: str) -> None:
        self.lacks("make a symbolic link")

    def readlink(self, path: str) -> str:
        self.lacks("read a symbolic link")

    def link_out(self, path: str) -> None:
        """Make `path` a symbolic link to a folder outside the remote that holds one file,
        `victim`, which reads b"outside"."""
        self.lacks("link to a folder outside the remote")

    def mode(self, path: str) -> int:
        """The permission bits."""
        self.lacks("read permission bits")

    def mtime_ns(self, path: str) -> int:
        self.lacks("read modification times")

    def xattrs(self, path: str) -> dict[str, bytes]:
        """The extended attributes of the user namespace."""
        self.lacks("read extended attributes")

    def unreachable(self) -> contextlib.AbstractContextManager[None]:
        """Within the block, the driver cannot reach the remote at all; after it, it can."""
        self.lacks("make the remote unreachable")

    def disk_full(self) -> contextlib.AbstractContextManager[None]:
        """Within the block, the remote's disk has no room left; after it, it has."""
        self.lacks("fill the remote's disk")


class FolderBackdoor(Backdoor):
    """A remote that is a folder on this machine. `ballast`, a path on the same file system
    outside the folder, is where disk_full puts a file that takes the room left."""

    def __init__(self, root: Path, ballast: Path | None = None) -> None:
        self.root = root
        self.ballast = ballast

    def at(self, path: str) -> Path:
        return self.root / path if path else self.root

    def write(self, path: str, data: bytes) -> None:
        self.at(path).write_bytes(data)

    def read(self, path: str) -> bytes:
        return self.at(path).read_bytes()

    def rewrite_in_place(self, path: str, data: bytes) -> None:
        where = self.at(path)
        before = os.lstat(where)
        time.sleep(0.05)  # past the tick of the kernel's clock its times were taken in
        with where.open("r+b") as file:
            file.write(data)
        os.utime(where, ns=(before.st_atime_ns, before.st_mtime_ns))

    def kind(self, path: str) -> Kind | None:
        try:
            mode = os.lstat(self.at(path)).st_mode
        except FileNotFoundError:
            return None
        return "dir" if stat.S_ISDIR(mode) else "symlink" if stat.S_ISLNK(mode) else "file"

    def names(self, folder: str = "") -> set[str]:
        return set(os.listdir(self.at(folder)))

    def mkdir(self, path: str) -> None:
        self.at(path).mkdir()

    def remove(self, path: str) -> None:
        if self.kind(path) == "dir":
            self.at(path).rmdir()
        else:
            self.at(path).unlink()

    def rename(self, old: str, new: str) -> None:
        self.at(old).rename(self.at(new))

    def symlink(self, target: str, path: str) -> None:
        os.symlink(target, self.at(path))

    def link_out(self, path: str) -> None:
        outside = self.root.with_name(self.root.name + ".outside")
        outside.mkdir(exist_ok=True)
        (outside / "victim").write_bytes(b"outside")
        os.symlink(outside, self.at(path))

    def readlink(self, path: str) -> str:
        return os.readlink(self.at(path))

    def mode(self, path: str) -> int:
        return stat.S_IMODE(os.lstat(self.at(path)).st_mode)

    def mtime_ns(self, path: str) -> int:
        return os.lstat(self.at(path)).st_mtime_ns

    def xattrs(self, path: str) -> dict[str, bytes]:
        where = self.at(path)
        return {name: os.getxattr(where, name, follow_symlinks=False)
                for name in os.listxattr(where, follow_symlinks=False)
                if name.startswith("user.")}

    @contextlib.contextmanager
    def disk_full(self) -> Iterator[None]:
        if self.ballast is None:
            self.lacks("fill the remote's disk (the folder's test gave no ballast path)")
        ballast = self.ballast
        fd = os.open(ballast, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for size in (1 << 20, 1 << 12):  # big writes, then the last pages
                block = bytes(size)
                try:
                    while True:
                        os.write(fd, block)
                except OSError as error:
                    if error.errno not in (errno.ENOSPC, errno.EDQUOT):
                        raise
            yield
        finally:
            os.close(fd)
            ballast.unlink()
