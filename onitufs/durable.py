"""A rename that survives a power loss: the new name's folder is synced after it (the
file's own content must be synced before); and a small file replaced so."""

from __future__ import annotations

import os
from pathlib import Path


def replace(source: Path, target: Path) -> None:
    """Rename source over target, in the same folder, and make the rename durable."""
    os.replace(source, target)
    sync_folder(target.parent)


def sync_folder(folder: Path | str) -> None:
    """Make what changed in `folder`'s entries (a rename into it, a file made) durable."""
    _sync(folder, os.O_DIRECTORY)


def sync_file(path: Path | str) -> None:
    """Make a file's or a folder's content and attributes as they are now durable. A lease
    another program holds on the file (Samba's, for an oplock) fails the open with
    BlockingIOError rather than holding it until the lease is broken."""
    _sync(path, os.O_NONBLOCK)


def _sync(path: Path | str, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomically(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace the file with `data`, durably: a crash leaves the old content or the new."""
    temp = path.with_name(f".{path.name}.new")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    replace(temp, path)
