"""How much more the cache can take: its disk's free space and the pages LMDB freed inside
its file.

A commit that finds the disk full fails whole (LMDB says "Input/output error"), so a
write that would leave less than RESERVE is refused with ENOSPC before it is taken,
as a local filesystem would, rather than taken and then failing at the commit.
"""

from __future__ import annotations

import contextlib
import os
import time

import lmdb

from . import syncpoint
from .index import Index

RESERVE = 8 * 1024**2  # for the index's own pages, the log, and LMDB's bookkeeping
FRESH = 0.25  # seconds a measurement is used for


class CacheSpace:
    def __init__(self, index: Index, folder: str) -> None:
        self.index = index
        self.folder = folder
        self._budget = 0  # bytes that could be taken at the last measurement
        self._taken = 0  # bytes taken since
        self._at = -FRESH

    def room_for(self, size: int, pending: int) -> bool:
        """Whether `size` more bytes fit, `pending` bytes being written but not stored yet;
        if so they are counted as taken."""
        if time.monotonic() - self._at > FRESH or self._taken + size > self._budget:
            self._measure(pending)
        if self._taken + size > self._budget:
            return False
        self._taken += size
        return True

    def missing(self, size: int, pending: int) -> int:
        """How many bytes short of room for `size` more the disk is now (0: none)."""
        self._measure(pending)
        return max(0, size - self._budget)

    def full(self) -> bool:
        """Whether the cache's disk has run out of room (a failed commit's likely cause)."""
        self._measure(0)
        return self._budget <= 0

    def explains(self, error: lmdb.Error) -> bool:
        """Whether a failed commit is the disk's being full: LMDB says so, or says only
        "Input/output error" (the disk took part of its pages) on a disk with no room."""
        return "No space left" in str(error) or self.full()

    def forget(self) -> None:
        """Measure again before the next write (space was freed)."""
        self._at = -FRESH

    def _measure(self, pending: int) -> None:
        disk = os.statvfs(self.folder)
        room = disk.f_bavail * disk.f_frsize - 2 * pending - RESERVE
        # While the index holds its last sync's pages (syncpoint.py), LMDB reuses none of
        # what it freed since: only the disk's room counts. A disk short of room has the
        # index let go of them: then LMDB reuses a freed page once later transactions
        # have committed, and copies every page it changes: half of what it freed, twice
        # what is pending.
        holding = room >= syncpoint.LOW_ROOM
        with contextlib.suppress(OSError):  # a disk that cannot take that either: measured
            self.index.hold_sync_points(holding)
        self._budget = room + (0 if holding else self._free_inside() // 2)
        self._taken = 0
        self._at = time.monotonic()

    def _free_inside(self) -> int:
        """Pages of data.mdb that hold nothing now: LMDB reuses them before growing it."""
        env = self.index.env
        return max(0, (env.info()["last_pgno"] + 1) * env.stat()["psize"]
                   - self.index.bytes_in_use())
