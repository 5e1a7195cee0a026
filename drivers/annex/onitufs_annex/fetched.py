"""Content of the remote on local disk: what was retrieved to serve reads, and what was
just stored there.

A special remote hands out whole keys, so the first read of a revision
retrieves its key into a file here, checked against the key (size and
SHA-256), and every read of it is served from that file. What an upload
stored is kept too, so reading it back costs nothing. The folder holds at
most `budget` bytes: the files used longest ago go first (the one in use
always stays).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from onitufs.gitannex.keys import parse_key
from onitufs.plug import DriverError

BUDGET = 1 << 30


def check_content(key: str, path: Path) -> None:
    """DriverError unless the file is what the key names (its size, its SHA-256)."""
    parsed = parse_key(key)
    size = path.stat().st_size
    if parsed.size is not None and size != parsed.size:
        raise DriverError(f"{key}: the remote gave {size} bytes, not {parsed.size}")
    if parsed.backend in ("SHA256", "SHA256E"):
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
        if not parsed.name.startswith(digest.hexdigest()):
            raise DriverError(f"{key}: what the remote gave has another SHA-256")


class Fetched:
    def __init__(self, folder: Path, retrieve: Callable[[str, str | None, Path, int], None],
                 budget: int = BUDGET) -> None:
        self.folder = folder
        self.budget = budget
        self._retrieve = retrieve
        self._lock = threading.Lock()
        self._kept: OrderedDict[str, int] = OrderedDict()  # key -> size, used longest ago first
        self._getting: dict[str, threading.Lock] = {}
        folder.mkdir(mode=0o700, exist_ok=True)
        for stale in folder.iterdir():  # from another mount: nothing says what they are
            stale.unlink()

    def path(self, key: str) -> Path:
        return self.folder / hashlib.sha256(key.encode()).hexdigest()[:40]

    def read(self, key: str, offset: int, size: int, where: str | None = None) -> bytes:
        """Bytes of the key's content, retrieved first if they are not here (from the file
        at `where` on a remote that exports)."""
        for _ in range(3):  # evicted between finding and opening it: retrieved again
            path = self.get(key, where)
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)
        raise DriverError(f"{key}: retrieved, then gone from {self.folder} at once")

    def get(self, key: str, where: str | None = None) -> Path:
        """The file of the key's content, retrieved and checked once by one caller."""
        path = self.path(key)
        with self._lock:
            if key in self._kept:
                self._kept.move_to_end(key)
                return path
            getting = self._getting.setdefault(key, threading.Lock())
        with getting:
            with self._lock:
                if key in self._kept:
                    return path
            part = path.with_name(path.name + ".part")
            with contextlib.suppress(FileNotFoundError):
                part.unlink()
            try:
                self._retrieve(key, where, part, parse_key(key).size or 0)
                check_content(key, part)
                part.rename(path)
                self._keep(key, path)
            except BaseException:
                with contextlib.suppress(FileNotFoundError):
                    part.unlink()
                raise
            finally:
                with self._lock:
                    self._getting.pop(key, None)
        return path

    def adopt(self, key: str, file: Path) -> None:
        """Keep a file that holds the key's content (an upload just stored)."""
        file.rename(self.path(key))
        self._keep(key, self.path(key))

    def _keep(self, key: str, path: Path) -> None:
        with self._lock:
            self._kept[key] = path.stat().st_size
            self._kept.move_to_end(key)
            while sum(self._kept.values()) > self.budget and len(self._kept) > 1:
                old, _ = self._kept.popitem(last=False)
                with contextlib.suppress(FileNotFoundError):
                    self.path(old).unlink()
