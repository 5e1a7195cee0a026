"""Changes to the namespace and to content revisions, whoever asks for them.

The FUSE layer (a user's change) and the remote watcher (a change found on
a remote) both change the tree through this one class, so both keep the
same invariants: link counts, times, the revisions of content, and the work
queued for every remote that must follow.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

import lmdb

from .blockcache import BlockCache
from .index import (
    FLAG_COMPLETE,
    FLAG_WRITE_FAILED,
    NO_HASH,
    ROOT_INO,
    Index,
    Inode,
    clamped_ns,
    now_ns,
)
from .plug import MARKER

NAME_MAX = 255
# schedule(txn, ino, delay, source): queue the inode for every remote but `source`.
Schedule = Callable[[lmdb.Transaction, int, float, int | None], None]


class TreeError(Exception):
    def __init__(self, code: int, message: str = "") -> None:
        super().__init__(message or errno.errorcode.get(code, str(code)))
        self.errno = code


class KernelNotifier:
    """Tells the kernel that a name it may have cached changed behind its back."""

    def entry_changed(self, parent: int, name: bytes) -> None:
        pass


@dataclass
class NewNode:
    mode: int
    uid: int
    gid: int
    rdev: int = 0
    target: bytes = b""
    size: int = 0
    mtime_ns: int | None = None


class Tree:
    def __init__(self, index: Index, cache: BlockCache, schedule: Schedule,
                 upload_delay: float) -> None:
        self.index = index
        self.cache = cache
        self.schedule = schedule
        self.upload_delay = upload_delay
        self.kernel = KernelNotifier()
        self.open_counts: dict[int, int] = {}
        # How many times the kernel was handed each inode and has not forgotten it. An inode
        # whose last name went stays until then: a name the kernel cached may still lead to it
        # (a remote's newer version took the name, and the kernel has not been told yet).
        self.lookups: dict[int, int] = {}
        # Inodes left with no name while something still referred to them, to purge once
        # nothing does: a forget of any other inode (the kernel lets go of whole trees at
        # once) needs no look at the index.
        self.unlinked: set[int] = set()

    def in_use(self, ino: int) -> bool:
        """Whether an open handle or the kernel still refers to the inode."""
        return bool(self.open_counts.get(ino) or self.lookups.get(ino))

    def inode(self, ino: int, txn: lmdb.Transaction | None = None) -> Inode:
        inode = self.index.get_inode(ino, txn)
        if inode is None:
            raise TreeError(errno.ENOENT)
        return inode

    def child(self, parent: int, name: bytes, txn: lmdb.Transaction | None = None) -> Inode:
        ino = self.index.lookup(parent, name, txn)
        if ino is None:
            raise TreeError(errno.ENOENT)
        return self.inode(ino, txn)

    def create(self, txn: lmdb.Transaction, parent: int, name: bytes, node: NewNode,
               source: int | None = None) -> Inode:
        check_name(name, parent)
        parent_inode = self.inode(parent, txn)
        if not parent_inode.is_dir:
            raise TreeError(errno.ENOTDIR)
        if self.index.lookup(parent, name, txn) is not None:
            raise TreeError(errno.EEXIST)
        stamp = now_ns()
        is_dir = stat.S_ISDIR(node.mode)
        mtime_ns = stamp if node.mtime_ns is None else clamped_ns(node.mtime_ns)  # (0 is one)
        inode = Inode(self.index.next_ino(txn), node.mode, node.uid, node.gid,
                      2 if is_dir else 1, rdev=node.rdev, size=node.size,
                      atime_ns=stamp, mtime_ns=mtime_ns, ctime_ns=stamp, target=node.target)
        if stat.S_ISREG(node.mode):
            inode.rev = self.index.next_rev(txn)
        self.index.put_inode(txn, inode)
        self.index.link(txn, parent, name, inode.ino)
        if is_dir:
            parent_inode.nlink += 1
        self._touch_dir(txn, parent_inode, stamp)
        self.schedule(txn, inode.ino, self.upload_delay, source)
        return inode

    def unlink(self, txn: lmdb.Transaction, parent: int, name: bytes,
               source: int | None = None) -> Inode:
        inode = self.child(parent, name, txn)
        if inode.is_dir:
            raise TreeError(errno.EISDIR)
        self._remove_name(txn, parent, name, inode, source)
        return inode

    def rmdir(self, txn: lmdb.Transaction, parent: int, name: bytes,
              source: int | None = None) -> Inode:
        inode = self.child(parent, name, txn)
        if not inode.is_dir:
            raise TreeError(errno.ENOTDIR)
        if self.index.has_children(inode.ino, txn):
            raise TreeError(errno.ENOTEMPTY)
        self._remove_name(txn, parent, name, inode, source)
        return inode

    def _remove_name(self, txn: lmdb.Transaction, parent: int, name: bytes, inode: Inode,
                     source: int | None) -> None:
        stamp = now_ns()
        self.index.unlink(txn, parent, name, inode.ino)
        parent_inode = self.inode(parent, txn)
        if inode.is_dir:
            parent_inode.nlink -= 1
            inode.nlink = 0
        else:
            inode.nlink -= 1
        inode.ctime_ns = stamp
        self._touch_dir(txn, parent_inode, stamp)
        self.schedule(txn, inode.ino, self.upload_delay, source)
        self._name_gone(txn, inode)

    def _name_gone(self, txn: lmdb.Transaction, inode: Inode) -> None:
        """Write an inode that lost a name: one left with none goes at once if nothing
        refers to it, else once nothing does (purge_unused)."""
        if inode.nlink == 0 and not self.in_use(inode.ino):
            self.purge(txn, inode)
            return
        if inode.nlink == 0:
            self.unlinked.add(inode.ino)
        self.index.put_inode(txn, inode)

    def purge_unused(self, txn: lmdb.Transaction, ino: int) -> None:
        """Purge an inode of `unlinked` that nothing refers to any more."""
        if not self.in_use(ino):
            self._purge_nameless(txn, ino)

    def purge_unlinked(self) -> None:
        """Purge every inode of `unlinked`: after the mount, when nothing refers to any.
        Only those: the others all have names, which Mount.left_to_recover checks before
        the stop is marked clean, reading every inode once."""
        if self.unlinked:
            with self.index.write() as txn:
                for ino in list(self.unlinked):
                    self._purge_nameless(txn, ino)

    def _purge_nameless(self, txn: lmdb.Transaction, ino: int) -> None:
        self.unlinked.discard(ino)  # if what put it there never committed, it has names
        inode = self.index.get_inode(ino, txn)
        if inode is not None and inode.nlink == 0:
            self.purge(txn, inode)

    def purge_orphans(self) -> list[Inode]:
        """Purge every inode with no name left, reading them all (before the mount, after a
        stop that was not clean); returns the inodes that remain."""
        with self.index.begin() as txn:
            inodes = list(self.index.all_inodes(txn))
        orphans = [inode for inode in inodes if inode.nlink == 0]
        if orphans:
            with self.index.write() as txn:
                for inode in orphans:
                    self.purge(txn, inode)
        return [inode for inode in inodes if inode.nlink]

    def purge(self, txn: lmdb.Transaction, inode: Inode) -> None:
        """Forget an inode that has no name left and that nothing refers to."""
        self.unlinked.discard(inode.ino)
        self.cache.drop(txn, inode.ino)
        self.index.delete_inode(txn, inode.ino)

    def rename(self, txn: lmdb.Transaction, old_parent: int, old_name: bytes,
               new_parent: int, new_name: bytes, noreplace: bool = False,
               source: int | None = None) -> Inode | None:
        """Move a name; returns the inode it replaced, if any."""
        check_name(new_name, new_parent)
        inode = self.child(old_parent, old_name, txn)
        target_parent = self.inode(new_parent, txn)
        if not target_parent.is_dir:
            raise TreeError(errno.ENOTDIR)
        if inode.is_dir and self._is_ancestor(txn, inode.ino, new_parent):
            raise TreeError(errno.EINVAL)
        replaced_ino = self.index.lookup(new_parent, new_name, txn)
        if replaced_ino == inode.ino:
            return None
        replaced = None
        if replaced_ino is not None:
            if noreplace:
                raise TreeError(errno.EEXIST)
            replaced = self.inode(replaced_ino, txn)
            if replaced.is_dir and not inode.is_dir:
                raise TreeError(errno.EISDIR)
            if inode.is_dir and not replaced.is_dir:
                raise TreeError(errno.ENOTDIR)
            if replaced.is_dir:
                self.rmdir(txn, new_parent, new_name, source)
            else:
                self.unlink(txn, new_parent, new_name, source)
        stamp = now_ns()
        self.index.unlink(txn, old_parent, old_name, inode.ino)
        self.index.link(txn, new_parent, new_name, inode.ino)
        if inode.is_dir and old_parent != new_parent:
            old_parent_inode = self.inode(old_parent, txn)
            old_parent_inode.nlink -= 1
            target_parent.nlink += 1
            self.index.put_inode(txn, old_parent_inode)
        self._touch_dir(txn, self.inode(old_parent, txn), stamp)
        self._touch_dir(txn, target_parent, stamp)
        inode.ctime_ns = stamp
        self.index.put_inode(txn, inode)
        self.schedule(txn, inode.ino, self.upload_delay, source)
        return replaced

    def link(self, txn: lmdb.Transaction, inode: Inode, parent: int, name: bytes) -> None:
        """Give an inode one more name (a hard link)."""
        check_name(name, parent)
        parent_inode = self.inode(parent, txn)
        if not parent_inode.is_dir:
            raise TreeError(errno.ENOTDIR)
        if inode.is_dir:
            raise TreeError(errno.EPERM)
        if self.index.lookup(parent, name, txn) is not None:
            raise TreeError(errno.EEXIST)
        stamp = now_ns()
        self.index.link(txn, parent, name, inode.ino)
        inode.nlink += 1
        inode.ctime_ns = stamp
        self.index.put_inode(txn, inode)
        self._touch_dir(txn, parent_inode, stamp)
        self.schedule(txn, inode.ino, self.upload_delay, None)

    def exchange(self, txn: lmdb.Transaction, parent_a: int, name_a: bytes, parent_b: int,
                 name_b: bytes) -> None:
        """Swap two names atomically (RENAME_EXCHANGE)."""
        a = self.child(parent_a, name_a, txn)
        b = self.child(parent_b, name_b, txn)
        if (a.is_dir and self._is_ancestor(txn, a.ino, parent_b)) or \
                (b.is_dir and self._is_ancestor(txn, b.ino, parent_a)):
            raise TreeError(errno.EINVAL)
        self.index.unlink(txn, parent_a, name_a, a.ino)
        self.index.unlink(txn, parent_b, name_b, b.ino)
        self.index.link(txn, parent_a, name_a, b.ino)
        self.index.link(txn, parent_b, name_b, a.ino)
        stamp = now_ns()
        if parent_a != parent_b and a.is_dir != b.is_dir:
            moved_dir_to_b = 1 if a.is_dir else -1
            dir_a, dir_b = self.inode(parent_a, txn), self.inode(parent_b, txn)
            dir_a.nlink -= moved_dir_to_b
            dir_b.nlink += moved_dir_to_b
        for node in (a, b):
            node.ctime_ns = stamp
            self.index.put_inode(txn, node)
            self.schedule(txn, node.ino, self.upload_delay, None)
        self._touch_dir(txn, self.inode(parent_a, txn), stamp)
        self._touch_dir(txn, self.inode(parent_b, txn), stamp)

    def _is_ancestor(self, txn: lmdb.Transaction, ancestor: int, ino: int) -> bool:
        while ino != ROOT_INO:
            if ino == ancestor:
                return True
            names = self.index.names_of(ino, txn)
            if not names:
                return False
            ino = names[0][0]
        return ancestor == ROOT_INO

    def _touch_dir(self, txn: lmdb.Transaction, directory: Inode, stamp: int) -> None:
        directory.mtime_ns = directory.ctime_ns = stamp
        self.index.put_inode(txn, directory)

    # content

    def content_changed(self, inode: Inode) -> None:
        """Record a change of content; the revision is made later by make_revision."""
        stamp = now_ns()
        inode.version += 1
        inode.mtime_ns = inode.ctime_ns = stamp
        inode.sha256 = NO_HASH
        self.index.defer_inode(inode)

    def attributes_changed(self, txn: lmdb.Transaction, inode: Inode) -> None:
        """Mode, times or xattrs changed: remotes that keep them follow. Content that
        changed too goes with its next revision anyway."""
        if not inode.dirty:
            self.schedule(txn, inode.ino, self.upload_delay, None)

    def mode_changed_there(self, txn: lmdb.Transaction, inode: Inode, path: str, mode: int,
                           source: int) -> None:
        """A remote's chmod of its copy at `path`: the mount and the other remotes follow."""
        inode.mode = stat.S_IFMT(inode.mode) | stat.S_IMODE(mode)
        inode.ctime_ns = now_ns()
        self.index.put_inode(txn, inode)
        self.schedule(txn, inode.ino, self.upload_delay, source)
        parent = self.index.resolve(path.rpartition("/")[0], txn)
        if parent is not None:
            self.kernel.entry_changed(parent, os.fsencode(path.rpartition("/")[2]))

    def make_revision(self, ino: int, delay: float | None = None) -> bool:
        """Commit buffered content and, if it changed, make it a new revision for the remotes:
        not content a write to which failed, which would reach them cut short."""
        inode = self.index.get_inode(ino)
        if inode is None or not inode.dirty:
            return False  # a close after reading: nothing to write
        with self.index.write() as txn:
            self.cache.commit_in(txn)
            inode = self.index.get_inode(ino, txn)
            if inode is None or not inode.dirty or inode.nlink == 0 \
                    or inode.flags & FLAG_WRITE_FAILED:
                return False
            old_rev, inode.rev = inode.rev, self.index.next_rev(txn)
            inode.rev_version = inode.version
            self.cache.revision_made(txn, inode, old_rev)
            self.index.put_inode(txn, inode)
            self.schedule(txn, ino, self.upload_delay if delay is None else delay, None)
        return True

    def replace_content(self, txn: lmdb.Transaction, inode: Inode, path: str, size: int,
                        mtime_ns: int, mode: int | None) -> Inode:
        """A remote's newer revision takes the name `path` as a new inode.

        Like an atomic save: open handles keep reading the old content, and the
        kernel, which with writeback caching trusts the size it has cached for
        an inode, learns the new size from a fresh lookup. What every remote
        holds at that path moves to the new inode with it.
        """
        parent = self.index.resolve(path.rpartition("/")[0], txn)
        name = os.fsencode(path.rpartition("/")[2])
        assert parent is not None
        permissions = inode.mode & 0o7777 if mode is None else mode & 0o7777
        new = Inode(self.index.next_ino(txn), stat.S_IFREG | permissions, inode.uid, inode.gid, 1,
                    size=size, atime_ns=inode.atime_ns, mtime_ns=clamped_ns(mtime_ns), ctime_ns=now_ns(),
                    rev=self.index.next_rev(txn), flags=FLAG_COMPLETE if size == 0 else 0)
        self.index.unlink(txn, parent, name, inode.ino)
        self.index.link(txn, parent, name, new.ino)
        self.index.put_inode(txn, new)
        for rid in self.index.remote_ids(txn):
            entry = self.index.mirror(rid, inode.ino, txn).get(path)
            if entry is not None:
                self.index.set_mirror(txn, rid, inode.ino, path, None)
                self.index.set_mirror(txn, rid, new.ino, path, entry)
        self.index.copy_xattrs(txn, inode.ino, new.ino)
        inode.nlink -= 1
        inode.ctime_ns = new.ctime_ns
        self._name_gone(txn, inode)
        self.kernel.entry_changed(parent, name)
        return new


def check_name(name: bytes, parent: int) -> None:
    if len(name) > NAME_MAX:
        raise TreeError(errno.ENAMETOOLONG)
    if not name or name in (b".", b"..") or b"/" in name or b"\0" in name:
        raise TreeError(errno.EINVAL)
    if parent == ROOT_INO and name == MARKER.encode():
        raise TreeError(errno.EPERM, f"{MARKER} is the name of each remote's identity marker")
