"""The life of one mount: set up, serve, and on the way out flush every upload.

Everything that can fail because of the user's input (config, cache,
mount point, a driver's options) is checked before anything is mounted, so
a failed `onitufs mount` never leaves a half-mounted folder. Once mounted,
the mount ends by `fusermount3 -u`, `onitufs umount` or SIGINT/SIGTERM;
each way ends with the replicator flushing what is queued.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

import lmdb
import pyfuse3
import trio

from . import overlaps
from .blockcache import BlockCache
from .config import Config, ConfigError
from .fs import Filesystem
from .index import FLAG_WRITE_FAILED, ROOT_INO, CacheError, Index, Inode, unwritable
from .notify import notify
from .plug import check_options, load_drivers
from .remote_changes import RemoteChanges
from .remotes import Remote
from .replicator import Replicator
from .tree import Tree

log = logging.getLogger(__name__)
MAP_SIZE = 2**40  # address space only: the file grows as it is used
STATUS_SCHEMA = 1  # of status(): raised when a field changes meaning or goes
TRANSFER_SHOWN = 5.0  # seconds a driver's word on its transfer stays in the status
# How long a first mount's lookups and listings wait for the remotes' first listings: a
# remote that takes longer shows its files as they come, as after a remount.
FIRST_LISTING_WAIT = 30.0
SWITCH_INTERVAL = 0.0005  # seconds a thread keeps the GIL when another waits for it
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD_MAX = 32 * 1024**2  # glibc's ceiling for it on 64-bit machines
T = TypeVar("T")


class MountError(Exception):
    """The mount cannot start; the message says why in one line."""


def check_mountpoint(mountpoint: Path, nonempty: bool = False) -> None:
    """Refuse a mount point that is missing, not a folder, or (unless `nonempty`, sshfs's
    -o nonempty) holding files, which the mount would hide; clear a mount left there by a
    daemon that died. (`onitufs mount` refused one that is mounted before.)"""
    try:
        # statvfs, not stat: the kernel answers a stat from its cache for a while after
        # the daemon died, and the dead mount would be taken for a folder
        os.statvfs(mountpoint)
    except OSError as error:
        if error.errno == errno.ENOTCONN:
            # A FUSE mount whose daemon died (kill -9): nothing serves it any more.
            log.warning("%s: clearing the mount left by a daemon that died", mountpoint)
            subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], check=False)
        elif error.errno == errno.ENOENT:
            raise MountError(f"{mountpoint}: no such folder (create it first)") from None
        else:
            raise MountError(f"{mountpoint}: {error.strerror}") from None
    if not mountpoint.is_dir():
        raise MountError(f"{mountpoint}: not a folder")
    if nonempty:
        return
    try:
        with os.scandir(mountpoint) as entries:
            empty = next(entries, None) is None
    except OSError as error:
        raise MountError(f"{mountpoint}: {error.strerror}") from None
    if not empty:
        raise MountError(f"{mountpoint}: not empty: its files would be hidden while mounted "
                         "(move them away, or mount over them with -o nonempty)")


def widen_read_ahead(device: int, size: int) -> None:
    """Let the kernel read a file sequentially in requests of `size` (a cache block).

    A FUSE mount starts with the kernel's default read-ahead, 128 KiB, and the
    kernel splits a sequential read into requests of that size: eight for every
    1 MiB block, each one a round through the daemon. Only root may raise it,
    through the mount's entry in /sys/class/bdi; for anyone else it stays.
    """
    setting = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    try:
        setting.write_text(str(max(128, size // 1024)))
    except OSError as error:
        log.debug("read-ahead left at the kernel's default: %s", error)


def keep_freed_blocks(block_size: int, write_buffer: int) -> None:
    """Let glibc's malloc keep the memory of freed blocks for the next ones.

    Each block written goes through memory of its own a few times (the kernel's
    request, the value stored, LMDB's pages for it), freed once it is in LMDB. By
    default glibc gives blocks of 1 MiB back to the kernel as they are freed, and the
    next one is faulted in and zeroed anew: a fifth of the thread writing blocks into
    LMDB went there. Blocks are kept in the heap now, and up to a write buffer of
    them stays when freed. Sequential writes ran about 8% faster (eight 1 GiB runs
    each, alternated); the daemon's peak RssAnon was 10-20 MiB higher. Other C
    libraries have no mallopt.
    """
    mallopt = getattr(ctypes.CDLL(None), "mallopt", None)
    if mallopt is None:
        return
    mallopt(M_MMAP_THRESHOLD, min(MMAP_THRESHOLD_MAX, 4 * block_size))
    mallopt(M_TRIM_THRESHOLD, write_buffer)


class Mount:
    """Every part of a running mount, wired together."""

    def __init__(self, config: Config, mountpoint: Path | None,
                 always_check: bool = False) -> None:
        self.config = config
        self.mountpoint = mountpoint
        drivers = load_drivers(config)  # every table's keys checked, at every mount
        overlaps.check(config, mountpoint, drivers)  # before the cache folder is made
        self.index = Index(config.cache_path, MAP_SIZE, config.block_size, always_check)
        if self.index.restored is not None:
            log.warning("the system went down with this cache in use (a power loss or a crash "
                        "of the system): the index goes back to its last sync (transaction "
                        "%d); what was written after it and not fsynced may be lost",
                        self.index.restored)
        if not self.index.checked:
            log.info("the index file is as the last clean stop left it: its structural check "
                     "is skipped")
        try:
            self._wire(drivers)
        except lmdb.Error as error:
            # A new cache's first commits (its remotes' ids, what fills them) or a crash's
            # recovery, on a full disk: the cache's failure, in one line, as Index's own.
            self.index.close()
            raise unwritable(config.cache_path, error) from None
        except BaseException:
            self.index.close()
            raise

    def _wire(self, drivers: dict[str, ModuleType]) -> None:
        """Make every part on the open index, and recover what the last stop left undone."""
        config = self.config
        new_remotes = [remote.name for remote in config.remotes
                       if not self.index.knows_remote(remote.name)]
        returning = [remote.name for remote in config.remotes
                     if remote.name not in new_remotes
                     and remote.name not in self.index.configured_remotes()]
        for remote_config in config.remotes:
            if remote_config.name in new_remotes:
                # Checked on first use only: a remote that goes missing later is
                # offline, not a broken config, and must not stop the mount.
                check_options(drivers[remote_config.name], remote_config.options)
        self.remotes = [Remote(remote, self.index.remote_id(remote.name), drivers[remote.name],
                               folder=config.cache_path / "drivers" / remote.name)
                        for remote in config.remotes]
        self.replicator = Replicator(self.index, self.remotes, config.block_size, config.stall)
        for remote in self.remotes:
            if remote.name in new_remotes or remote.name in returning:
                self.replicator.fill(remote)
        self.index.set_configured_remotes([remote.name for remote in config.remotes])
        self.cache = BlockCache(self.index, config.block_size, config.cache_size,
                                config.write_buffer, self.replicator.fetch,
                                self.replicator.replicated)
        self.replicator.cache = self.cache
        self.tree = Tree(self.index, self.cache, self.replicator.schedule, config.upload_delay)
        self.changes = RemoteChanges(self.tree, self.replicator, self.remotes)
        self.replicator.on_conflict = self.changes.keep_both
        self.replicator.on_changed = self.changes.update_file
        self.fs = Filesystem(self.tree, self.replicator, self.status, str(config.cache_path),
                             config.fsync_replicas)
        self.replicator.foreground_idle = self.fs.idle_for
        with self.index.begin() as txn:
            self._tree_empty = not self.index.has_children(ROOT_INO, txn)
        self._unmounted_by_us = False
        # Before anything is served: recovery changes inodes that the mount would show. It
        # reads the whole index, so it runs only when the last stop left it something to do
        # (a crash, a full disk, an older onitufs): a clean stop says there is nothing.
        if not self.index.stopped_cleanly:
            log.info("the last stop was not a clean one: looking for what it left undone")
            self.recover()

    def recover(self) -> None:
        """Finish what a crash interrupted: orphaned inodes go, and content changed since
        its last revision (the inode says so, or blocks were stored for it since) becomes
        a revision of what is stored, so that the mount and the remotes agree again."""
        with self.index.begin() as txn:
            stored_since = self.index.unrevised(txn)
        for inode in self.tree.purge_orphans():
            if unrevised(inode, stored_since):
                log.info("inode %d changed before a crash: making its revision", inode.ino)
                with self.index.write() as txn:
                    self.cache.trim(txn, inode)
                    if not inode.dirty:
                        inode.version += 1
                    self.index.put_inode(txn, inode)
                self.tree.make_revision(inode.ino, delay=0)

    def left_to_recover(self) -> str | None:
        """What recover() would find to do first (None: nothing), said for the log."""
        with self.index.begin() as txn:
            stored_since = self.index.unrevised(txn)
            for inode in self.index.all_inodes(txn):
                if inode.nlink == 0:
                    return f"inode {inode.ino} has no name left"
                if unrevised(inode, stored_since):
                    return f"inode {inode.ino} holds content that is no revision yet"
        return None

    def status(self) -> dict[str, Any]:
        """What `onitufs status` shows: schema STATUS_SCHEMA, described field by field in
        onitufs(1) under status. Fields are only ever added; a change of meaning, or one
        taken away, raises the schema number."""
        return {
            "schema": STATUS_SCHEMA,
            "pid": os.getpid(),
            "mountpoint": str(self.mountpoint or ""),
            "config": str(self.config.source),
            "cache": str(self.config.cache_path),
            "cache_bytes": self.cache.stored_bytes,
            "cache_limit": self.config.cache_size,
            "unsaved_bytes": self.cache.dirty_bytes,
            "remotes": [self._remote_status(remote) for remote in self.remotes],
        }

    def _remote_status(self, remote: Remote) -> dict[str, Any]:
        state, reason = self.replicator.state(remote)
        pending_bytes = self.replicator.pending_bytes(remote)
        rate = remote.health.throughput.per_second()
        return {
            "name": remote.name,
            "driver": remote.config.driver,
            "mode": remote.config.mode,
            "state": state,
            "reason": reason,
            "online": remote.health.online,
            "last_error": remote.health.last_error,
            "change_error": remote.health.change_error,
            "failures": remote.health.failures,
            "pending": self.replicator.pending_count(remote),
            "pending_bytes": pending_bytes,
            "stalled": self.replicator.stalled(remote),
            "in_flight": self.replicator.in_flight(remote),
            "done": remote.health.done,
            "bytes_sent": remote.health.bytes_sent,
            "bytes_per_second": round(rate),
            # at the rate of the last seconds; None while bytes are queued and none move
            "eta_seconds": 0 if not pending_bytes else round(pending_bytes / rate) if rate
            else None,
            "transfer": self._transfer_status(remote),
        }

    @staticmethod
    def _transfer_status(remote: Remote) -> dict[str, int | None] | None:
        """How far the driver's own transfer is, if it said so in the last seconds."""
        said = remote.health.transfer
        if said is None or time.monotonic() - said[2] > TRANSFER_SHOWN:
            return None
        return {"done": said[0], "size": said[1]}

    def run(self, options: set[str], ready: Callable[[], None]) -> bool:
        """Mount, serve until unmounted, flush; True when every remote got everything."""
        # The thread that serves the mount waits for the GIL behind the threads of driver
        # calls and hashing at each request; Python hands it over after 5 ms by default,
        # which a git clone of 1,400 files paid some thousand times over.
        sys.setswitchinterval(SWITCH_INTERVAL)
        keep_freed_blocks(self.config.block_size, self.config.write_buffer)
        try:
            pyfuse3.init(self.fs, str(self.mountpoint), options)
        except RuntimeError as error:
            self.index.close()
            raise MountError(f"{self.mountpoint}: the kernel refused the mount ({error})") from None
        log.info("mounted %s", self.mountpoint)
        self.tree.kernel = self.fs.kernel
        try:
            return trio.run(self._serve, ready)
        finally:
            self.index.close()

    def run_job(self, job: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """Run the engine (drivers, replicator) around `job` without mounting anything,
        then flush: what `onitufs fsck` and `onitufs verify` do their work in."""
        try:
            return trio.run(self._engine, job)
        finally:
            self.index.close()

    async def _serve(self, ready: Callable[[], None]) -> bool:
        async def serve() -> None:
            try:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._signals)
                    nursery.start_soon(self._connected, ready)
                    nursery.start_soon(self.first_listings)
                    nursery.start_soon(self.fs.kernel.run)
                    await pyfuse3.main()
                    nursery.cancel_scope.cancel()
            finally:
                # only once no task writes to the session any more
                pyfuse3.close(unmount=self._unmounted_by_us)
            log.info("unmounted %s: uploading what is still queued", self.mountpoint)

            notify("STOPPING=1", "STATUS=unmounted: uploading what is still queued")
        _, complete = await self._engine(serve)
        return complete

    async def _connected(self, ready: Callable[[], None]) -> None:
        """Once the kernel has taken the answer to its INIT request, which sets the read-ahead
        again: a stat through the mount waits for that. Then the mount is ready for use."""
        assert self.mountpoint is not None
        root = await trio.to_thread.run_sync(os.stat, self.mountpoint)
        widen_read_ahead(root.st_dev, self.cache.block_size)
        ready()

    async def first_listings(self) -> None:
        """Let the mount show its tree: at once when the index holds one, which the remotes'
        listings then bring up to date; on a first mount (an empty tree) once each readable
        remote that answers has had its first listing taken in, FIRST_LISTING_WAIT at most.
        An empty folder meanwhile would say the remotes hold nothing, to a person as to a
        script's `rsync --delete` from the mount."""
        if self._tree_empty:
            readable = [remote for remote in self.remotes if remote.config.readable]
            with trio.move_on_after(FIRST_LISTING_WAIT) as waiting:
                for remote in readable:
                    await self.replicator.first_listing_in(remote)
            if waiting.cancelled_caught:
                log.warning("the remotes' first listings are not all in after %.0f s: the "
                            "mount shows what came so far", FIRST_LISTING_WAIT)
        self.fs.tree_known.set()

    async def _engine(self, job: Callable[[], Awaitable[T]]) -> tuple[T, bool]:
        """The remotes and the replicator running while `job` runs; then the final flush."""
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.fs.upkeep)
            nursery.start_soon(self.replicator.run)
            for remote in self.remotes:
                nursery.start_soon(remote.run_driver, self.changes, self.fs.busy)
            result = await job()
            finished = False
            try:
                await self.cache.settle()
                self.fs.finish()
                finished = True
            except lmdb.Error as error:  # a full disk: what was never closed is not kept
                log.error("cannot store what was written last to the cache (%s): %s",
                          self.config.cache_path, error)
            complete = await self.replicator.flush()
            for remote in self.remotes:
                remote.stop()
                remote.leave_calls()  # a remote that hangs holds the exit no longer
            nursery.cancel_scope.cancel()
        # Nothing writes any more: the next start may skip recovery if there is none to do.
        # Checked rather than assumed, at the cost of one read of the index on the way out.
        left = self.left_to_recover() if finished else "what was written last is not stored"
        if left is None:
            with contextlib.suppress(lmdb.Error):  # a full disk: the next start recovers
                self.index.mark_clean_stop()
        else:
            log.info("not marked as a clean stop (%s): the next start recovers", left)
        log.info("all remotes up to date" if complete else "stopped with uploads still queued")
        return result, complete

    async def _signals(self) -> None:
        with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM, signal.SIGHUP) as received:
            async for signum in received:
                log.info("%s: unmounting", signal.Signals(signum).name)
                # A first mount's lookups waiting for the listings go with what came so far:
                # a process waiting in one keeps the folder busy.
                self.fs.tree_known.set()
                result = await trio.to_thread.run_sync(lambda: subprocess.run(
                    ["fusermount3", "-u", str(self.mountpoint)], capture_output=True, text=True))
                if result.returncode != 0:
                    # Busy: stop serving now; the kernel detaches the mount when we close.
                    log.warning("unmount: %s; detaching instead", result.stderr.strip())
                    self._unmounted_by_us = True
                    await self.fs.kernel.stop()
                    pyfuse3.terminate()


def unrevised(inode: Inode, stored_since: set[int]) -> bool:
    """Whether the content of a named inode changed since its last revision (the inode says
    so, or blocks were stored for it since), and is to become one: not content cut short by
    a full disk, which is kept here only."""
    return not inode.flags & FLAG_WRITE_FAILED and (inode.dirty or inode.ino in stored_since)


def describe_error(error: BaseException) -> str:
    if isinstance(error, ConfigError | MountError | CacheError):
        return str(error)
    return f"{type(error).__name__}: {error}"
