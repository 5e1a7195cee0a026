"""The index: one LMDB environment holding the tree and what each remote holds.

Named databases (one environment, so one transaction can change several):

- ``meta``      counters, the schema version, the clean-stop mark and what it vouches for
- ``inodes``    ino -> packed Inode (full POSIX attributes, content version, revision)
- ``dirents``   parent ino + name -> child ino
- ``parents``   child ino + parent ino + name -> b"" (the names of an inode, for paths)
- ``xattrs``    ino + name -> value
- ``remotes``   remote name -> remote id
- ``mirror``    remote id + ino -> JSON {path: {rev, token, fid, kind, ...}}: what the remote
                holds, with the SHA-256 of that content where onitufs knew it
- ``rpaths``    remote id + path's first 400 bytes + hash(path) -> ino + path: the same,
                looked up by path, and what is below a folder by its path's prefix
- ``todo``      remote id + ino -> due time: inodes that remote must be brought up to date on
- ``transfers`` remote id + ino -> JSON {rev, path, offset, extra}: uploads in flight
- ``hashes``    ino + block number -> revision + SHA-256 of that block of that revision
                (or UNREVISED: of the block as stored, content not yet a revision)
- ``blocks``    ino + block number -> SHA-256 of the content + content (owned by
                blockcache.py): a block that no longer matches its checksum is damaged

Inode records are decoded once and kept in an LRU, each as one object (one the LRU
drops while something still holds it is handed out again); attribute changes that
happen on every write are kept in memory and written with the next commit.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import functools
import hashlib
import json
import os
import stat
import struct
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeAlias

import lmdb
from sortedcontainers import SortedDict

from . import cleanstop, compaction, lmdbcheck, syncpoint
from .lru import LRU

SCHEMA_VERSION = 5
LOCK_FILE_BYTES = 64 * 1024  # LMDB's lock file: 1,022 readers' slots (it needs 16,512 for 256)
# Less free than this after a commit failed: the disk is full, whatever LMDB said.
FULL_DISK = 1024**2
RPATH_PREFIX = 400  # of a path's bytes, in its rpaths key (LMDB's keys hold up to 511)
ROOT_INO = 1
_Q = struct.Struct(">Q")
_I = struct.Struct(">I")
MIRROR_SUM = b"mirror_sum:"  # + remote id, in meta: see mark_clean_stop
SUM_MOD = 2**128
_INODE = struct.Struct("<IIIIQQqqqQQQI32s")
FLAG_COMPLETE = 1  # every block absent from the cache is a hole: nothing to fetch
FLAG_WRITE_FAILED = 2  # a write was refused (a full disk): no revision until rewritten
_DBS = ("meta", "inodes", "dirents", "parents", "xattrs", "remotes", "mirror", "rpaths",
        "todo", "transfers", "hashes", "blocks")
NO_HASH = b"\0" * 32
UNREVISED = (1 << 64) - 1  # no revision has this number
SEAL = 32  # the SHA-256 that leads every stored block
SAVE_TRIES = 20  # a sync's tries at saving its point while commits run beside it
HELD_LIMIT = 64 * 1024**2  # bytes of pages held for a sync point (the block cache sets it)


def _allocate_lock_file(lock: Path) -> None:
    """Give LMDB's lock file its disk space before LMDB opens it. LMDB maps the file and
    writes into it (its header, a reader's slot at each read transaction): a page of it not
    yet on the disk, first written once the disk is full, would kill the process (SIGBUS)
    instead of failing a call. LMDB keeps a file larger than it needs, with more slots.
    The whole file: a cache from an earlier version on a full disk is refused in one line
    until a few pages are free."""
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        # one an earlier version left (16,512 bytes) is kept at its size
        os.posix_fallocate(fd, 0, os.fstat(fd).st_size or LOCK_FILE_BYTES)
    finally:
        os.close(fd)


def _put_clean_mark(txn: lmdb.Transaction, meta: lmdb._Database) -> None:
    """The clean-stop mark: the number of its own transaction (see Index.mark_clean_stop)."""
    txn.put(b"clean_stop", q(txn.id()), db=meta)


class CacheError(Exception):
    """The index cannot be opened or is damaged."""


class CacheBusy(CacheError):
    """Another onitufs process uses this cache."""


def q(value: int) -> bytes:
    return _Q.pack(value)


Value = bytes | memoryview  # what lmdb returns, memoryview in a buffers=True transaction


def unq(data: Value) -> int:
    return int(_Q.unpack_from(data)[0])


def scan(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes,
         start: bytes = b"") -> Iterator[tuple[bytes, Value]]:
    """(key without the prefix, value) of every entry whose key starts with `prefix`,
    from `prefix + start` on, in key order."""
    cursor = txn.cursor(db=db)
    if not cursor.set_range(prefix + start):
        return
    for raw_key, value in cursor:
        key = bytes(raw_key)
        if not key.startswith(prefix):
            return
        yield key[len(prefix):], value


def keys(txn: lmdb.Transaction, db: lmdb._Database) -> list[bytes]:
    """Every key of a database, without reading a value."""
    return [bytes(key) for key in txn.cursor(db=db).iternext(values=False)]


def delete_range(txn: lmdb.Transaction, db: lmdb._Database, prefix: bytes,
                 start: bytes = b"") -> list[bytes]:
    """Delete every entry of `scan(txn, db, prefix, start)`; returns their keys (without prefix)."""
    keys = [key for key, _ in scan(txn, db, prefix, start)]
    for key in keys:
        txn.delete(prefix + key, db=db)
    return keys


def seal(content: bytes | bytearray | memoryview, digest: bytes | None = None) -> bytes:
    """A block as stored: its SHA-256 (given, or computed here), then its content."""
    return b"".join((digest or hashlib.sha256(content).digest(), content))  # one copy


def unseal(stored: Value) -> tuple[Value, bool]:
    """The content of a stored block and whether it still matches its SHA-256."""
    content = stored[SEAL:]
    return content, hashlib.sha256(content).digest() == bytes(stored[:SEAL])


def listed_digest(path: str, kind: str, token: str | None, fid: str | None,
                  changed: int | None) -> int:
    """A 128-bit fingerprint of a path as a remote lists it: the kind, and for a file the
    revision token, file id and changed_ns (a folder's token changes by itself). Added up (mod
    2**128), they make a fingerprint of a whole listing that two different listings share
    only by chance: see Index.matches_mirror."""
    fields = f"{len(path)}:{path}:{kind}" if kind == "dir" else \
        f"{len(path)}:{path}:{kind}:{token!r}:{fid!r}" + ("" if changed is None else f":{changed}")
    return int.from_bytes(hashlib.blake2b(fields.encode("utf-8", "surrogateescape"),
                                          digest_size=16).digest())


def encode_path(path: str) -> bytes:
    return os.fsencode(path)


def now_ns() -> int:
    return time.time_ns()


# An inode keeps its times as nanoseconds in signed 64-bit fields: 1677-09-21 to
# 2262-04-11. A time beyond (a file dated 2300 on a remote, `touch -d 2300-01-01` here)
# is kept as the nearest one it can hold, as the kernel clamps a time to what a file
# system holds.
TIME_NS_MIN, TIME_NS_MAX = -(2**63), 2**63 - 1


def clamped_ns(ns: int) -> int:
    """A time as an inode can keep it (see TIME_NS_MIN)."""
    return min(max(ns, TIME_NS_MIN), TIME_NS_MAX)


@dataclass(slots=True, weakref_slot=True)  # see Index._held
class Inode:
    ino: int
    mode: int
    uid: int
    gid: int
    nlink: int
    rdev: int = 0
    size: int = 0
    atime_ns: int = 0
    mtime_ns: int = 0
    ctime_ns: int = 0
    version: int = 0  # bumped by every change of content
    rev: int = 0  # the current revision of the content, 0 before the first
    rev_version: int = 0  # the content version that revision was made from
    flags: int = FLAG_COMPLETE
    sha256: bytes = NO_HASH  # of the current revision's content: from its writes, or an upload
    target: bytes = b""  # symlink target

    def pack(self) -> bytes:
        return _INODE.pack(self.mode, self.uid, self.gid, self.nlink, self.rdev, self.size,
                           self.atime_ns, self.mtime_ns, self.ctime_ns, self.version, self.rev,
                           self.rev_version, self.flags, self.sha256) + self.target

    @classmethod
    def unpack(cls, ino: int, data: Value) -> Inode:
        (mode, uid, gid, nlink, rdev, size, atime_ns, mtime_ns, ctime_ns, version, rev, rev_version,
         flags, sha256) = _INODE.unpack_from(data)
        return cls(ino, mode, uid, gid, nlink, rdev, size, atime_ns, mtime_ns, ctime_ns, version, rev,
                   rev_version, flags, sha256, bytes(data[_INODE.size:]))

    @property
    def is_dir(self) -> bool:
        return stat.S_ISDIR(self.mode)

    @property
    def is_reg(self) -> bool:
        return stat.S_ISREG(self.mode)

    @property
    def is_symlink(self) -> bool:
        return stat.S_ISLNK(self.mode)

    @property
    def complete(self) -> bool:
        return bool(self.flags & FLAG_COMPLETE)

    @property
    def dirty(self) -> bool:
        """Content changed since the last revision was made."""
        return self.version != self.rev_version

    def checksum_of(self, rev: int) -> bytes | None:
        """The SHA-256 of revision `rev` of the content, where that is the current one and
        its checksum is known."""
        return self.sha256 if rev == self.rev and not self.dirty and self.sha256 != NO_HASH \
            else None


_INODE_FIELDS = tuple(field.name for field in dataclasses.fields(Inode))


@dataclass(slots=True)
class MirrorEntry:
    """What one remote holds under one path for one inode."""

    rev: int
    token: str | None
    fid: str | None
    kind: str
    attrs: str | None = None  # Metadata.attrs_key() of the mode, time and xattrs it holds
    changed: int | None = None  # Metadata.changed_ns as it was last found, or set by onitufs
    # The token was recorded so soon after the file's time that a change within the same
    # tick of the remote's clock would leave it as it is: the content is checked once later.
    racy: bool = False
    # The SHA-256 (hex) of the content it holds, where known (onitufs uploaded it, or
    # compared it): a chmod there while a later revision of ours waits to go is told from
    # an edit that kept the size and time by this, ours being no longer that content.
    sha256: str | None = None
    # The permission bits a listing last found there, or the handler that made or changed
    # the copy read back; None where neither did (a record made before they were kept).
    # Where no change time tells a chmod made there (a folder's moves with every name made
    # in it; SFTP gives none), a listing that finds others than these is one (see
    # RemoteChanges._mode_found). What onitufs asked for is not taken for found: a disk
    # that keeps other bits than it is given (exFAT) would have its own spread.
    mode: int | None = None

    def moved(self, token: str | None, fid: str | None, changed: int | None) -> MirrorEntry:
        """The same content after the remote moved it, with the token, file id and change
        time the move left it (a rename sets a file's ctime); still to be checked if it was."""
        return dataclasses.replace(self, token=token, fid=fid, changed=changed)

    def to_json(self) -> dict[str, Any]:
        known = {name: value for name, value in (("sha256", self.sha256), ("mode", self.mode))
                 if value is not None}
        return {"rev": self.rev, "token": self.token, "fid": self.fid, "kind": self.kind,
                "attrs": self.attrs, "changed": self.changed, "racy": self.racy, **known}


# What a remote holds, by path: (ino, entry). Kept sorted, so that what is below a folder
# is one range of it.
Known: TypeAlias = "SortedDict[str, tuple[int, MirrorEntry]]"


def mirror_digest(path: str, entry: MirrorEntry) -> int:
    """listed_digest of what a remote is known to hold at `path`."""
    return listed_digest(path, entry.kind, entry.token, entry.fid, entry.changed)


@dataclass(slots=True)
class Transfer:
    rev: int
    path: str
    offset: int
    extra: dict[str, Any]


def write_failure(folder: Path | None, error: lmdb.Error) -> str:
    """Why a commit to the index in `folder` (on the disk of `folder`; None: not known)
    failed, in words for its user. A disk that took only part of a commit's pages makes
    LMDB say "Input/output error": with no room left on the disk after it, the disk is
    full, not failing."""
    said = str(error)
    if folder is not None and os.strerror(errno.EIO) in said:
        try:
            disk = os.statvfs(folder)
        except OSError:  # the disk itself gone: LMDB's words stand
            return said
        if disk.f_bavail * disk.f_frsize < FULL_DISK:
            return os.strerror(errno.ENOSPC)
    return said


def cannot_write(folder: Path | None, error: lmdb.Error) -> str:
    """What a failed commit to the index in `folder` is said as (see write_failure)."""
    return f"cannot write the index: {write_failure(folder, error)}"


def unwritable(folder: Path, error: lmdb.Error) -> CacheError:
    """The one line for a commit to the index in `folder` that failed before the mount
    came up (a new index, a crash's recovery: a full disk, mostly)."""
    return CacheError(f"{folder}: {cannot_write(folder, error)}")


class Index:
    """The LMDB environment and typed access to every database but the blocks."""

    def __init__(self, path: Path, map_size: int, block_size: int,
                 always_check: bool = False) -> None:
        """Open (or make) the index in the folder `path`. The structural check of its file
        is skipped when the file is as the last clean stop left it, unless always_check."""
        self.path = path
        try:
            path.mkdir(parents=True, exist_ok=True)
            self._lock = (path / "lock").open("a+")
        except OSError as error:
            raise CacheError(f"{path}: cannot make the cache there: {error.strerror}") from None
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.seek(0)
            raise CacheBusy(f"{path}: cache in use by another onitufs process "
                            f"(pid {self._lock.read().strip() or '?'})") from None
        try:
            self._lock.seek(0)
            self._lock.truncate()
            self._lock.write(str(os.getpid()))
            self._lock.flush()
        except OSError as error:
            with contextlib.suppress(OSError):  # what is buffered fails again, and it closes
                self._lock.close()
            raise CacheError(f"{path}: cannot write the cache's lock file: "
                             f"{error.strerror}") from None
        compaction.discard_leftover(path)
        self._map_size = map_size
        env = None
        self._points = syncpoint.SyncPoints(path / "data.mdb")
        try:
            try:
                # the transaction the index went back to, after the system went down
                self.restored = self._points.restore()
                # LMDB maps the file and trusts it: a file cut short or a page overwritten
                # would kill this process (SIGBUS, an assertion) at the first read of it.
                self.checked = always_check or self.restored is not None \
                    or not cleanstop.unchanged(path / "data.mdb")
                if self.checked:
                    lmdbcheck.check(path / "data.mdb")
                # sync=False: a commit survives a crash of this process at once, and a
                # power loss after sync(), which fsync and a timer call (see syncpoint.py).
                _allocate_lock_file(path / "lock.mdb")
                env = lmdb.open(str(path), map_size=map_size, max_dbs=len(_DBS), sync=False,
                                metasync=False, max_readers=256)
                self.db = {name: env.open_db(name.encode()) for name in _DBS}
                self._points.open()
            except (lmdbcheck.Damage, lmdb.CorruptedError, lmdb.InvalidError,
                    lmdb.PageNotFoundError) as error:
                raise CacheError(f"{path}: the index is damaged ({error}); move the folder aside "
                                 "and mount again: the tree and the content are rebuilt from the "
                                 "remotes") from None
            except lmdb.Error as error:
                raise CacheError(f"{path}: cannot open the index: "
                                 f"{write_failure(path, error)}") from None
            except OSError as error:
                raise CacheError(f"{path}: cannot open the index: {error.strerror}") from None
        except CacheError:
            if env is not None:
                env.close()
            self._points.close()
            self._lock.close()
            raise
        self.env = env
        self._page_size = int(env.stat()["psize"])  # (asked once: _file_end runs per commit)
        self._synced_txn = -1  # the last transaction made durable by sync()
        # A read transaction on that one: LMDB reuses no page of it until the next sync,
        # so a power loss always leaves it whole (see syncpoint.py).
        self._hold: lmdb.Transaction | None = None
        self._syncing = threading.Lock()  # a timer's sync runs on a thread of its own
        self._holding = True  # see hold_sync_points
        self.held_limit = HELD_LIMIT  # see sync_if_held_grew
        self._looked_at = 0  # where the file ended when sync_if_held_grew last looked
        self._free_at_hold = 0  # the file's free pages when the point was held, in bytes
        self._inodes: LRU[int, Inode] = LRU(maxsize=65536)
        # An inode dropped from the LRU while something still holds it (a write waiting
        # for a remote's blocks) stays the one get_inode hands out: a second object for
        # the same file would take changes the first never sees, and the first, written
        # back, would undo them. Weak references to those held only: a WeakValueDictionary
        # of every dropped inode cost 2.5 µs per inode decoded in a 100,000-file walk.
        self._held: dict[int, weakref.ref[Inode]] = {}
        self._dirty: dict[int, Inode] = {}
        # Each of those as it was when deferred: a failed write sets it back to that, its
        # own changes taken back and the deferred ones kept for the next commit.
        self._deferred_as: dict[int, bytes] = {}
        # The inodes the write transaction under way stores or deletes: if it fails, what
        # they hold never reached LMDB (see _back_to_stored).
        self._written: dict[int, Inode] = {}
        # remote id -> path -> (ino, entry): each remote's mirror, loaded on first use, so
        # that comparing a listing with it costs no decoding
        self._mirrors: dict[int, Known] = {}
        # remote id -> the paths of its mirror changed since each decode_mirror under way
        # began (see watch_mirror)
        self._watches: dict[int, list[set[str]]] = {}
        self._after_commit: list[Callable[[], None]] = []
        # What takes back, if the write under way fails, a change made in memory for it
        # (the block cache's buffers and bookkeeping), the last one first.
        self._undo: list[Callable[[], None]] = []
        # Read before anything is written: whether the index is as the last process left it
        # when it stopped cleanly (see mark_clean_stop).
        self.stopped_cleanly = self._mark_holds()
        # remote id -> the fingerprint of its mirror and how many racy entries it has, where
        # known: written at the last clean stop, kept up to date since (see matches_mirror)
        self._sums = self._mirror_sums() if self.stopped_cleanly else {}
        try:
            try:
                self._check_schema(block_size)
                # A disk short of room voids the last run's point too: this run may reuse
                # its pages.
                self.hold_sync_points(syncpoint.room_to_hold(path))
                self.sync()  # the state found, the first point to go back to
            except lmdb.Error as error:  # a full disk, for a new index
                raise unwritable(path, error) from None
            except OSError as error:
                raise CacheError(f"{path}: cannot sync the index: {error.strerror}") from None
        except CacheError:
            self._release_hold()
            self._points.close()
            env.close()
            self._lock.close()
            raise
        with self.begin() as txn:
            raw = txn.get(b"cache_id", db=self.db["meta"])
        # A random name for this cache: what it leaves on remotes that others share (temp
        # files of uploads) cannot be mistaken for another machine's.
        self.cache_id = bytes(raw).decode() if raw is not None else "0"

    def close(self) -> None:
        """Sync and close; then, the index as a clean stop left it, record the file for the
        next open (while the lock still keeps other onitufs processes out)."""
        try:
            clean = self._mark_holds()
        except lmdb.Error:
            clean = False
        self.sync()
        copy = None
        if clean:
            copy = compaction.compacted_copy(self.env, self.path, self.bytes_in_use,
                                             self._mark_copy)
        self._release_hold()
        self.env.close()
        if copy is not None:
            self._points.discard()  # they name pages of the file the copy replaces
            compaction.swap_in(copy, self.path / "data.mdb")
        self._points.close()
        if clean:
            cleanstop.record(self.path / "data.mdb")
        self._lock.close()

    def _mark_copy(self, copy: Path) -> None:
        """Mark a copy of this index's file, made after its clean-stop mark, as stopped
        cleanly; its lock file is beside it."""
        env = lmdb.open(str(copy), map_size=self._map_size, max_dbs=len(_DBS), sync=True,
                        subdir=False)
        try:
            with env.begin(write=True) as txn:
                _put_clean_mark(txn, env.open_db(b"meta", txn=txn))
        finally:
            env.close()

    def bytes_in_use(self) -> int:
        """What data.mdb's pages in use hold; LMDB reuses the others before it grows it."""
        env = self.env
        with env.begin() as txn:
            stats = [env.stat()] + [txn.stat(db) for db in self.db.values()]
        pages = 2 + sum(stat["branch_pages"] + stat["leaf_pages"] + stat["overflow_pages"]
                        for stat in stats)  # 2: the meta pages
        return pages * stats[0]["psize"]

    def mark_clean_stop(self) -> None:
        """Say that nothing is left for a crash recovery to do, as the last thing written.

        The mark holds the number of its own transaction: it only counts while that is
        the last one committed, so that any change made after it (by a process that
        crashed, or by a version of onitufs that knows no mark) voids it."""
        with self.write() as txn:
            delete_range(txn, self.db["meta"], MIRROR_SUM)
            # Known fingerprints are up to date (set_mirror); the others are made from the
            # mirrors decoded. A mirror with racy entries (checked again later) gets none.
            sums = {rid: total for rid, (total, racy) in self._sums.items() if not racy}
            for rid, known in self._mirrors.items():
                if rid not in self._sums and not any(e.racy for _, e in known.values()):
                    sums[rid] = sum(mirror_digest(path, entry)
                                    for path, (_, entry) in known.items() if path) % SUM_MOD
            for rid, total in sums.items():
                txn.put(MIRROR_SUM + _I.pack(rid), total.to_bytes(16), db=self.db["meta"])
            _put_clean_mark(txn, self.db["meta"])

    def _mirror_sums(self) -> dict[int, tuple[int, int]]:
        with self.begin() as txn:
            return {_I.unpack(key)[0]: (int.from_bytes(value), 0)
                    for key, value in scan(txn, self.db["meta"], MIRROR_SUM)}

    def matches_mirror(self, rid: int, listed: int) -> bool:
        """Whether a remote's listing, fingerprinted as the sum of its listed_digest mod
        SUM_MOD, holds what its mirror holds, so that comparing the two path by path would
        change nothing; False where the mirror's fingerprint is not known. It is known
        from the last clean stop on (written with its mark, so counting only while that
        does) and kept up to date by every change of the mirror since."""
        return self._sums.get(rid) == (listed, 0)  # and no racy entry to check

    def _mark_holds(self) -> bool:
        """Whether the clean-stop mark is still the last transaction committed."""
        return self._clean_stop_mark() == self.env.info()["last_txnid"]

    def _clean_stop_mark(self) -> int | None:
        with self.begin() as txn:
            raw = txn.get(b"clean_stop", db=self.db["meta"])
        return None if raw is None else unq(raw)

    def sync(self) -> None:
        """Make every committed transaction survive a power loss, as the index's point to
        go back to after one (see syncpoint.py); nothing to do (no disk flush, which an
        idle mount would pay every few seconds) if none came since."""
        with self._syncing:
            # Two commits (a worker thread's blocks) between the hold's start and the
            # save take its meta page's slot: then again, with what they wrote synced too.
            for _ in range(SAVE_TRIES):
                hold = self.env.begin()
                try:
                    if hold.id() == self._synced_txn:
                        hold.abort()
                        return
                    self.env.sync(True)
                    saved = self._holding and self._points.save(hold.id())
                except BaseException:
                    hold.abort()
                    raise
                if saved:
                    if self._hold is not None:
                        self._hold.abort()
                    self._hold, self._synced_txn = hold, hold.id()
                    self._looked_at = self._file_end()
                    self._free_at_hold = self._looked_at - self.bytes_in_use()
                    return
                txnid = hold.id()
                hold.abort()
                if not self._holding:
                    self._synced_txn = txnid
                    return

    def _file_end(self) -> int:
        """Where the pages LMDB uses in its file end."""
        return int(self.env.info()["last_pgno"] + 1) * self._page_size

    def sync_if_held_grew(self) -> None:
        """LMDB reuses no page freed since the point held (syncpoint.py), and grows the
        file instead: once those pages are `held_limit` bytes, a sync lets it reuse them,
        so that the file stays within what the cache's size allows. Looked at after each
        commit; what is free measured only once the file grew by a quarter of that."""
        if self._hold is None:
            return
        end = self._file_end()
        if end - self._looked_at < self.held_limit // 4:
            return
        self._looked_at = end
        if end - self.bytes_in_use() - self._free_at_hold > self.held_limit:
            with contextlib.suppress(OSError, lmdb.Error):  # the commit stands: a later sync
                self.sync()

    def hold_sync_points(self, holding: bool) -> None:
        """Whether each sync is held as a point to go back to (see syncpoint.py). A cache
        disk short of room lets LMDB reuse every page it freed: the points are forgotten
        then, and a power loss may damage the index, as it could before there were any."""
        if holding == self._holding:  # as it was (the lock may be a timer's sync's, for long)
            return
        with self._syncing:
            if holding == self._holding:
                return
            if not holding:
                self._points.forget()  # first: a point left must still be whole
                if self._hold is not None:
                    self._hold.abort()
                    self._hold = None
            self._holding = holding
            self._synced_txn = -1  # the next sync holds it, or syncs without a hold

    def _release_hold(self) -> None:
        with self._syncing:
            if self._hold is not None:
                self._hold.abort()
                self._hold = None

    def begin(self) -> lmdb.Transaction:
        """A read-only transaction."""
        return self.env.begin()

    @contextlib.contextmanager
    def write(self) -> Iterator[lmdb.Transaction]:
        """A write transaction. On error, its commit's included (a full disk), it is aborted,
        the inodes it was to write for defer_inode deferred again, the others it wrote
        taken back to what LMDB holds (see _back_to_stored), and what it changed in memory
        taken back (see on_failure)."""
        txn = self.env.begin(write=True)
        deferred, deferred_as = dict(self._dirty), dict(self._deferred_as)
        self._after_commit = []
        self._undo = []
        self._written = {}
        try:
            yield txn
            txn.commit()
        except BaseException:
            with contextlib.suppress(lmdb.Error):  # a failed commit has aborted already
                txn.abort()
            self._mirrors.clear()
            self._sums.clear()
            self._dirty.update(deferred)
            self._deferred_as.update(deferred_as)
            self._back_to_stored()
            for undo in reversed(self._undo):
                undo()
            self._undo = []
            raise
        self._written = {}
        self._undo = []
        for done in self._after_commit:
            done()
        self.sync_if_held_grew()

    def _back_to_stored(self) -> None:
        """After a failed write, the inodes it stored or deleted hold what never reached
        LMDB: each is set back to what LMDB holds, in place, since whoever holds one (an
        upload, a write waiting for a fetch) must still hold the one get_inode hands out:
        a second object would take the next changes, and the first, written back, would
        undo them. One LMDB does not hold (made by that write) is let go of. One deferred
        again goes back to what it was when deferred, to go with the next commit."""
        with self.begin() as txn:
            for ino, inode in self._written.items():
                raw = self._deferred_as[ino] if ino in self._dirty \
                    else txn.get(q(ino), db=self.db["inodes"])
                if raw is None:
                    self._inodes.pop(ino)
                    self._held.pop(ino, None)
                    continue
                stored = Inode.unpack(ino, raw)
                for name in _INODE_FIELDS:
                    setattr(inode, name, getattr(stored, name))
                self._keep(inode)
        self._written = {}

    def on_failure(self, undo: Callable[[], None]) -> None:
        """Call `undo` if the write transaction under way fails: it takes back what was
        changed in memory for it, as the abort takes back what it wrote to LMDB."""
        self._undo.append(undo)

    def after_commit(self, done: Callable[[], None]) -> None:
        """Call `done` once the write transaction under way has committed (never if not)."""
        self._after_commit.append(done)

    def _check_schema(self, block_size: int) -> None:
        with self.write() as txn:
            raw = txn.get(b"schema", db=self.db["meta"])
            if raw is None:
                txn.put(b"schema", q(SCHEMA_VERSION), db=self.db["meta"])
                txn.put(b"block_size", q(block_size), db=self.db["meta"])
                txn.put(b"cache_id", os.urandom(4).hex().encode(), db=self.db["meta"])
                txn.put(b"next_ino", q(ROOT_INO + 1), db=self.db["meta"])
                txn.put(b"next_rev", q(1), db=self.db["meta"])
                stamp = now_ns()
                root = Inode(ROOT_INO, stat.S_IFDIR | 0o755, os.getuid(), os.getgid(), 2,
                             atime_ns=stamp, mtime_ns=stamp, ctime_ns=stamp)
                txn.put(q(ROOT_INO), root.pack(), db=self.db["inodes"])
                # nothing for a crash recovery to do in a new index (nor to say it has)
                _put_clean_mark(txn, self.db["meta"])
                self.stopped_cleanly = True
                return
            version = unq(raw)
            if version not in (1, 2, 3, 4, SCHEMA_VERSION):
                raise CacheError(f"index schema {version} is not the supported {SCHEMA_VERSION}")
            if version == 1:
                self._upgrade_from_1(txn)
            if version in (1, 2):
                self._upgrade_from_2(txn)
            if version in (1, 2, 3):
                self._upgrade_from_3(txn)
            # Schema 5 added the checksum to mirror entries, which schema 4's onitufs
            # cannot read: the number keeps it from opening this index.
            if version != SCHEMA_VERSION:
                txn.put(b"schema", q(SCHEMA_VERSION), db=self.db["meta"])
            stored = txn.get(b"block_size", db=self.db["meta"])
            if stored is not None and block_size and unq(stored) != block_size:
                raise CacheError(f"cache.block_size: the cache {self.path} was made with blocks "
                                 f"of {unq(stored)} bytes; keep that size or use a new cache path")

    def _upgrade_from_1(self, txn: lmdb.Transaction) -> None:
        # Schema 1 left block checksums of the last revision beside changed content;
        # make_revision now carries such checksums over as unchanged, so they go.
        for inode in list(self.all_inodes(txn)):
            if inode.dirty:
                delete_range(txn, self.db["hashes"], q(inode.ino))

    def _upgrade_from_2(self, txn: lmdb.Transaction) -> None:
        # Schema 2 stored blocks without the checksum that lets a read find damage.
        for key in keys(txn, self.db["blocks"]):  # one block in memory at a time
            content = txn.get(key, db=self.db["blocks"])
            assert content is not None
            txn.put(key, seal(content), db=self.db["blocks"])

    def _upgrade_from_3(self, txn: lmdb.Transaction) -> None:
        # Schema 3 keyed rpaths by a hash of the whole path: what a remote held below a
        # folder was found only in its whole mirror, decoded.
        txn.drop(self.db["rpaths"], delete=False)
        for key, raw in scan(txn, self.db["mirror"], b""):
            rid, ino = _I.unpack_from(key)[0], unq(key[_I.size:])
            for path in json.loads(bytes(raw)):
                txn.put(self._rpath_key(rid, path), q(ino) + encode_path(path),
                        db=self.db["rpaths"])

    # counters

    def _next(self, txn: lmdb.Transaction, key: bytes) -> int:
        raw = txn.get(key, db=self.db["meta"])
        assert raw is not None, "counters are created with the index"
        value = unq(raw)
        txn.put(key, q(value + 1), db=self.db["meta"])
        return value

    def next_ino(self, txn: lmdb.Transaction) -> int:
        return self._next(txn, b"next_ino")

    def next_rev(self, txn: lmdb.Transaction) -> int:
        return self._next(txn, b"next_rev")

    # inodes

    def get_inode(self, ino: int, txn: lmdb.Transaction | None = None) -> Inode | None:
        inode = self._dirty.get(ino) or self._inodes.get(ino)
        if inode is not None:
            return inode
        held = self._held.pop(ino, None)
        inode = held() if held is not None else None
        if inode is None:
            if txn is None:
                with self.begin() as read:
                    raw = read.get(q(ino), db=self.db["inodes"])
            else:
                raw = txn.get(q(ino), db=self.db["inodes"])
            if raw is None:
                return None
            inode = Inode.unpack(ino, raw)
        self._keep(inode)
        return inode

    def _keep(self, inode: Inode) -> None:
        dropped = self._inodes.put(inode.ino, inode)
        # Referred to by `dropped` and by getrefcount's argument only: nothing holds it.
        if dropped is not None and sys.getrefcount(dropped) > 2:
            self._held[dropped.ino] = weakref.ref(dropped, functools.partial(self._let_go,
                                                                             dropped.ino))

    def _let_go(self, ino: int, gone: weakref.ref[Inode]) -> None:
        if self._held.get(ino) is gone:
            del self._held[ino]

    def put_inode(self, txn: lmdb.Transaction, inode: Inode) -> None:
        txn.put(q(inode.ino), inode.pack(), db=self.db["inodes"])
        self._written[inode.ino] = inode
        self._dirty.pop(inode.ino, None)
        self._deferred_as.pop(inode.ino, None)
        self._keep(inode)

    def defer_inode(self, inode: Inode) -> None:
        """Write this inode with the next commit (for changes made on every write)."""
        self._dirty[inode.ino] = inode
        self._deferred_as[inode.ino] = inode.pack()
        self._keep(inode)

    def write_deferred(self, txn: lmdb.Transaction) -> None:
        for inode in list(self._dirty.values()):
            self.put_inode(txn, inode)

    def delete_inode(self, txn: lmdb.Transaction, ino: int) -> None:
        txn.delete(q(ino), db=self.db["inodes"])
        dirty, decoded, held = self._dirty.pop(ino, None), self._inodes.pop(ino), \
            self._held.pop(ino, None)
        self._deferred_as.pop(ino, None)
        inode = dirty or decoded or (held() if held is not None else None)
        if inode is not None:
            self._written[ino] = inode
        delete_range(txn, self.db["xattrs"], q(ino))
        delete_range(txn, self.db["hashes"], q(ino))

    def all_inodes(self, txn: lmdb.Transaction) -> Iterator[Inode]:
        for key, value in txn.cursor(db=self.db["inodes"]):
            ino = unq(key)
            yield self._dirty.get(ino) or Inode.unpack(ino, value)

    # names

    def lookup(self, parent: int, name: bytes, txn: lmdb.Transaction | None = None) -> int | None:
        key = q(parent) + name
        if txn is None:
            with self.begin() as read:
                raw = read.get(key, db=self.db["dirents"])
        else:
            raw = txn.get(key, db=self.db["dirents"])
        return None if raw is None else unq(raw)

    def link(self, txn: lmdb.Transaction, parent: int, name: bytes, ino: int) -> None:
        txn.put(q(parent) + name, q(ino), db=self.db["dirents"])
        txn.put(q(ino) + q(parent) + name, b"", db=self.db["parents"])

    def unlink(self, txn: lmdb.Transaction, parent: int, name: bytes, ino: int) -> None:
        txn.delete(q(parent) + name, db=self.db["dirents"])
        txn.delete(q(ino) + q(parent) + name, db=self.db["parents"])

    def children(self, parent: int, txn: lmdb.Transaction | None = None) -> list[tuple[bytes, int]]:
        prefix = q(parent)
        if txn is None:
            with self.begin() as read:
                return self._children(read, prefix)
        return self._children(txn, prefix)

    def _children(self, txn: lmdb.Transaction, prefix: bytes) -> list[tuple[bytes, int]]:
        return [(name, unq(value)) for name, value in scan(txn, self.db["dirents"], prefix)]

    def has_children(self, parent: int, txn: lmdb.Transaction) -> bool:
        return next(scan(txn, self.db["dirents"], q(parent)), None) is not None

    def names_of(self, ino: int, txn: lmdb.Transaction) -> list[tuple[int, bytes]]:
        """(parent, name) of every name this inode has."""
        return [(unq(key), key[8:]) for key, _ in scan(txn, self.db["parents"], q(ino))]

    def paths_of(self, ino: int, txn: lmdb.Transaction) -> list[str]:
        """Every path, relative to the root, under which this inode is reachable."""
        if ino == ROOT_INO:
            return [""]
        paths = []
        for parent, name in self.names_of(ino, txn):
            for parent_path in self.paths_of(parent, txn):
                joined = os.fsdecode(name) if not parent_path else parent_path + "/" + os.fsdecode(name)
                paths.append(joined)
        return paths

    def describe(self, ino: int) -> str:
        """An inode for a log line: "/PATH" (its first name), or "inode N" when it has none."""
        with self.begin() as txn:
            paths = self.paths_of(ino, txn)
        return "/" + paths[0] if paths else f"inode {ino}"

    def resolve(self, path: str, txn: lmdb.Transaction) -> int | None:
        ino: int | None = ROOT_INO
        for part in path.split("/") if path else []:
            assert ino is not None
            ino = self.lookup(ino, encode_path(part), txn)
            if ino is None:
                return None
        return ino

    # checksums of blocks

    def block_hash(self, ino: int, blockno: int, rev: int) -> bytes | None:
        """The SHA-256 of a block of revision `rev`, if known."""
        with self.begin() as txn:
            raw = txn.get(q(ino) + q(blockno), db=self.db["hashes"])
        if raw is None or unq(raw) != rev:
            return None
        return bytes(raw[8:])

    def set_block_hash(self, txn: lmdb.Transaction, ino: int, blockno: int, rev: int,
                       digest: bytes | None) -> None:
        """Record a block's SHA-256 (rev may be UNREVISED), or that it is not known."""
        if digest is None:
            txn.delete(q(ino) + q(blockno), db=self.db["hashes"])
        else:
            txn.put(q(ino) + q(blockno), q(rev) + digest, db=self.db["hashes"])

    def unrevised(self, txn: lmdb.Transaction) -> set[int]:
        """Inodes with blocks stored since their last revision was made."""
        return {unq(key) for key, raw in scan(txn, self.db["hashes"], b"") if unq(raw) == UNREVISED}

    def cut_block_hashes(self, txn: lmdb.Transaction, ino: int, from_block: int) -> None:
        delete_range(txn, self.db["hashes"], q(ino), q(from_block))

    def carry_block_hashes(self, txn: lmdb.Transaction, ino: int, old_rev: int,
                           new_rev: int) -> None:
        """The content became revision new_rev: checksums of blocks stored since old_rev
        and of blocks unchanged since then are its own; any others are stale."""
        for key, raw in list(scan(txn, self.db["hashes"], q(ino))):
            if unq(raw) in (old_rev, UNREVISED):
                txn.put(q(ino) + key, q(new_rev) + bytes(raw[8:]), db=self.db["hashes"])
            else:
                txn.delete(q(ino) + key, db=self.db["hashes"])

    # extended attributes

    def get_xattr(self, ino: int, name: bytes) -> bytes | None:
        with self.begin() as txn:
            value = txn.get(q(ino) + name, db=self.db["xattrs"])
            return None if value is None else bytes(value)

    def set_xattr(self, txn: lmdb.Transaction, ino: int, name: bytes, value: bytes) -> None:
        txn.put(q(ino) + name, value, db=self.db["xattrs"])

    def remove_xattr(self, txn: lmdb.Transaction, ino: int, name: bytes) -> bool:
        return bool(txn.delete(q(ino) + name, db=self.db["xattrs"]))

    def copy_xattrs(self, txn: lmdb.Transaction, source: int, target: int) -> None:
        for name, value in list(scan(txn, self.db["xattrs"], q(source))):
            self.set_xattr(txn, target, name, bytes(value))

    def user_xattrs(self, ino: int, txn: lmdb.Transaction) -> dict[str, bytes]:
        """The extended attributes of the user namespace: those remotes may keep."""
        return {os.fsdecode(name): bytes(value)
                for name, value in scan(txn, self.db["xattrs"], q(ino))
                if name.startswith(b"user.")}

    def list_xattrs(self, ino: int) -> list[bytes]:
        with self.begin() as txn:
            return [name for name, _ in scan(txn, self.db["xattrs"], q(ino))]

    # remotes

    def knows_remote(self, name: str) -> bool:
        with self.begin() as txn:
            return txn.get(name.encode(), db=self.db["remotes"]) is not None

    def remote_id(self, name: str) -> int:
        """The id of a remote, given on first use."""
        with self.write() as txn:
            raw = txn.get(name.encode(), db=self.db["remotes"])
            if raw is not None:
                return unq(raw)
            rid = int(txn.stat(self.db["remotes"])["entries"]) + 1
            txn.put(name.encode(), q(rid), db=self.db["remotes"])
            return rid

    def configured_remotes(self) -> list[str]:
        """The remotes of the config at the last mount: one that was left out since
        missed what changed meanwhile."""
        with self.begin() as txn:
            raw = txn.get(b"configured", db=self.db["meta"])
        return list(json.loads(bytes(raw))) if raw is not None else []

    def set_configured_remotes(self, names: list[str]) -> None:
        with self.write() as txn:
            txn.put(b"configured", json.dumps(names).encode(), db=self.db["meta"])

    def identity(self, name: str) -> tuple[str, str | None, int | None] | None:
        """The id a remote's marker carries, the marker's revision token and its change
        time where the remote keeps one (identity.py)."""
        with self.begin() as txn:
            raw = txn.get(b"identity:" + name.encode(), db=self.db["meta"])
        if raw is None:
            return None
        value = json.loads(bytes(raw))
        return value["id"], value["token"], value.get("changed")

    def set_identity(self, name: str, remote_id: str, token: str | None,
                     changed: int | None = None) -> None:
        with self.write() as txn:
            txn.put(b"identity:" + name.encode(),
                    json.dumps({"id": remote_id, "token": token, "changed": changed}).encode(),
                    db=self.db["meta"])

    def remote_ids(self, txn: lmdb.Transaction) -> list[int]:
        return [unq(rid) for _, rid in txn.cursor(db=self.db["remotes"])]

    def queued(self) -> dict[str, int]:
        """How many inodes each remote still has to be brought up to date on."""
        with self.begin() as txn:
            names = {unq(rid): bytes(name).decode() for name, rid in
                     txn.cursor(db=self.db["remotes"])}
            counts: dict[str, int] = {}
            for key, _ in scan(txn, self.db["todo"], b""):
                name = names.get(_I.unpack_from(key)[0], "?")
                counts[name] = counts.get(name, 0) + 1
            return counts

    # what each remote holds

    def mirror(self, rid: int, ino: int, txn: lmdb.Transaction) -> dict[str, MirrorEntry]:
        raw = txn.get(_I.pack(rid) + q(ino), db=self.db["mirror"])
        if raw is None:
            return {}
        return {path: MirrorEntry(**entry) for path, entry in json.loads(bytes(raw)).items()}

    def set_mirror(self, txn: lmdb.Transaction, rid: int, ino: int, path: str,
                   entry: MirrorEntry | None) -> None:
        """The remote holds this inode at `path` (`entry`), or not (None). Whatever other
        inode it held there is gone: a path is one inode's, in the records by path and by
        inode alike, or a read would ask for a path the listings no longer know of."""
        if entry is not None:
            previous = self.mirror_ino(rid, path, txn)
            if previous is not None and previous != ino:
                self.set_mirror(txn, rid, previous, path, None)
        entries = self.mirror(rid, ino, txn)
        self._update_sum(rid, path, entries.get(path), entry)
        key = _I.pack(rid) + q(ino)
        if entry is None:
            entries.pop(path, None)
            txn.delete(self._rpath_key(rid, path), db=self.db["rpaths"])
        else:
            entries[path] = entry
            txn.put(self._rpath_key(rid, path), q(ino) + encode_path(path), db=self.db["rpaths"])
        if entries:
            txn.put(key, json.dumps({p: e.to_json() for p, e in entries.items()}).encode(),
                    db=self.db["mirror"])
        else:
            txn.delete(key, db=self.db["mirror"])
        for changed in self._watches.get(rid, ()):
            changed.add(path)
        known = self._mirrors.get(rid)
        if known is not None:
            if entry is None:
                known.pop(path, None)
            else:
                known[path] = (ino, dataclasses.replace(entry))  # never changed in place

    def _update_sum(self, rid: int, path: str, old: MirrorEntry | None,
                    new: MirrorEntry | None) -> None:
        """Keep the remote's fingerprint (see matches_mirror) that of its mirror as one of
        its entries changes, and the count of its racy entries (their content is to be
        checked once later, which no fingerprint of a listing would do)."""
        known = self._sums.get(rid)
        if known is None or not path:  # unknown, or the root, which it leaves out
            return
        total, racy = known
        if old is not None:
            total -= mirror_digest(path, old)
            racy -= old.racy
        if new is not None:
            total += mirror_digest(path, new)
            racy += new.racy
        self._sums[rid] = (total % SUM_MOD, racy)

    def learn_checksum(self, txn: lmdb.Transaction, ino: int, rev: int, sha256: bytes) -> None:
        """The SHA-256 of revision `rev` became known: the copies of it each remote holds
        (one it gave us, whose checksum no upload learnt) are recorded with it."""
        for rid in self.remote_ids(txn):
            for path, entry in self.mirror(rid, ino, txn).items():
                if entry.rev == rev and entry.kind == "file" and entry.sha256 is None:
                    entry.sha256 = sha256.hex()
                    self.set_mirror(txn, rid, ino, path, entry)

    def move_mirror(self, txn: lmdb.Transaction, rid: int, ino: int, old: str, new: str,
                    entry: MirrorEntry) -> None:
        """The remote now holds at `new` what it held at `old`, with all below it if a folder."""
        self.set_mirror(txn, rid, ino, old, None)
        self.set_mirror(txn, rid, ino, new, entry)
        if entry.kind == "dir":
            for child, path, child_entry in self.mirror_below(rid, [old], txn):
                self.set_mirror(txn, rid, child, path, None)
                self.set_mirror(txn, rid, child, new + path[len(old):], child_entry)

    def mirror_ino(self, rid: int, path: str, txn: lmdb.Transaction) -> int | None:
        raw = txn.get(self._rpath_key(rid, path), db=self.db["rpaths"])
        if raw is None or bytes(raw[8:]) != encode_path(path):
            return None
        return unq(raw)

    def mirror_all(self, rid: int, txn: lmdb.Transaction) -> list[tuple[int, str, MirrorEntry]]:
        """Everything the remote holds: (ino, path, entry)."""
        known = self._known(rid, txn)
        return [(ino, path, dataclasses.replace(entry)) for path, (ino, entry) in known.items()]

    def mirror_below(self, rid: int, folders: Sequence[str],
                     txn: lmdb.Transaction) -> list[tuple[int, str, MirrorEntry]]:
        """What the remote holds below any of `folders`: (ino, path, entry), not copied,
        for reading only. From the records below them where the mirror is not decoded: a
        folder made, moved or deleted after a start need not decode all the remote holds
        (a second and 100 MB for 100,000 files)."""
        known = self._mirrors.get(rid)
        if known is None:
            return self._stored_below(rid, folders, txn)
        below: dict[str, tuple[int, MirrorEntry]] = {}
        for folder in folders:
            # The paths below a folder sort together, from "folder/" to before "folder0"
            # ("0" follows "/"): found without going through all the remote holds, which
            # each folder of an rm -rf did, for each remote.
            first, end = known.bisect_left(f"{folder}/"), known.bisect_left(f"{folder}0")
            below.update(known.items()[first:end])
        return [(ino, path, entry) for path, (ino, entry) in below.items()]

    def stored_below(self, rid: int, folders: Sequence[str]) -> dict[str, MirrorEntry]:
        """What the remote holds below `folders`, by path, from LMDB's records only, in a
        read transaction of its own: safe on a worker thread."""
        with self.begin() as txn:
            return {path: entry for _, path, entry in self._stored_below(rid, folders, txn)}

    def _stored_below(self, rid: int, folders: Sequence[str],
                      txn: lmdb.Transaction) -> list[tuple[int, str, MirrorEntry]]:
        """mirror_below as LMDB has it: the keys of the paths below a folder start with
        its path (or with its first RPATH_PREFIX bytes, and then the path stored says)."""
        below: dict[str, tuple[int, MirrorEntry]] = {}
        for folder in folders:
            start = f"{folder}/"
            prefix = _I.pack(rid) + encode_path(start)[:RPATH_PREFIX]
            for _, raw in scan(txn, self.db["rpaths"], prefix):
                path = os.fsdecode(bytes(raw[_Q.size:]))
                if path.startswith(start) and path not in below:
                    entry = self.mirror(rid, unq(raw), txn).get(path)
                    if entry is not None:
                        below[path] = (unq(raw), entry)
        return [(ino, path, entry) for path, (ino, entry) in sorted(below.items())]

    def mirror_at(self, rid: int, paths: Iterable[str],
                  txn: lmdb.Transaction) -> dict[str, MirrorEntry]:
        """What the remote holds at these paths, by path, for reading only. From the
        records of these paths where the mirror is not decoded: a remote's few changes
        after a start need not decode all it holds (a second for 100,000 files)."""
        known = self._mirrors.get(rid)
        if known is not None:
            return {path: known[path][1] for path in paths if path in known}
        stored = {path: self._stored_entry(rid, path, txn) for path in paths}
        return {path: held[1] for path, held in stored.items() if held is not None}

    def _stored_entry(self, rid: int, path: str,
                      txn: lmdb.Transaction) -> tuple[int, MirrorEntry] | None:
        """What the remote holds at a path, as LMDB has it: (ino, entry)."""
        ino = self.mirror_ino(rid, path, txn)
        entry = None if ino is None else self.mirror(rid, ino, txn).get(path)
        return None if ino is None or entry is None else (ino, entry)

    def mirror_entries(self, rid: int, txn: lmdb.Transaction) -> dict[str, MirrorEntry]:
        """Everything the remote holds by path, as mirror_all but not copied, for reading
        only: what a listing of the whole tree is compared with."""
        return {path: entry for path, (_, entry) in self._known(rid, txn).items()}

    def _known(self, rid: int, txn: lmdb.Transaction) -> Known:
        known = self._mirrors.get(rid)
        if known is None:
            known = self._mirrors[rid] = self._load_mirror(rid, txn)
        return known

    def mirror_in_memory(self, rid: int) -> bool:
        return rid in self._mirrors

    def watch_mirror(self, rid: int) -> set[str]:
        """Collect the paths of the remote's mirror changed from now on, for keep_mirror:
        called before decode_mirror starts, on the thread that changes mirrors."""
        changed: set[str] = set()
        self._watches.setdefault(rid, []).append(changed)
        return changed

    def decode_mirror(self, rid: int) -> Known:
        """What the remote holds, decoded in a read transaction of its own: safe on a worker
        thread, as decoding 100,000 entries would hold up the mount for a second."""
        with self.begin() as txn:
            return self._load_mirror(rid, txn)

    def keep_mirror(self, rid: int, known: Known | None, changed: set[str]) -> None:
        """End watch_mirror's `changed`, and keep what decode_mirror gave (None if it
        failed) unless the mirror is in memory already. The paths changed meanwhile may be
        missing from it or not, whatever the order of the change and the decode's read
        transaction, or be in a write that failed: each is read again from LMDB, as it
        holds them now, which no write under way can leave behind."""
        watches = [watch for watch in self._watches[rid] if watch is not changed]
        if watches:
            self._watches[rid] = watches
        else:
            del self._watches[rid]
        if known is None or rid in self._mirrors:
            return
        with self.begin() as txn:
            for path in changed:
                held = self._stored_entry(rid, path, txn)
                if held is None:
                    known.pop(path, None)
                else:
                    known[path] = held
        self._mirrors[rid] = known

    def _load_mirror(self, rid: int, txn: lmdb.Transaction) -> Known:
        """What the remote holds, decoded: at the first whole listing compared path by path
        after the start (or a verify), for every file of the tree, so in bulk (one JSON
        document of all the records)."""
        rows = list(scan(txn, self.db["mirror"], _I.pack(rid)))
        records = json.loads(b"[" + b",".join(bytes(value) for _, value in rows) + b"]")
        return SortedDict({path: (unq(key), MirrorEntry(**entry))
                           for (key, _), entries in zip(rows, records, strict=True)
                           for path, entry in entries.items()})

    @staticmethod
    def _rpath_key(rid: int, path: str) -> bytes:
        """The path's first bytes lead (what is below a folder is found by its prefix),
        its hash follows (two paths that share the first RPATH_PREFIX bytes differ)."""
        encoded = encode_path(path)
        return _I.pack(rid) + encoded[:RPATH_PREFIX] + hashlib.blake2b(
            encoded, digest_size=16).digest()

    # work queue per remote

    def mark(self, txn: lmdb.Transaction, rid: int, ino: int, due: float) -> None:
        txn.put(_I.pack(rid) + q(ino), struct.pack("<d", due), db=self.db["todo"])

    def unmark(self, txn: lmdb.Transaction, rid: int, ino: int) -> None:
        txn.delete(_I.pack(rid) + q(ino), db=self.db["todo"])

    def todo(self, rid: int) -> dict[int, float]:
        with self.begin() as txn:
            return {unq(key): float(struct.unpack("<d", value)[0])
                    for key, value in scan(txn, self.db["todo"], _I.pack(rid))}

    # uploads in flight

    def transfer(self, rid: int, ino: int, txn: lmdb.Transaction) -> Transfer | None:
        raw = txn.get(_I.pack(rid) + q(ino), db=self.db["transfers"])
        return None if raw is None else Transfer(**json.loads(bytes(raw)))

    def set_transfer(self, txn: lmdb.Transaction, rid: int, ino: int,
                     transfer: Transfer | None) -> None:
        key = _I.pack(rid) + q(ino)
        if transfer is None:
            txn.delete(key, db=self.db["transfers"])
        else:
            value = {"rev": transfer.rev, "path": transfer.path, "offset": transfer.offset,
                     "extra": transfer.extra}
            txn.put(key, json.dumps(value).encode(), db=self.db["transfers"])
