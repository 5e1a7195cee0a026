"""The FUSE operations: what the kernel asks, answered from the tree and the block cache.

Writes go to the block cache and return; close and fsync turn them into a
revision for the replicator. Everything here runs on the trio thread, and
no LMDB transaction is held across an await.

Control and state are extended attributes, so they work through any tool:
``user.onitufs.replicas`` on any file names the remotes holding its current
revision and those still pending, ``user.onitufs.sha256`` is its checksum
once known (at close for a file written in order, else after an upload has
read it whole); on the mount's root,
``user.onitufs.status`` is the daemon's status as JSON and setting
``user.onitufs.flush`` starts uploading everything queued at once.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import logging
import math
import os
import stat
import time
from collections.abc import Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec, TypeVar

import lmdb
import pyfuse3
import trio

from .blockcache import BlockLost, NoRoom
from .index import (
    FLAG_COMPLETE,
    FLAG_WRITE_FAILED,
    NO_HASH,
    ROOT_INO,
    Inode,
    clamped_ns,
    now_ns,
)
from .replicator import BUSY_WINDOW, FetchError, Replicator
from .tree import NAME_MAX, KernelNotifier, NewNode, Tree, TreeError

log = logging.getLogger(__name__)
P = ParamSpec("P")
R = TypeVar("R")
# How long the kernel may answer lookups and stats from its own cache. Every change the
# mount does not make itself (a remote's) is told to the kernel (see Kernel), so this only
# bounds how long a notice the kernel refused leaves it wrong; a long one lets git status,
# find and make stat a tree the kernel knows without asking the daemon.
ATTR_TIMEOUT = 60.0
SETTLE_WAIT = 1.0  # seconds an EIO waits for the kernel to hear of names changed
RELATIME_NS = 24 * 3600 * 10**9
SETTLE_SECONDS = 10.0  # a file held open but idle this long gets a revision anyway
COMMIT_INTERVAL = 1.0
SYNC_INTERVAL = 5.0  # how much a power loss may take of what was not fsynced
# What programs that only watch the mount ask (onitufs status, df, a desktop's free-space
# applet): no use of it, and a wait for uploads must not slow them down.
WATCHING_OPERATIONS = {"getxattr", "listxattr", "statfs"}
XATTR_PREFIX = b"user.onitufs."
XATTR_SIZE_MAX = 65536
# ACLs and security labels are not kept: the kernel checks permissions from the mode bits.
UNSTORED_NAMESPACES = (b"system.", b"security.")


def fuse_errors(
    function: Callable[Concatenate[Filesystem, P], Coroutine[Any, Any, R]],
) -> Callable[Concatenate[Filesystem, P], Coroutine[Any, Any, R]]:
    """Turn every failure into an errno: pyfuse3 stops the mount on anything but FUSEError.
    Also notes when the mount was last used, so background work can yield to users."""
    busy = function.__name__ not in WATCHING_OPERATIONS

    @functools.wraps(function)
    async def wrapper(fs: Filesystem, /, *args: P.args, **kwargs: P.kwargs) -> R:
        if busy:
            fs.last_request = time.monotonic()
        try:
            return await function(fs, *args, **kwargs)
        except pyfuse3.FUSEError:
            raise
        except TreeError as error:
            raise pyfuse3.FUSEError(error.errno) from None
        except (lmdb.MapFullError, lmdb.DiskError):
            log.error("the cache is full: no room for more data")
            raise pyfuse3.FUSEError(errno.ENOSPC) from None
        except lmdb.Error as error:
            if fs.space.explains(error):
                log.error("the disk of the cache is full: %s", error)
                raise pyfuse3.FUSEError(errno.ENOSPC) from None
            log.exception("index error in %s", function.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None
        except Exception:
            log.exception("unexpected error in %s", function.__name__)
            raise pyfuse3.FUSEError(errno.EIO) from None

    return wrapper


@dataclass
class Handle:
    ino: int
    flags: int


class Kernel(KernelNotifier):
    """Tells the kernel about names a remote changed, off the request path, and only while
    the session is open.

    pyfuse3's invalidate_entry_async hands them to a thread that nobody waits for: one that
    wrote after pyfuse3.close() would write into whatever file took the session's
    descriptor, and one blocked in the kernel keeps the daemon from exiting. Here the
    notifications run in a task of the serving nursery, which ends, the one in flight
    done, before the session closes; later ones are dropped, as there is no kernel cache
    left to correct.

    One in flight may wait for a folder's lock that a process holds while it waits for
    our answer to its request: it ends only while the session still serves requests.
    Whatever stops serving first (pyfuse3.terminate) calls stop() before.
    """

    def __init__(self) -> None:
        self._send, self._receive = trio.open_memory_channel[tuple[int, bytes]](math.inf)
        self._queued = self._sent = 0
        self._moved = trio.Event()  # set, and replaced, at each notification sent
        self._stopping = False
        self._stopped = trio.Event()

    def entry_changed(self, parent: int, name: bytes) -> None:
        with contextlib.suppress(trio.ClosedResourceError):
            self._send.send_nowait((parent, name))
            self._queued += 1

    async def run(self) -> None:
        """Send the notifications until stopped or cancelled."""
        try:
            async for parent, name in self._receive:
                if self._stopping:  # what is still queued is dropped
                    break
                await trio.to_thread.run_sync(invalidate, parent, name)
                self._sent += 1
                self._moved.set()
                self._moved = trio.Event()
        finally:
            self._send.close()
            self._stopped.set()

    async def stop(self) -> None:
        """Send no more notifications; return once the one in flight, if any, is done."""
        self._stopping = True
        self._send.close()
        await self._stopped.wait()

    async def settled(self) -> None:
        """Until the notifications queued so far are sent: an error answered after a name was
        taken to a new version must not leave the kernel showing the old one to the next
        open. At most SETTLE_WAIT seconds: the kernel may be waiting for a folder's lock."""
        target = self._queued
        with trio.move_on_after(SETTLE_WAIT):
            while self._sent < target:
                await self._moved.wait()


def invalidate(parent: int, name: bytes) -> None:
    """Drop the name, and the folder's attributes (its times and link count changed with
    it), from the kernel's cache. May block until the kernel has the folder's lock, which
    a request we answer may hold: hence a thread of its own."""
    notices: tuple[Callable[[], None], ...] = (
        functools.partial(pyfuse3.invalidate_entry, parent, name),
        functools.partial(pyfuse3.invalidate_inode, parent, attr_only=True))
    for notice in notices:
        try:
            notice()
        except FileNotFoundError:
            pass  # the kernel had not cached that name, or that folder
        except OSError as error:
            log.warning("cannot tell the kernel that %r changed: %s", name, error)


class Filesystem(pyfuse3.Operations):
    enable_writeback_cache = True

    def __init__(self, tree: Tree, replicator: Replicator, status: Callable[[], dict[str, Any]],
                 cache_dir: str, fsync_replicas: int) -> None:
        super().__init__()
        self.fsync_replicas = fsync_replicas
        self.tree = tree
        self.index = tree.index
        self.cache = tree.cache
        self.replicator = replicator
        self._status = status
        self._cache_dir = cache_dir
        self.space = self.cache.space
        self._handles: dict[int, Handle] = {}
        self._dirs: dict[int, list[tuple[bytes, int]]] = {}
        self._next_fh = 1
        self._last_write: dict[int, float] = {}
        self.last_request = 0.0
        self.kernel = Kernel()  # the tree is told of it once the kernel has the mount
        # Set once what the index holds may be shown as the tree: at once, or on a first
        # mount after the remotes' first listings (see Mount.first_listings).
        self.tree_known = trio.Event()

    # attributes

    def attributes(self, inode: Inode) -> pyfuse3.EntryAttributes:
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = inode.ino
        attrs.generation = 0
        attrs.entry_timeout = ATTR_TIMEOUT
        attrs.attr_timeout = ATTR_TIMEOUT
        attrs.st_mode = inode.mode
        attrs.st_nlink = inode.nlink
        attrs.st_uid = inode.uid
        attrs.st_gid = inode.gid
        attrs.st_rdev = inode.rdev
        attrs.st_size = inode.size
        attrs.st_blksize = 128 * 1024
        attrs.st_blocks = (inode.size + 511) // 512
        attrs.st_atime_ns = inode.atime_ns
        attrs.st_mtime_ns = inode.mtime_ns
        attrs.st_ctime_ns = inode.ctime_ns
        return attrs

    @fuse_errors
    async def lookup(self, parent_inode: int, name: bytes, ctx: pyfuse3.RequestContext
                     ) -> pyfuse3.EntryAttributes:
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        if name == b".":
            return self._entry(self.tree.inode(parent_inode))
        if name == b"..":
            with self.index.begin() as txn:
                names = self.index.names_of(parent_inode, txn)
            return self._entry(self.tree.inode(names[0][0] if names else ROOT_INO))
        node = self._child(parent_inode, name)
        if node is None and not self.tree_known.is_set():
            await self.tree_known.wait()  # a first mount: the name may be in a listing to come
            node = self._child(parent_inode, name)
        return self._absent() if node is None else self._entry(node)

    def _child(self, parent_inode: int, name: bytes) -> Inode | None:
        try:
            return self.tree.child(parent_inode, name)
        except TreeError as error:
            if error.errno != errno.ENOENT:
                raise
            return None

    def _absent(self) -> pyfuse3.EntryAttributes:
        """A name that is not there, which the kernel keeps as such for ATTR_TIMEOUT (an
        inode number 0) as it keeps the names that are: git status and make look up the
        same missing names (.gitignore, include paths, implicit rules) over and over. A
        name a remote makes is told to the kernel (entry_changed), as one it removes."""
        attrs = pyfuse3.EntryAttributes()
        attrs.st_ino = 0
        attrs.entry_timeout = ATTR_TIMEOUT
        return attrs

    def _entry(self, node: Inode) -> pyfuse3.EntryAttributes:
        """The attributes of an inode handed to the kernel, which counts it until forget."""
        self.tree.lookups[node.ino] = self.tree.lookups.get(node.ino, 0) + 1
        return self.attributes(node)

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        unlinked = []
        for ino, count in inode_list:
            left = self.tree.lookups.pop(ino, 0) - count
            if left > 0:
                self.tree.lookups[ino] = left
            elif ino in self.tree.unlinked:
                unlinked.append(ino)
        if not unlinked:
            return
        try:
            # One transaction for what the kernel forgets at once (rm -rf: hundreds of
            # inodes), whose commit is paid on the thread that serves the mount.
            with self.index.write() as txn:
                for ino in unlinked:
                    self.tree.purge_unused(txn, ino)
        except lmdb.Error as error:  # forget has no reply: the next mount purges them
            log.error("cannot drop unlinked inodes: %s", error)

    @fuse_errors
    async def getattr(self, inode: int, ctx: pyfuse3.RequestContext | None = None
                      ) -> pyfuse3.EntryAttributes:
        return self.attributes(self.tree.inode(inode))

    @fuse_errors
    async def setattr(self, inode: int, attr: pyfuse3.EntryAttributes,
                      fields: pyfuse3.SetattrFields, fh: int | None,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.tree.inode(inode)
        # With the writeback cache the kernel keeps the times itself and hands them back,
        # the mtime with the ctime even where only the ctime moved (after an unlink, by
        # thousands in rm -rf). Times, and values set to what they were, concern no remote:
        # they are written with the next commit.
        times_only = not (
            fields.update_size
            or (fields.update_mode and attr.st_mode & 0o7777 != node.mode & 0o7777)
            or (fields.update_uid and attr.st_uid != node.uid)
            or (fields.update_gid and attr.st_gid != node.gid)
            or (fields.update_mtime and attr.st_mtime_ns != node.mtime_ns))
        if fields.update_size:
            if not node.is_reg:
                raise pyfuse3.FUSEError(errno.EINVAL if not node.is_dir else errno.EISDIR)
            await self._truncate(node, attr.st_size)
        if fields.update_mode:
            node.mode = stat.S_IFMT(node.mode) | (attr.st_mode & 0o7777)
        if fields.update_uid:
            node.uid = attr.st_uid
        if fields.update_gid:
            node.gid = attr.st_gid
        if fields.update_atime:
            node.atime_ns = clamped_ns(attr.st_atime_ns)
        if fields.update_mtime:
            node.mtime_ns = clamped_ns(attr.st_mtime_ns)
        node.ctime_ns = attr.st_ctime_ns if fields.update_ctime else now_ns()
        if node.dirty or times_only:
            self.index.defer_inode(node)  # written with the next commit, like its data
        else:
            with self.index.write() as txn:
                self.index.put_inode(txn, node)
                self.tree.attributes_changed(txn, node)
        if fields.update_size and not self.tree.open_counts.get(inode):
            await self._revise(inode)
        return self.attributes(node)

    async def _truncate(self, node: Inode, size: int) -> None:
        """Cut or extend the content; the cut and the new size commit together."""
        with self.cache.kept(node.ino):  # made complete, it stays so until cut
            if size or node.complete:  # (cut to nothing, none of the old content is needed)
                await self._fit_to_change(node, min(size, node.size), 1)
            with self.index.write() as txn:
                if not node.complete:
                    self.cache.drop(txn, node.ino)
                    node.flags |= FLAG_COMPLETE
                node.flags &= ~FLAG_WRITE_FAILED  # written anew from here on
                self.cache.truncate(txn, node, size)
                node.size = size
                self.tree.content_changed(node)
                self.index.put_inode(txn, node)

    async def _fit_to_change(self, node: Inode, offset: int, length: int) -> None:
        """Have every block a change touches local and sound, or fail with EIO."""
        try:
            await self.cache.make_complete(node)
            await self.cache.make_sound(node, offset, length)
        except (FetchError, BlockLost) as error:
            log.error("cannot change %s: its content cannot be fetched: %s",
                      self.index.describe(node.ino), error)
            await self.kernel.settled()
            raise pyfuse3.FUSEError(errno.EIO) from None
        except NoRoom as error:
            log.error("cannot change %s: %s", self.index.describe(node.ino), error)
            raise pyfuse3.FUSEError(errno.ENOSPC) from None

    # names

    def _new_node(self, parent: Inode, mode: int, ctx: pyfuse3.RequestContext, rdev: int = 0,
                  target: bytes = b"") -> NewNode:
        gid = ctx.gid
        if parent.mode & stat.S_ISGID:  # BSD group semantics for setgid folders
            gid = parent.gid
            if stat.S_ISDIR(mode):
                mode |= stat.S_ISGID
        return NewNode(mode, ctx.uid, gid, rdev=rdev, target=target, size=len(target))

    async def _make(self, parent_inode: int, name: bytes, mode: int, ctx: pyfuse3.RequestContext,
                    rdev: int = 0, target: bytes = b"") -> Inode:
        parent = self.tree.inode(parent_inode)
        with self.index.write() as txn:
            return self.tree.create(txn, parent_inode, name,
                                    self._new_node(parent, mode, ctx, rdev, target))

    @fuse_errors
    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self._make(parent_inode, name, stat.S_IFDIR | (mode & 0o7777), ctx)
        return self._entry(node)

    @fuse_errors
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        return self._entry(await self._make(parent_inode, name, mode, ctx, rdev=rdev))

    @fuse_errors
    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = await self._make(parent_inode, name, stat.S_IFLNK | 0o777, ctx, target=target)
        return self._entry(node)

    @fuse_errors
    async def readlink(self, inode: int, ctx: pyfuse3.RequestContext) -> bytes:
        node = self.tree.inode(inode)
        if not node.is_symlink:
            raise pyfuse3.FUSEError(errno.EINVAL)
        return node.target

    @fuse_errors
    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: pyfuse3.RequestContext) -> pyfuse3.EntryAttributes:
        node = self.tree.inode(inode)
        with self.index.write() as txn:
            self.tree.link(txn, node, new_parent_inode, new_name)
        return self._entry(node)

    @fuse_errors
    async def unlink(self, parent_inode: int, name: bytes,
                     ctx: pyfuse3.RequestContext) -> None:
        with self.index.write() as txn:
            self.tree.unlink(txn, parent_inode, name)

    @fuse_errors
    async def rmdir(self, parent_inode: int, name: bytes,
                    ctx: pyfuse3.RequestContext) -> None:
        with self.index.write() as txn:
            self.tree.rmdir(txn, parent_inode, name)

    @fuse_errors
    async def rename(self, parent_inode_old: int, name_old: bytes,
                     parent_inode_new: int, name_new: bytes, flags: int,
                     ctx: pyfuse3.RequestContext) -> None:
        with self.index.write() as txn:
            if flags & pyfuse3.RENAME_EXCHANGE:
                self.tree.exchange(txn, parent_inode_old, name_old, parent_inode_new, name_new)
            else:
                self.tree.rename(txn, parent_inode_old, name_old, parent_inode_new, name_new,
                                 noreplace=bool(flags & pyfuse3.RENAME_NOREPLACE))

    # directories

    @fuse_errors
    async def opendir(self, inode: int, ctx: pyfuse3.RequestContext) -> int:
        if not self.tree.inode(inode).is_dir:
            raise pyfuse3.FUSEError(errno.ENOTDIR)
        fh = self._new_fh()
        self._dirs[fh] = []
        self._handles[fh] = Handle(inode, 0)
        return fh

    @fuse_errors
    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        if start_id == 0 and not self.tree_known.is_set():
            await self.tree_known.wait()
        # One read transaction for the whole reply, not one per entry: a folder of a large
        # tree fills a reply with hundreds of entries.
        with self.index.begin() as txn:
            if start_id == 0:  # a fresh listing at opendir and at every rewinddir
                ino = self._handles[fh].ino
                names = self.index.names_of(ino, txn)
                self._dirs[fh] = [(b".", ino), (b"..", names[0][0] if names else ino),
                                  *self.index.children(ino, txn)]
            entries = self._dirs[fh]
            for position in range(start_id, len(entries)):
                name, ino = entries[position]
                node = self.index.get_inode(ino, txn)
                if node is None:
                    continue
                if not pyfuse3.readdir_reply(token, name, self.attributes(node), position + 1):
                    break
                if name not in (b".", b".."):  # the kernel counts the others as looked up
                    self.tree.lookups[ino] = self.tree.lookups.get(ino, 0) + 1

    @fuse_errors
    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
        self._handles.pop(fh, None)

    @fuse_errors
    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self.index.sync()

    # files

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _open(self, ino: int, flags: int) -> pyfuse3.FileInfo:
        fh = self._new_fh()
        self._handles[fh] = Handle(ino, flags)
        self.tree.open_counts[ino] = self.tree.open_counts.get(ino, 0) + 1
        return pyfuse3.FileInfo(fh=fh, keep_cache=True)

    @fuse_errors
    async def open(self, inode: int, flags: int, ctx: pyfuse3.RequestContext) -> pyfuse3.FileInfo:
        node = self.tree.inode(inode)
        if node.is_dir:
            raise pyfuse3.FUSEError(errno.EISDIR)
        if flags & os.O_TRUNC and node.size:  # libfuse asks for atomic O_TRUNC: it is ours
            await self._truncate(node, 0)
        return self._open(inode, flags)

    @fuse_errors
    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: pyfuse3.RequestContext) -> tuple[pyfuse3.FileInfo, pyfuse3.EntryAttributes]:
        if not flags & os.O_EXCL and self._child(parent_inode, name) is not None:
            # The kernel held the name as missing while a remote's file took it, and is
            # not told yet: ESTALE has it look the name up afresh (LOOKUP_REVAL) and open
            # that file, as open(2) without O_EXCL does on a disk, not fail with EEXIST.
            raise pyfuse3.FUSEError(errno.ESTALE)
        node = await self._make(parent_inode, name, stat.S_IFREG | (mode & 0o7777), ctx)
        return self._open(node.ino, flags), self._entry(node)

    @fuse_errors
    async def read(self, fh: int, off: int, size: int) -> bytes:
        node = self.tree.inode(self._handles[fh].ino)
        if node.atime_ns <= max(node.mtime_ns, node.ctime_ns) \
                or now_ns() - node.atime_ns > RELATIME_NS:  # as relatime does on Linux disks
            node.atime_ns = now_ns()
            self.index.defer_inode(node)
        try:
            return await self.cache.read(node, off, size)
        except (FetchError, BlockLost) as error:
            log.error("cannot read %s: %s", self.index.describe(node.ino), error)
            await self.kernel.settled()  # a remote's newer version taken in meanwhile
            raise pyfuse3.FUSEError(errno.EIO) from None

    @fuse_errors
    async def write(self, fh: int, off: int, buf: bytes) -> int:
        node = self.tree.inode(self._handles[fh].ino)
        with self.cache.kept(node.ino):  # made complete, it stays so while the write waits
            start = min(off, node.size)  # (a write past the end changes the last block too)
            await self._fit_to_change(node, start, off + len(buf) - start)
            if not self.space.room_for(len(buf), self.cache.unstored_bytes):
                await self._make_room(len(buf))
                if not self.space.room_for(len(buf), self.cache.unstored_bytes):
                    self._write_failed(node, "no space left on the disk of the cache")
                    raise pyfuse3.FUSEError(errno.ENOSPC)
            if self.cache.excess(self._being_written()) > 0:
                await self._wait_for_room(node)
            self.cache.write(node, off, buf)
        node.size = max(node.size, off + len(buf))
        self.tree.content_changed(node)  # setuid bits: the kernel clears them by setattr
        self._last_write[node.ino] = time.monotonic()
        if self.cache.over_dirty_limit():
            try:
                await self.cache.relieve()
            except lmdb.Error as error:  # kept buffered; this write is refused
                self._write_failed(node, str(error))
                raise
            self.cache.evict()
        return len(buf)

    async def _make_room(self, size: int) -> None:
        """Store what is buffered and drop what can go, to measure the room left anew."""
        with contextlib.suppress(lmdb.Error):  # the disk may be full: measured below
            await self.cache.settle()
            self.cache.commit()
        self.cache.make_room(size)

    def _being_written(self) -> set[int]:
        return {handle.ino for handle in self._handles.values()
                if handle.flags & os.O_ACCMODE != os.O_RDONLY}

    async def _wait_for_room(self, node: Inode) -> None:
        """Closed files fill the cache past its size: the writer waits while uploads make
        room, as writers of a disk wait for its writeback, and gets ENOSPC once they get
        nowhere for `stall` seconds (a remote down or full)."""
        replicator = self.replicator
        progress, since = replicator.last_progress(), time.monotonic()
        waiting = False
        while True:
            writing = self._being_written()
            excess = self.cache.excess(writing)
            if excess > 0 and self.cache.evict(excess, sparing=writing):
                since = time.monotonic()
                excess = self.cache.excess(writing)
            if excess <= 0:
                return
            if not waiting:
                waiting = True
                replicator.start_flush()  # what waits for upload_delay goes now
                log.info("%s: the cache is at its size (%d bytes) with nothing it may drop: "
                         "the write waits for uploads", self.index.describe(node.ino),
                         self.cache.size_limit)
            if replicator.last_progress() != progress:
                progress, since = replicator.last_progress(), time.monotonic()
            stuck = None if replicator.can_make_room() else replicator.why_stuck()
            if stuck is None and time.monotonic() - since > replicator.stall:
                stuck = f"no upload got anywhere for {replicator.stall:.0f} s"
            if stuck is not None:
                self._write_failed(node, f"the cache is at its size ({self.cache.size_limit} "
                                   f"bytes) and uploads make no room: {stuck}")
                raise pyfuse3.FUSEError(errno.ENOSPC)
            await trio.sleep(0.1)

    def _write_failed(self, node: Inode, why: str) -> None:
        """The content is cut short: the remotes keep the last whole revision."""
        if not node.flags & FLAG_WRITE_FAILED:
            log.error("%s: a write failed (%s); it is not uploaded until it is written anew "
                      "(opened with O_TRUNC, or truncated) or deleted", self.index.describe(node.ino),
                      why)
        node.flags |= FLAG_WRITE_FAILED
        self.index.defer_inode(node)

    async def _revise(self, ino: int, delay: float | None = None) -> None:
        """Store what was written and make it a revision; a full disk fails the call."""
        node = self.index.get_inode(ino)
        if node is None or not (node.dirty or self.cache.has_dirty(ino)):
            return  # nothing written (a file only read)
        try:
            await self.cache.settle()
            self.tree.make_revision(ino, delay)
        except lmdb.Error as error:
            self._write_failed(node, str(error))
            raise

    @fuse_errors
    async def flush(self, fh: int) -> None:
        await self._revise(self._handles[fh].ino)

    @fuse_errors
    async def fsync(self, fh: int, datasync: bool) -> None:
        ino = self._handles[fh].ino
        await self._revise(ino, delay=0 if self.fsync_replicas else None)
        self.index.sync()
        if self.fsync_replicas:
            self.replicator.expedite(ino)  # a revision made at an earlier close goes now too
        if self.fsync_replicas and not await self.replicator.wait_held(ino, self.fsync_replicas):
            log.error("fsync of %s: fewer than %d remotes can hold it now", self.index.describe(ino),
                      self.fsync_replicas)
            raise pyfuse3.FUSEError(errno.EIO)

    @fuse_errors
    async def release(self, fh: int) -> None:
        handle = self._handles.pop(fh)
        ino = handle.ino
        remaining = self.tree.open_counts[ino] - 1
        if remaining:
            self.tree.open_counts[ino] = remaining
        else:
            del self.tree.open_counts[ino]
            self._last_write.pop(ino, None)
        node = self.index.get_inode(ino)
        if node is not None and node.nlink == 0:
            if not self.tree.in_use(ino):
                with self.index.write() as txn:
                    self.tree.purge(txn, node)
        elif node is not None:
            await self._revise(ino)
            self.cache.evict()

    # file system

    @fuse_errors
    async def statfs(self, ctx: pyfuse3.RequestContext) -> pyfuse3.StatvfsData:
        disk = os.statvfs(self._cache_dir)
        data = pyfuse3.StatvfsData()
        data.f_bsize = 128 * 1024
        data.f_frsize = disk.f_frsize
        data.f_blocks = disk.f_blocks
        data.f_bfree = disk.f_bfree
        data.f_bavail = disk.f_bavail
        data.f_files = disk.f_files or 2**32
        data.f_ffree = disk.f_ffree or 2**32
        data.f_favail = disk.f_favail or 2**32
        data.f_namemax = NAME_MAX
        return data

    # extended attributes

    @fuse_errors
    async def getxattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> bytes:
        if name.startswith(XATTR_PREFIX):
            return self._control_xattr(inode, name[len(XATTR_PREFIX):])
        if name.startswith(UNSTORED_NAMESPACES):
            # The kernel asks for security.capability before every write: answer at once.
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        self.tree.inode(inode)
        value = self.index.get_xattr(inode, name)
        if value is None:
            raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
        return value

    def _control_xattr(self, inode: int, key: bytes) -> bytes:
        if key == b"replicas":
            node = self.tree.inode(inode)
            return self._replicas(node).encode()
        if key == b"sha256":
            node = self.tree.inode(inode)
            if node.is_reg and not node.dirty and node.sha256 != NO_HASH:
                return node.sha256.hex().encode()
        if key == b"status" and inode == ROOT_INO:
            return json.dumps(self._status(), indent=1).encode()
        raise pyfuse3.FUSEError(pyfuse3.ENOATTR)

    def _replicas(self, node: Inode) -> str:
        lines = []
        with self.index.begin() as txn:
            for remote in self.replicator.remotes:
                entries = self.index.mirror(remote.rid, node.ino, txn).values()
                if not node.dirty and any(node.is_dir or e.rev == node.rev for e in entries):
                    state = "held"
                elif remote.config.writable:
                    state = "pending"
                else:
                    state = "not held (read-only remote)"
                lines.append(f"{remote.name}: {state}")
        return "\n".join(lines) + "\n"

    @fuse_errors
    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: pyfuse3.RequestContext) -> None:
        if name.startswith(XATTR_PREFIX):
            if name == XATTR_PREFIX + b"flush" and inode == ROOT_INO:
                self.replicator.start_flush()
                return
            raise pyfuse3.FUSEError(errno.EPERM)
        if name.startswith(UNSTORED_NAMESPACES):
            raise pyfuse3.FUSEError(errno.EOPNOTSUPP)
        if len(value) > XATTR_SIZE_MAX:
            raise pyfuse3.FUSEError(errno.E2BIG)
        node = self.tree.inode(inode)
        with self.index.write() as txn:
            self.index.set_xattr(txn, inode, name, value)
            node.ctime_ns = now_ns()
            self.index.put_inode(txn, node)
            self.tree.attributes_changed(txn, node)

    @fuse_errors
    async def listxattr(self, inode: int, ctx: pyfuse3.RequestContext) -> list[bytes]:
        self.tree.inode(inode)
        return self.index.list_xattrs(inode)

    @fuse_errors
    async def removexattr(self, inode: int, name: bytes, ctx: pyfuse3.RequestContext) -> None:
        node = self.tree.inode(inode)
        with self.index.write() as txn:
            if not self.index.remove_xattr(txn, inode, name):
                raise pyfuse3.FUSEError(pyfuse3.ENOATTR)
            node.ctime_ns = now_ns()
            self.index.put_inode(txn, node)
            self.tree.attributes_changed(txn, node)

    # upkeep

    async def upkeep(self) -> None:
        """Commit buffered writes, give idle open files a revision, keep the cache in size.
        A full disk fails a round, never the mount: what is buffered stays buffered (the
        writers meanwhile get ENOSPC), and the next round tries again."""
        last_sync = time.monotonic()
        failing: str | None = None
        while True:
            await trio.sleep(COMMIT_INTERVAL)
            try:
                last_sync = await self._upkeep_round(last_sync)
            except (lmdb.Error, OSError) as error:
                if str(error) != failing:
                    log.error("cannot store to the cache (%s): %s", self._cache_dir, error)
                failing = str(error)
            else:
                if failing is not None:
                    log.info("the cache takes data again")
                failing = None

    async def _upkeep_round(self, last_sync: float) -> float:
        if self.cache.dirty_bytes:
            await self.cache.settle()
            self.cache.commit()
        if time.monotonic() - last_sync > SYNC_INTERVAL:
            await trio.to_thread.run_sync(self.index.sync)
            last_sync = time.monotonic()
        now = time.monotonic()
        for ino, last in list(self._last_write.items()):
            if now - last > SETTLE_SECONDS:
                del self._last_write[ino]
                await self._revise(ino)
        self.cache.evict()
        return last_sync

    def idle_for(self) -> float:
        """Seconds since the mount last served someone (onitufs status and df aside)."""
        return time.monotonic() - self.last_request

    def busy(self) -> bool:
        """Whether users are working with the mount right now."""
        return self.idle_for() < BUSY_WINDOW

    def finish(self) -> None:
        """Called after the kernel let go: everything buffered becomes a revision."""
        self.cache.commit()
        for ino in list(self.tree.open_counts):
            self.tree.make_revision(ino, delay=0)
        self.tree.lookups.clear()
        self.tree.purge_unlinked()  # the nameless inodes the kernel knew until now
        self.index.sync()

