"""The index as its last sync left it, kept whole so that a power loss cannot damage it.

The index commits without syncing (index.py): a commit outlives a crash of this process
at once, from the kernel's page cache, and a power loss once it is synced (fsync(2), and
every few seconds). But LMDB hands out again the pages a commit frees two commits later,
and the kernel writes dirty pages back in an order and at times of its own: after a power
loss the disk may hold the last sync's meta page pointing into pages later commits
overwrote, or a later meta page pointing into pages never written. LMDB's own words for
running so (MDB_NOSYNC): "a system crash can corrupt the database". The index would then
be refused as damaged, and what only the cache held (written and fsynced, not uploaded
yet) lost with it.

So each sync is a point to go back to. A read transaction held open on it (the index's)
keeps LMDB from reusing its pages until the next, and its meta page is saved here, beside
the file, with the id of the boot it was saved in, before that hold moves on. Opened in
another boot with a point saved (the system went down with the index open: a clean stop
leaves its own last state as the point), the file gets the point's meta page back in both
of its slots: LMDB then reads the index as it was at that sync, every page of it as
synced. After a crash of this process alone the page cache held every commit, and the
file is used as it is.

The file holds two slots, written in turn, each whole or refused by its checksum: a power
loss while one is written leaves the other, whose pages the hold still kept.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from . import durable, lmdbcheck

NAME = "synced"  # beside data.mdb
BOOT_ID = Path("/proc/sys/kernel/random/boot_id")
SLOT = 512  # one sector: a slot is written whole or not at all on most disks
MAGIC = b"onitufs1"
_HEAD = struct.Struct("<8sQ16s")  # magic, data.mdb's inode number, boot
_CHECKSUM = 32
# Held pages cannot be reused until the next sync, and the file grows past them: a disk
# with less room than this lets LMDB reuse every page it freed, and holds no point.
LOW_ROOM = 64 * 1024**2


def room_to_hold(folder: Path) -> bool:
    """Whether the disk of `folder` has room for pages held (LOW_ROOM): an index on a disk
    short of room holds no point."""
    disk = os.statvfs(folder)
    return disk.f_bavail * disk.f_frsize >= LOW_ROOM


@functools.cache  # (read once per process, not at every sync: it cannot change)
def boot_id() -> bytes:
    """This boot's id (16 bytes, whatever the kernel's text of it); the same for every
    process until the system starts again."""
    return hashlib.sha256(BOOT_ID.read_bytes().strip()).digest()[:16]


@dataclass(frozen=True)
class Point:
    # data.mdb's inode number; not its device, whose number may change from one boot to
    # the next
    inode: int
    boot: bytes
    meta: bytes  # the meta page's record, as lmdbcheck.read_metas reads it

    @property
    def txnid(self) -> int:
        return lmdbcheck.meta_txnid(self.meta)

    def pack(self) -> bytes:
        body = _HEAD.pack(MAGIC, self.inode, self.boot) + self.meta
        return (body + hashlib.sha256(body).digest()).ljust(SLOT, b"\0")

    @classmethod
    def unpack(cls, raw: bytes) -> Point | None:
        """The point a slot holds; None for an empty, torn or foreign one."""
        size = _HEAD.size + lmdbcheck.META_SIZE
        body = raw[:size]
        if len(raw) < size + _CHECKSUM or hashlib.sha256(body).digest() != \
                raw[size:size + _CHECKSUM]:
            return None
        magic, inode, boot = _HEAD.unpack_from(body)
        if magic != MAGIC:
            return None
        return cls(inode, boot, body[_HEAD.size:])


class SyncPoints:
    """The saved points of the index file `data_file`."""

    def __init__(self, data_file: Path) -> None:
        self.data_file = data_file
        self.path = data_file.with_name(NAME)
        self._slot = 0  # where the next point goes (see restore)
        # Both files stay open from `open` on: a disk taken away under a lazy unmount
        # leaves the names gone, and the files as they were.
        self._data: int | None = None
        self._file: int | None = None

    def _points(self) -> list[Point | None]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return [None, None]
        return [Point.unpack(raw[slot * SLOT:(slot + 1) * SLOT]) for slot in (0, 1)]

    def restore(self) -> int | None:
        """Put the last point back into the file if the system went down since it was
        saved (see the module's docstring); the transaction it goes back to, or None.
        Called first."""
        points = self._points()
        # the next point goes over the older one, or an empty slot
        self._slot = 0 if points[0] is None else 1 if points[1] is None else \
            int(points[1].txnid < points[0].txnid)
        found = [point for point in points if point is not None]
        if not found:
            return None
        point = max(found, key=lambda point: point.txnid)
        if point.boot == boot_id():
            return None
        with contextlib.suppress(FileNotFoundError):
            fd = os.open(self.data_file, os.O_RDWR)
            try:
                if os.fstat(fd).st_ino != point.inode:
                    return None  # another file took its name (a copy, an index made anew)
                try:
                    read = lmdbcheck.read_metas(fd)
                except lmdbcheck.Damage:
                    read = None  # a meta page the power loss left half written
                else:
                    if read is None:
                        return None  # LMDB 1.0's layout: never saved so
                    newest = max(read[1], key=lmdbcheck.meta_txnid)
                    if lmdbcheck.meta_txnid(newest) < point.txnid:
                        return None  # older than the point, which was on the disk
                    if lmdbcheck.as_meta_page(newest, 0) == \
                            lmdbcheck.as_meta_page(point.meta, 0):
                        return None  # the point is what LMDB reads (a clean stop's last)
                psize = lmdbcheck.page_size(point.meta)
                for number in (0, 1):
                    os.pwrite(fd, lmdbcheck.as_meta_page(point.meta, number), number * psize)
                os.fsync(fd)
            finally:
                os.close(fd)
            return point.txnid
        return None

    def open(self) -> None:
        """Open the index file, which LMDB made if it was not there, for the points."""
        self._data = os.open(self.data_file, os.O_RDONLY)

    def save(self, txnid: int) -> bool:
        """Save transaction `txnid`, synced and held, as the point to go back to; False
        when its meta page is no longer in the file (later commits took its slot)."""
        assert self._data is not None
        read = lmdbcheck.read_metas(self._data)
        metas = [meta for meta in (read[1] if read is not None else [])
                 if lmdbcheck.meta_txnid(meta) == txnid]
        if not metas:
            return False
        point = Point(os.fstat(self._data).st_ino, boot_id(), metas[0])
        if self._file is None:
            made = not self.path.exists()
            self._file = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o600)
            if made:  # its room taken now: a full disk later cannot refuse a slot
                os.posix_fallocate(self._file, 0, 2 * SLOT)
                durable.sync_folder(self.path.parent)
        os.pwrite(self._file, point.pack(), self._slot * SLOT)
        os.fdatasync(self._file)
        self._slot ^= 1
        return True

    def forget(self) -> None:
        """Make every point saved void, for good: the pages they name are no longer held."""
        if self._file is None:
            if not self.path.exists():
                return
            self._file = os.open(self.path, os.O_RDWR)
        os.pwrite(self._file, bytes(2 * SLOT), 0)
        os.fdatasync(self._file)
        self._slot = 0

    def discard(self) -> None:
        """Forget every point, for good (before another file takes data.mdb's name)."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
            durable.sync_folder(self.path.parent)
        self._slot = 0

    def close(self) -> None:
        for fd in (self._data, self._file):
            if fd is not None:
                os.close(fd)
        self._data = self._file = None
