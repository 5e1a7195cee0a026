"""Changes found on a remote, applied to the tree and passed on to the other remotes.

This is the core's side of the Plug (its ChangeSink). A driver reports a
file created, changed, deleted or moved on its remote, or a whole listing;
here that becomes a change of the tree, queued for every other remote.

Two contents are never taken for one: a file a remote holds that onitufs did not put
there is the same as ours only if its SHA-256 is (size and time say nothing of content).
Nothing a remote reports can destroy an edit onitufs has not replicated yet: a remote
version that did not descend from ours is kept beside it under a conflict name, and a
delete of content the remote never had leaves that content in place; nor is a copy older
than the version onitufs put there (put back from a backup) taken for an edit made
since: both are kept. Nothing is taken from a remote before a listing of it has passed
its identity check (identity.py), nor during an outage. What a disk keeps of a file
removed while open is never taken for a new file.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import socket
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterable
from typing import NamedTuple, TypeVar

import lmdb
import trio

from .blockcache import BlockLost
from .identity import Identity
from .index import (
    FLAG_COMPLETE,
    NO_HASH,
    SUM_MOD,
    Index,
    Inode,
    MirrorEntry,
    encode_path,
    listed_digest,
)
from .plug import MARKER, ListingNeeded, Metadata
from .refusals import Refusals
from .remotes import CallFailed, Remote
from .replicator import FetchError, Replicator, aside_ino, chunk_sha256
from .tree import NAME_MAX, NewNode, Tree, TreeError

# How much older than the mount's version a remote's new version must be to be no edit
# made since: the coarsest clock of the remotes onitufs writes to (FAT's two seconds;
# SFTP and Dropbox keep whole seconds), which can put an edit made there within the same
# second or two before the version it replaced.
OLDER_BY = 2 * 10**9

log = logging.getLogger(__name__)
CHECKPOINT_EVERY = 1000  # entries of a listing compared between two turns of the mount
T = TypeVar("T")
# The name a disk gives a file removed while a program holds it open, until its last
# close: libfuse's file systems (exfat-fuse, ntfs-3g, sshfs) .fuse_hidden and 16 hex
# digits, the Linux NFS client .nfs and 24.
REMOVED_WHILE_OPEN = re.compile(r"\.fuse_hidden[0-9a-f]{16}|\.nfs[0-9a-f]{24}")


class Standing(NamedTuple):
    """What a decision on a remote's version at a path rests on: see RemoteChanges._standing."""
    here: int | None  # the mount's inode at the path
    rev: int | None  # its revision
    held: int | None  # the inode the remote's copy at the path is recorded for


def bad_path_reason(path: str) -> str | None:
    """Why `path` from a remote cannot be a path in the mount, or None if it can."""
    if not path or path.startswith("/"):
        return "not a relative path"
    for part in path.split("/"):
        if part in ("", ".", ".."):
            return f"has a '{part}' component"
        if "\0" in part:
            return "contains NUL"
        if len(encode_path(part)) > NAME_MAX:
            return f"a name longer than {NAME_MAX} bytes"
    return None


def conflict_name(path: str, remote: str, when: float, taken: Callable[[str], bool]) -> str:
    """NAME (conflict from REMOTE YYYY-MM-DD HHMMSS).EXT, beside the original; with a number
    after the time where that is `taken` (two conflicts of one file within a second). NAME
    is cut short where the whole would pass NAME_MAX bytes: no file system takes a longer
    one, and a conflict whose copy cannot be named is never resolved."""
    folder, _, name = path.rpartition("/")
    stem, dot, ext = name.rpartition(".")
    if not stem or len(encode_path(dot + ext)) > NAME_MAX // 2:
        stem, dot, ext = name, "", ""  # no extension, a dotfile such as .bashrc, or no room
    stamp = time.strftime("%Y-%m-%d %H%M%S", time.localtime(when))
    number = 1
    while True:
        suffix = f" (conflict from {remote} {stamp}{f' {number}' if number > 1 else ''})" \
            f"{dot}{ext}"
        room = NAME_MAX - len(encode_path(suffix))
        cut = stem
        while cut and len(encode_path(cut)) > room:
            cut = cut[:-1]
        new = f"{folder}/{cut}{suffix}" if folder else f"{cut}{suffix}"
        if not taken(new):
            return new
        number += 1


def is_version(entry: MirrorEntry, md: Metadata) -> bool:
    """Whether the remote still holds the version it held: the same token, and the same file
    where the remote tells files apart (two saves in one tick of a clock share a time)."""
    return entry.token == md.revision and (entry.fid is None or md.file_id is None
                                           or entry.fid == md.file_id)


def refiled(entry: MirrorEntry, md: Metadata) -> bool:
    """Whether a file is listed with the token recorded for it under another file id: saved
    anew within one tick of the remote's clock, or the same file numbered anew (a disk
    whose file system does not keep its numbers from one mount to the next)."""
    return md.kind == entry.kind == "file" and entry.token == md.revision \
        and None not in (entry.fid, md.file_id) and entry.fid != md.file_id


def unsettled(entry: MirrorEntry, md: Metadata) -> bool:
    """Whether a file listed with the token recorded may yet have changed: see _settle."""
    return md.kind == "file" and (entry.racy or entry.changed != md.changed_ns
                                  or refiled(entry, md))


class RemoteChanges:
    def __init__(self, tree: Tree, replicator: Replicator, remotes: list[Remote]) -> None:
        self.tree = tree
        self.index: Index = tree.index
        self.replicator = replicator
        self.remotes = {remote.name: remote for remote in remotes}
        self.identities = {remote.name: Identity(remote, self.index) for remote in remotes}
        self.refusals = Refusals()
        for remote in remotes:
            remote.before_change = self.identities[remote.name].before_change

    async def set_status(self, remote: str, error: str | None) -> None:
        self.remotes[remote].set_status(error)

    async def retry_now(self, remote: str) -> None:
        source = self.remotes[remote]
        if self.identities[remote].retry_now() and source.plug is not None:
            source.plug.look_again()  # the marker is tried with the listing it is judged by
        self.refusals.forget(source.rid)
        self.replicator.retry_now(source)

    async def update_file(self, remote: str, metadata: Metadata) -> None:
        source = self.remotes[remote]
        source.taken_in(metadata.path)  # a listing under way may hold an older version
        with self.index.begin() as txn:
            ino = self.index.mirror_ino(source.rid, metadata.path, txn)
            entry = self.index.mirror(source.rid, ino, txn).get(metadata.path) if ino else None
        if entry is not None and (is_version(entry, metadata) or refiled(entry, metadata)) \
                and unsettled(entry, metadata) and self._heeded(source):
            # Settled now, not at the next listing: this comes from a read (get_chunk
            # found it changed), which goes on once it is. Settling reads the remote's
            # copy, and of ours only what the cache holds (read_part), never a remote
            # through a read like this one, so it cannot wait on it.
            await self._settle(source, metadata)
        else:
            await self._take(source, metadata)

    def _removed_while_open(self, path: str) -> bool:
        """Whether `path` is what a disk keeps of a file removed while open
        (REMOVED_WHILE_OPEN), and no file of the mount: it goes at the last close, its
        content a deleted version's; a rename to it is a delete of the old name."""
        if REMOVED_WHILE_OPEN.fullmatch(path.rpartition("/")[2]) is None:
            return False
        with self.index.begin() as txn:
            return self.index.resolve(path, txn) is None

    async def _take(self, source: Remote, metadata: Metadata) -> bool:
        """Apply a created or changed entry; False if that must wait (see keep_both)."""
        if not (self._heeded(source) and self._acceptable(source, metadata.path)):
            return True
        above = self._no_folder_above(source, metadata.path)
        if above is not None:
            return await self._folder_over(source, *above)
        outcome = self._update(source, metadata)
        return outcome if isinstance(outcome, bool) \
            else await self.keep_both(source, metadata, outcome)

    def _no_folder_above(self, remote: Remote, path: str) -> tuple[str, Inode] | None:
        """The nearest of the paths above `path` that the tree has, and its inode, where
        that is no folder (the folders the tree lacks are made by _make_parents). None
        for a write-only remote, whose reports make nothing in the tree."""
        if not remote.config.readable:
            return None
        with self.index.begin() as txn:
            while path:
                path = path.rpartition("/")[0]
                ino = self.index.resolve(path, txn)
                if ino is not None:
                    inode = self.tree.inode(ino, txn)
                    return None if inode.is_dir else (path, inode)
        return None

    async def _folder_over(self, remote: Remote, path: str, ours: Inode) -> bool:
        """The remote holds a folder at `path` (it reports something in it) where the
        mount has a file or a symbolic link, `ours`: a folder made a file here while
        something in it was changed there, not reported yet (an edit wins over a delete),
        or a file made a folder there while the mount's newer version kept the name.

        The mount's keeps the name: the remote's folder is renamed there to a conflict
        name, and shows under it in the mount with what it holds (from the next listing),
        and ours goes there again. A read-only remote's, or one whose driver cannot
        rename, stays where it is, and what is in it cannot show: left out. False where
        the rename failed (the next listing says)."""
        if not (remote.config.writable and await remote.has("move_file")):
            log.info("remote %s: %s is a folder there and not here; what is in it is left "
                     "out", remote.name, path)
            return True
        with self.index.begin() as txn:
            aside = self._aside_there(txn, remote, path)
            held = self.index.mirror_ino(remote.rid, path, txn)
            entry = self.index.mirror(remote.rid, held, txn)[path] if held else None
        folder = Metadata(path=path, kind="dir", mode=0o755,
                          revision=entry.token if entry else None,
                          file_id=entry.fid if entry else None)
        moved = folder.copy(path=aside)
        try:
            await remote.call("move_file", folder, moved)
        except CallFailed:
            return False
        remote.touch(path, aside)
        log.warning("remote %s: %s is a folder there and a file or a link here; the folder "
                    "is kept as %s", remote.name, path, aside)
        with self.index.write() as txn:
            # The remote holds nothing of ours at or below `path` now: what it held there
            # went with the folder, and comes back from the listing under its new name.
            for ino, below, _ in self.index.mirror_below(remote.rid, [path], txn):
                self.index.set_mirror(txn, remote.rid, ino, below, None)
            if held is not None:
                self.index.set_mirror(txn, remote.rid, held, path, None)
            self._create(txn, remote, moved)
            self.replicator.requeue(txn, remote, ours.ino)
        return True

    @staticmethod
    def _heeded(remote: Remote) -> bool:
        """Whether what the remote reports is taken in: its folder is known to be right."""
        return remote.trusted.is_set() and remote.outage is None

    def _acceptable(self, remote: Remote, path: str) -> bool:
        if path == MARKER:
            return False  # the remote's own marker, never a file of the mount
        if self._removed_while_open(path):
            log.debug("remote %s: skipping %r: a file removed while open", remote.name, path)
            return False
        reason = bad_path_reason(path)
        if reason is not None:
            log.warning("remote %s: skipping %r: %s", remote.name, path, reason)
        return reason is None

    def _update(self, remote: Remote, md: Metadata) -> Inode | bool:
        """Apply a created or changed entry: True once applied, False where the driver's
        next listing decides, or our inode where both must be kept."""
        rid = remote.rid
        with self.index.write() as txn:
            ino = self.index.mirror_ino(rid, md.path, txn)
            if ino is not None and self.replicator.uploading(remote, ino):
                return True  # our own upload landing; it records its token itself
            inode = self.index.get_inode(ino, txn) if ino is not None else None
            if inode is not None and md.kind == "file" \
                    and self._landed_unrecorded(txn, remote, inode, md.path):
                log.info("remote %s: %s: the version there may be our upload of it, which "
                         "was not recorded (a crash, a lost answer): compared with ours",
                         remote.name, md.path)
                return inode  # (if it is, recorded as ours there, and it moves on if renamed)
            if not remote.config.readable:
                return self._backup_changed(txn, remote, ino, md)
            if inode is not None:
                return self._changed(txn, remote, inode, md)
            if ino is not None:  # deleted in the mount, changed on the remote: the edit wins
                self.index.set_mirror(txn, rid, ino, md.path, None)
            return self._appeared(txn, remote, md)

    def _changed(self, txn: lmdb.Transaction, remote: Remote, inode: Inode,
                 md: Metadata) -> Inode | bool:
        """What the remote held for us at md.path changed there."""
        entry = self.index.mirror(remote.rid, inode.ino, txn)[md.path]
        if inode.is_symlink and md.kind == "symlink" and md.target is not None \
                and encode_path(md.target) != inode.target:
            self._retarget(txn, remote, inode, md)
        elif md.kind != entry.kind:
            # Another kind of node where the remote held ours, found by a read, not by a
            # listing: what became of ours there (a delete, with what a folder held) is for
            # the driver's next listing to say (see _apply), which update_file asked for.
            # Kept apart now, the new node would be renamed aside though ours may not have
            # changed here (the listing keeps both only where it did).
            return False
        elif is_version(entry, md) or not inode.is_reg:
            entry.token, entry.fid = md.revision, md.file_id
            entry.racy = entry.racy and md.kind == "file" and remote.racy(md.mtime_ns)
            self.index.set_mirror(txn, remote.rid, inode.ino, md.path, entry)
        elif self.index.resolve(md.path, txn) != inode.ino:
            return self._changed_elsewhere(txn, remote, inode, md, entry)
        elif inode.rev == entry.rev and not inode.dirty and not self.tree.cache.has_dirty(inode.ino):
            if md.mtime_ns < inode.mtime_ns - OLDER_BY and self._held_elsewhere(remote, inode):
                # Older than the version it replaces there, ours: a copy put back (a
                # backup restored over the remote's folder, `cp -p` of an old file), not
                # an edit made since. Both are kept, ours at the name (keep_both).
                log.warning("remote %s: %s there is now a version older than the mount's: "
                            "keeping both", remote.name, md.path)
                return inode
            # It descends from what we have: it becomes the current revision.
            new = self.tree.replace_content(txn, inode, md.path, md.size, md.mtime_ns, md.mode)
            self.index.set_mirror(txn, remote.rid, new.ino, md.path,
                                  remote.entry_of(md, new.rev))
            self.replicator.schedule(txn, new.ino, 0, remote.rid)
        else:
            return inode
        return True

    def _landed_unrecorded(self, txn: lmdb.Transaction, remote: Remote, inode: Inode,
                           path: str) -> bool:
        """Whether the remote's new version at `path` may be our upload of the inode's
        current revision there, which a crash (or a lost answer) kept from being recorded:
        the upload's own record says it was sent there."""
        saved = self.index.transfer(remote.rid, inode.ino, txn)
        return saved is not None and saved.path == path and saved.rev == inode.rev \
            and not inode.dirty

    def _changed_elsewhere(self, txn: lmdb.Transaction, remote: Remote, inode: Inode,
                           md: Metadata, entry: MirrorEntry) -> Inode | bool:
        """What the remote held for us at md.path changed there, and the mount no longer
        has that inode there (renamed or deleted in the mount, not done there yet).

        Taken for ours at md.path, the new content would take a name ours no longer has.
        The edit is a file of its own at its name (kept beside what the mount has there
        now), and ours goes to that remote again where the mount has it; unless that copy
        was all there was of ours (renamed before anything read it): then the edit is
        the file's next version under its new name, and moves there on that remote."""
        paths = self.index.paths_of(inode.ino, txn) if inode.nlink else []
        if paths and self._only_copy(remote, md.path, inode, entry):
            log.warning("remote %s: %s was changed there after it was renamed here to %s, and "
                        "no other copy of the renamed file is left: taking it in as its next "
                        "version", remote.name, md.path, paths[0])
            new = self.tree.replace_content(txn, inode, paths[0], md.size, md.mtime_ns, md.mode)
            self.index.set_mirror(txn, remote.rid, inode.ino, md.path, None)
            self.index.set_mirror(txn, remote.rid, new.ino, md.path,
                                  remote.entry_of(md, new.rev))
            self.replicator.schedule(txn, new.ino, 0, remote.rid)
            self.replicator.requeue(txn, remote, new.ino)  # to move it to its name there
            return True
        log.warning("remote %s: %s was changed there after it was renamed or deleted here; "
                    "that version stays at its name", remote.name, md.path)
        self.index.set_mirror(txn, remote.rid, inode.ino, md.path, None)
        self.replicator.requeue(txn, remote, inode.ino)
        return self._appeared(txn, remote, md)

    def _appeared(self, txn: lmdb.Transaction, remote: Remote, md: Metadata) -> Inode | bool:
        """The remote holds something at md.path that it did not hold for us."""
        existing = self.index.resolve(md.path, txn)
        if existing is None:
            self._create(txn, remote, md)
            return True
        inode = self.tree.inode(existing, txn)
        same = (inode.is_dir and md.kind == "dir") \
            or (inode.is_symlink and md.kind == "symlink" and md.target is not None
                and encode_path(md.target) == inode.target)
        if not same:
            return inode  # files too: whether their contents are one is for keep_both
        self.index.set_mirror(txn, remote.rid, existing, md.path,
                              remote.entry_of(md, 0 if inode.is_dir else inode.rev))
        return True

    def _backup_changed(self, txn: lmdb.Transaction, remote: Remote, ino: int | None,
                        md: Metadata) -> Inode | bool:
        """A file onitufs put on a write-only remote was changed there: our inode, whose
        version goes back while theirs is kept aside there. Files onitufs never put
        there, or deleted here since, are left alone."""
        if ino is None:
            return True
        if is_version(self.index.mirror(remote.rid, ino, txn)[md.path], md):
            return True
        inode = self.index.get_inode(ino, txn)
        if inode is None:
            self.index.set_mirror(txn, remote.rid, ino, md.path, None)
            return True
        return inode

    def _retarget(self, txn: lmdb.Transaction, remote: Remote, link: Inode,
                  md: Metadata) -> None:
        """A symlink changed its target on the remote: a new symlink takes the name (the
        target of a symlink never changes in place)."""
        parent = self.index.resolve(md.path.rpartition("/")[0], txn)
        assert parent is not None
        name = encode_path(md.path.rpartition("/")[2])
        self.index.set_mirror(txn, remote.rid, link.ino, md.path, None)
        self.tree.unlink(txn, parent, name, source=remote.rid)
        self._create(txn, remote, md)

    def _create(self, txn: lmdb.Transaction, remote: Remote, md: Metadata,
                held_at: str | None = None) -> Inode:
        """A new node at md.path, which the remote holds at `held_at` (default: md.path)."""
        parent = self._make_parents(txn, remote, md.path)
        name = encode_path(md.path.rpartition("/")[2])
        uid, gid = os.getuid(), os.getgid()
        if md.kind == "dir":
            node = NewNode(stat.S_IFDIR | (md.mode & 0o7777), uid, gid)  # 0 is a mode
        elif md.kind == "symlink":
            node = NewNode(stat.S_IFLNK | 0o777, uid, gid, target=encode_path(md.target or ""),
                           size=len(encode_path(md.target or "")))
        else:
            node = NewNode(stat.S_IFREG | (md.mode & 0o7777), uid, gid, size=md.size,
                           mtime_ns=md.mtime_ns)
        inode = self.tree.create(txn, parent, name, node, source=remote.rid)
        if md.kind == "file" and md.size:
            inode.flags &= ~FLAG_COMPLETE  # the content stays on the remote until read
            self.index.put_inode(txn, inode)
        self.index.set_mirror(txn, remote.rid, inode.ino, held_at or md.path,
                              remote.entry_of(md, inode.rev))
        self.tree.kernel.entry_changed(parent, name)
        return inode

    def _make_parents(self, txn: lmdb.Transaction, remote: Remote, path: str) -> int:
        """The inode of the folder `path` goes in, creating folders the tree lacks."""
        folder = path.rpartition("/")[0]
        ino = self.index.resolve(folder, txn)
        if ino is not None:
            return ino
        created = self._create(txn, remote, Metadata(path=folder, kind="dir", mode=0o755))
        return created.ino

    async def keep_both(self, remote: Remote, md: Metadata, ours: Inode) -> bool:
        """The remote's version did not descend from ours: keep both, unless it is the same
        content; False when that cannot be told yet, or the mount or the remote moved on
        while it was compared (then nothing was changed), or the remote refused what that
        asked of it lately (see refusals.py)."""
        if self.refusals.waiting(remote.rid, md, ours.rev):
            return False
        remote.taken_in(md.path)  # (an upload's answer, as old as the look it made)
        with self.index.begin() as txn:
            standing = self._standing(txn, remote, md.path)
        if standing.held not in (None, ours.ino):
            # The remote's copy there is recorded for another file of ours (an upload's
            # conflict found late, after a listing settled it and moved ours aside): that
            # version was taken in, or the next listing says what became of it.
            return False
        if ours.is_reg and md.kind == "file":
            same = await self._same_content(remote, md, ours)
            if same is None:
                return False
            if same:
                with self.index.write() as txn:  # the same file, put there by someone else
                    if self._standing(txn, remote, md.path) != standing:
                        return False
                    self.index.set_mirror(txn, remote.rid, ours.ino, md.path, remote.entry_of(
                        md, ours.rev, ours.checksum_of(ours.rev)))
                return True
        return await self._keep_apart(remote, md, ours, standing)

    def _standing(self, txn: lmdb.Transaction, remote: Remote, path: str) -> Standing:
        """What a decision on the remote's version at `path` rests on: the mount's inode at
        that path and its revision, and the inode the remote's copy there is recorded for.

        A decision made before an await (a comparison of contents) is applied only while
        this is unchanged: another report of the path (a read that found the remote's
        copy changed, beside a listing), or a rename or a save in the mount, may have come
        in between. Applied to what is there now, it could move aside a remote's version
        taken in meanwhile whose only copy that remote has just replaced: a name no read
        can ever serve."""
        here = self.index.resolve(path, txn)
        inode = self.index.get_inode(here, txn) if here is not None else None
        return Standing(here, inode.rev if inode is not None else None,
                        self.index.mirror_ino(remote.rid, path, txn))

    async def _keep_apart(self, remote: Remote, md: Metadata, ours: Inode,
                          standing: Standing) -> bool:
        """Two different versions: the later of the two keeps the name; the other is kept
        beside it under a conflict name, and both go to every remote. A read-only remote
        is never written: its version keeps its path there and shows in the mount under
        the conflict name. A write-only remote is never read: its version is renamed
        there and stays there, and ours takes the name. False where what the decision
        rests on (`standing`) moved on: the next listing decides again.
        """
        if remote.config.readable and remote.config.writable and md.mtime_ns > ours.mtime_ns \
                and standing.here == ours.ino:  # (not where ours was renamed in the mount)
            try:
                return self._ours_aside(remote, md, ours, standing)
            except TreeError as error:  # that name is taken
                log.info("remote %s: %s: keeping the remote's version aside instead (%s)",
                         remote.name, md.path, error)
        with self.index.begin() as txn:
            if self._standing(txn, remote, md.path) != standing:
                return False
            aside = self._aside_there(txn, remote, md.path)
        if not remote.config.writable:
            with self.index.write() as txn:
                self._create(txn, remote, md.copy(path=aside), held_at=md.path)
            log.warning("remote %s: %s changed both here and there; its version shows as %s",
                        remote.name, md.path, aside)
            return True
        if not await remote.has("move_file"):
            log.error("remote %s: %s changed both here and there, and the driver cannot rename "
                      "files: resolve it by hand", remote.name, md.path)
            return True
        moved = md.copy(path=aside)
        try:
            await remote.call("move_file", md.copy(), moved)
        except CallFailed:
            # Saved again there since it was listed (Changed), a file there under that name
            # the listing did not hold yet, the remote gone: the next listing says. Or the
            # remote refuses the rename for as long as it holds that version.
            self.refusals.refused(remote.rid, md, ours.rev)
            return False
        remote.touch(md.path, aside)
        log.warning("remote %s: %s changed both here and there; its version is kept%s as %s",
                    remote.name, md.path, " there" if not remote.config.readable else "",
                    aside)
        with self.index.write() as txn:
            self.index.set_mirror(txn, remote.rid, ours.ino, md.path, None)
            if remote.config.readable:
                self._create(txn, remote, moved)
            self.replicator.requeue(txn, remote, ours.ino)
        return True

    def _aside_there(self, txn: lmdb.Transaction, remote: Remote, path: str) -> str:
        """The conflict name for the remote's version at `path`, free in the mount and
        on the remote."""
        return conflict_name(path, remote.name, time.time(), lambda taken: (
            self.index.resolve(taken, txn) is not None
            or self.index.mirror_ino(remote.rid, taken, txn) is not None))

    async def _settle(self, remote: Remote, md: Metadata) -> bool:
        """A file listed with the token recorded for it, which may yet hide a change: its
        token was recorded within a tick of its time (MirrorEntry.racy), its changed_ns
        moved (a chmod or a link there, or content written over its own bytes with its
        time put back), or its file id did (see refiled). Its content says which, once
        that tick has passed. False while that cannot be told yet (the next listing asks
        again).

        Content that changed within a tick, or another file put there (another file id),
        is a version like any other. Content that changed in place while its time was
        put back is kept beside ours, as in a conflict: that
        is an edit (a tag editor that keeps times) or a program gone wrong, and which
        of the two only its owner can tell; unless no other copy of ours is left, when
        it is all there is of the file. (Bit rot moves no time: reads find it by the
        blocks' SHA-256, and repair it.)"""
        if remote.racy(md.mtime_ns):
            return False
        with self.index.begin() as txn:
            ino = self.index.mirror_ino(remote.rid, md.path, txn)
            inode = self.index.get_inode(ino, txn) if ino is not None else None
            entry = self.index.mirror(remote.rid, ino, txn).get(md.path) if ino else None
            standing = self._standing(txn, remote, md.path)
        if ino is None or entry is None:
            return True
        ours_rev = inode.rev if inode is not None else None
        if self.refusals.waiting(remote.rid, md, ours_rev):
            return False
        touched = None not in (entry.changed, md.changed_ns) and entry.changed != md.changed_ns
        renumbered = refiled(entry, md)
        moved = touched or renumbered
        in_place = touched and not renumbered  # (another file there is a new save)
        ours = inode if inode is not None and inode.is_reg and entry.rev == inode.rev else None
        if ours is not None and (entry.racy or moved):
            if moved:  # until compared, the cache must not let ours go for that copy
                self.replicator.doubt(remote, ours)
            if ours.dirty or self.tree.cache.has_dirty(ours.ino):
                return False
            # Its mirror entry names our revision: where we do not know all of it, what
            # was read of it is what must not have changed.
            same = await self._same_content(remote, md, ours, read_part=True)
            if same is None:
                return False
        elif moved and entry.sha256 is not None and md.kind == "file":
            # An earlier revision of ours (a later one waits to go there), whose checksum
            # was kept: a chmod or a link there leaves it, an edit does not.
            try:
                same = (await self._remote_sha256(remote, md)).hex() == entry.sha256
            except CallFailed as error:
                log.info("remote %s: %s: cannot compare it with what it held yet: %s",
                         remote.name, md.path, error)
                self.refusals.refused(remote.rid, md, ours_rev)
                return False
        else:
            # What it held is not our current revision, or nothing of ours now, and its
            # checksum is not known: a move counts as a change (keep_both compares it
            # with ours; an edit wins over a delete). An index from before changed_ns, or
            # an entry whose inode is no file here, just learns it.
            same = not moved or (inode is not None and not inode.is_reg)
        if not same and in_place and ours is not None:
            if self._held_elsewhere(remote, ours):
                log.warning("remote %s: %s: its content changed there, its size and time did "
                            "not: keeping both", remote.name, md.path)
                kept = await self._keep_apart(remote, md, ours, standing)  # (compared above)
                self.replicator.settled(remote, ours.ino)
                return kept
            # Kept beside, ours would be a name no read can serve: the edit is all that is
            # left of the file, so it is taken in as the file's next version.
            log.warning("remote %s: %s: its content changed there, its size and time did "
                        "not, and no other copy of the mount's version is left: taking it in",
                        remote.name, md.path)
        with self.index.write() as txn:
            self.replicator.settled(remote, ino)
            if self.index.mirror(remote.rid, ino, txn).get(md.path) != entry:
                return False  # onitufs changed it there meanwhile: the next listing says
            if not same:
                if not (in_place and ours is not None):  # (else said above)
                    log.info("remote %s: %s changed there behind the same token; taking it in",
                             remote.name, md.path)
                entry.token = None  # so that the listing's token reads as a change
            else:
                entry.racy, entry.changed, entry.fid = False, md.changed_ns, md.file_id
                learnt = ours.checksum_of(entry.rev) if ours is not None else None
                if learnt is not None:
                    entry.sha256 = learnt.hex()
                if touched:
                    self._take_mode(txn, remote, ino, md, entry)
            self.index.set_mirror(txn, remote.rid, ino, md.path, entry)
        return same or await self._take(remote, md)

    def _take_mode(self, txn: lmdb.Transaction, remote: Remote, ino: int, md: Metadata,
                   entry: MirrorEntry) -> None:
        """Content the same, its change time moved: a chmod there, later than the mount's
        last change of the file, is the file's mode from now on; an earlier one, or one on
        a remote that only keeps copies (`w`), gets the mount's mode set there."""
        inode = self.index.get_inode(ino, txn)
        if inode is None or not inode.is_reg or md.changed_ns is None \
                or stat.S_IMODE(inode.mode) == stat.S_IMODE(md.mode):
            return
        self._chmod_there(txn, remote, inode, md, entry, md.changed_ns > inode.ctime_ns)

    def _chmod_there(self, txn: lmdb.Transaction, remote: Remote, inode: Inode, md: Metadata,
                     entry: MirrorEntry, later: bool) -> None:
        """A chmod on the remote to md.mode: where it is `later` than the mount's own, the
        mode from now on; else, or on a remote that only keeps copies (`w`), the mount's
        mode is set there again."""
        entry.attrs = md.attrs_key()  # what it holds now
        if not later or not remote.config.readable:
            self.replicator.requeue(txn, remote, inode.ino)
            return
        log.info("remote %s: %s: its mode changed there to %04o", remote.name, md.path,
                 stat.S_IMODE(md.mode))
        self.tree.mode_changed_there(txn, inode, md.path, md.mode, remote.rid)

    def _modes_found(self, remote: Remote, found: list[Metadata]) -> None:
        """A listing found these with other permission bits than the last one did (or than
        none did): see _mode_found."""
        if not found:
            return
        with self.index.write() as txn:
            for md in found:
                ino = self.index.mirror_ino(remote.rid, md.path, txn)
                entry = self.index.mirror(remote.rid, ino, txn).get(md.path) \
                    if ino is not None else None
                if ino is not None and entry is not None and entry.kind == md.kind \
                        and entry.mode != md.mode:
                    self._mode_found(txn, remote, ino, md, entry)
                    self.index.set_mirror(txn, remote.rid, ino, md.path, entry)

    def _mode_found(self, txn: lmdb.Transaction, remote: Remote, ino: int, md: Metadata,
                    entry: MirrorEntry) -> None:
        """The remote holds `ino` (its mirror entry `entry`, updated here) with md.mode: where
        the last listing found others, and no change time tells a chmod there (a folder's
        moves with every name made in it; SFTP gives none), that is one, later than the
        mount's own unless the mount's mode changed since that listing. (A file's change
        time, where the remote gives one, tells it: _take_mode.)"""
        before, entry.mode = entry.mode, md.mode
        inode = self.index.get_inode(ino, txn)
        if before is None or before == md.mode or inode is None \
                or stat.S_IMODE(inode.mode) == md.mode \
                or (md.kind == "file" and md.changed_ns is not None):
            return
        self._chmod_there(txn, remote, inode, md, entry, stat.S_IMODE(inode.mode) == before)

    def _held_elsewhere(self, remote: Remote, ours: Inode, at: str | None = None) -> bool:
        """Whether the mount's version can be had whole without this remote (with `at`:
        without its copy there): the cache holds all of it, or another copy that can be
        read holds it (online or not, and not in doubt itself)."""
        return any((holder is not remote or (at is not None and path != at))
                   and not self.replicator.in_doubt(holder, ours)
                   for holder, path, _ in self.replicator.holders(ours)) \
            or self.tree.cache.holds_whole(ours)

    async def _same_content(self, remote: Remote, md: Metadata, ours: Inode,
                            read_part: bool = False) -> bool | None:
        """Whether the remote's file holds our current revision, by SHA-256; None when that
        cannot be told now (a copy could not be read). With `read_part`, a revision not
        known whole is compared by the blocks of it that were read."""
        if ours.size != md.size or ours.dirty or self.tree.cache.has_dirty(ours.ino):
            return False
        rev = ours.rev
        try:
            if ours.sha256 != NO_HASH or ours.complete or not read_part:
                same = await self._same_whole(remote, md, ours)
            else:
                same = await self._same_blocks_read(remote, md, ours)
        except (CallFailed, FetchError, BlockLost) as error:
            log.info("remote %s: %s: cannot compare it with ours yet: %s", remote.name, md.path,
                     error)
            self.refusals.refused(remote.rid, md, ours.rev)
            return None
        return same and ours.rev == rev and not ours.dirty

    async def _remote_sha256(self, remote: Remote, md: Metadata) -> bytes:
        """The SHA-256 of the remote's file, read whole."""
        step = self.tree.cache.block_size
        theirs = hashlib.sha256()
        for offset in range(0, md.size, step):
            theirs.update(await remote.call("get_chunk", md, offset,
                                            min(step, md.size - offset)))
        return theirs.digest()

    async def _same_whole(self, remote: Remote, md: Metadata, ours: Inode) -> bool:
        theirs = await self._remote_sha256(remote, md)
        if ours.sha256 != NO_HASH:
            return theirs == ours.sha256
        step = self.tree.cache.block_size
        mine = hashlib.sha256()
        for offset in range(0, ours.size, step):
            mine.update(await self.tree.cache.read(ours, offset, step))
        return theirs == mine.digest()

    async def _same_blocks_read(self, remote: Remote, md: Metadata, ours: Inode) -> bool:
        """A revision known only in part (a file that remote alone gave us, read in part or
        not at all): what of it was read (by a program, or to copy it to another remote)
        must not have changed; each block's checksum was kept as it came, and a block
        never read went nowhere."""
        step = self.tree.cache.block_size
        for blockno, offset in enumerate(range(0, md.size, step)):
            seen = self.index.block_hash(ours.ino, blockno, ours.rev)
            if seen is not None:
                chunk = await remote.call("get_chunk", md, offset, min(step, md.size - offset))
                if await chunk_sha256(chunk) != seen:
                    return False
        return True

    def _ours_aside(self, remote: Remote, md: Metadata, ours: Inode, standing: Standing) -> bool:
        """The remote's version is the later one: it takes the name, ours moves aside; False
        where what that rests on moved on."""
        folder, _, name = md.path.rpartition("/")
        with self.index.write() as txn:
            if self._standing(txn, remote, md.path) != standing:
                return False
            aside = conflict_name(md.path, socket.gethostname(), time.time(),
                                  lambda path: self.index.resolve(path, txn) is not None)
            parent = self.index.resolve(folder, txn)
            assert parent is not None
            self.index.set_mirror(txn, remote.rid, ours.ino, md.path, None)  # replaced there
            aside_name = encode_path(aside.rpartition("/")[2])
            self.tree.rename(txn, parent, encode_path(name), parent, aside_name, noreplace=True)
            self.tree.kernel.entry_changed(parent, encode_path(name))
            self.tree.kernel.entry_changed(parent, aside_name)
            self._create(txn, remote, md)
        log.warning("%s changed both here and on remote %s; the remote's version is later and "
                    "keeps the name, this one is kept as %s", md.path, remote.name, aside)
        return True

    async def delete_file(self, remote: str, path: str, lost: bool = False) -> None:
        """The remote no longer holds `path`: deleted there, or `lost` (see _apply)."""
        source = self.remotes[remote]
        if not self._heeded(source) or path == MARKER:
            return
        rid = source.rid
        with self.index.write() as txn:
            ino = self.index.mirror_ino(rid, path, txn)
            if ino is None:
                return
            entry = self.index.mirror(rid, ino, txn)[path]
            self.index.set_mirror(txn, rid, ino, path, None)
            inode = self.index.get_inode(ino, txn)
            if inode is None:
                return
            if lost and not self._only_copy(source, path, inode, entry):
                log.debug("remote %s: %s is not in the folder put back: sent again",
                          source.name, path)
                self.replicator.requeue(txn, source, ino)
                return
            if lost:  # (a name left here would serve no read, and stall the remote)
                log.warning("remote %s: %s is not in the folder put back, and the copy it held "
                            "was the only one: it is lost, and deleted here too", source.name,
                            path)
            paths = self.index.paths_of(ino, txn)
            if source.config.readable and path not in paths \
                    and self._only_copy(source, path, inode, entry):
                # Moved here before anything read it, and that copy was all there was of
                # it: the name it has here would be one no read can serve.
                log.warning("remote %s: %s was deleted there, and it was all there was of "
                            "%s (never read here): deleting that too", source.name, path,
                            ", ".join(paths))
                for gone in paths:
                    self._unlink(txn, rid, gone)
                return
            if not source.config.readable or path not in paths:
                # A backup lost it, or it moved here meanwhile: it goes back.
                self.replicator.requeue(txn, source, ino)
                return
            if entry.kind != "dir" and (inode.rev != entry.rev or inode.dirty):
                self.replicator.requeue(txn, source, ino)  # newer here: it goes back there
                return
            try:
                self._unlink(txn, rid, path, folder=inode.is_dir)
            except TreeError:
                self.replicator.requeue(txn, source, ino)  # a folder with new content here

    def _unlink(self, txn: lmdb.Transaction, rid: int, path: str, folder: bool = False) -> None:
        """Remove `path` from the tree, as a remote (`rid`) removed it (TreeError: a folder
        not empty here)."""
        parent = self.index.resolve(path.rpartition("/")[0], txn)
        assert parent is not None
        name = encode_path(path.rpartition("/")[2])
        log.debug("remote %s: %s went there: it goes here",
                  next(r.name for r in self.remotes.values() if r.rid == rid), path)
        if folder:
            self.tree.rmdir(txn, parent, name, source=rid)
        else:
            self.tree.unlink(txn, parent, name, source=rid)
        self.tree.kernel.entry_changed(parent, name)

    def _only_copy(self, remote: Remote, path: str, inode: Inode, entry: MirrorEntry) -> bool:
        """Whether the remote's copy at `path` (its mirror entry `entry`) was all there was
        of the file's current revision: it held that revision, nothing here changed it
        since, and neither the cache nor any other copy holds it whole."""
        return inode.is_reg and entry.rev == inode.rev and not inode.dirty \
            and not self.tree.cache.has_dirty(inode.ino) \
            and not self._held_elsewhere(remote, inode, at=path)

    async def move_file(self, remote: str, old_path: str, new: Metadata) -> None:
        source = self.remotes[remote]
        if await self._rename(source, old_path, new):
            return
        await self.update_file(remote, new)
        # What the remote held below a folder went with it: gone from there before the
        # folder, which would otherwise still hold it here, and be made there again.
        with self.index.begin() as txn:
            below = [path for _, path, _ in self.index.mirror_below(source.rid, [old_path], txn)]
        for path in sorted(below, key=_depth, reverse=True):
            await self.delete_file(remote, path)
        await self.delete_file(remote, old_path)

    async def _rename(self, source: Remote, old_path: str, new: Metadata) -> bool:
        """Apply a rename on the remote as a rename here; False where it cannot be one (the
        new name is taken here, or the old one holds nothing of ours): then it is a new
        entry at new.path, and old_path's delete."""
        if self._heeded(source) and self._removed_while_open(new.path):
            return False  # (update_file skips it too)
        if not (self._heeded(source) and self._acceptable(source, new.path)):
            return True
        if self._stepped_aside(source, old_path, new):
            return True
        above = self._no_folder_above(source, new.path)
        if above is not None:
            # Not old_path's delete either: the file would be left on that remote only,
            # at a path the mount does not show. (Where that folder is renamed aside, the
            # next listing finds it there.)
            await self._folder_over(source, *above)
            return True
        rid = source.rid
        with self.index.write() as txn:
            ino = self.index.mirror_ino(rid, old_path, txn)
            if ino is None or not source.config.readable:
                return False
            entry = self.index.mirror(rid, ino, txn)[old_path]
            return self._move(txn, source, ino, old_path, new, entry)

    def _stepped_aside(self, source: Remote, old_path: str, new: Metadata) -> bool:
        """Record a rename there that was onitufs's own step aside (Replicator._step_aside)
        whose record a crash cut off: the copy under that name is no new file, and the
        replicator moves it on to where its inode is now."""
        ino = aside_ino(new.path)
        if ino is None:
            return False
        with self.index.write() as txn:
            entry = self.index.mirror(source.rid, ino, txn).get(old_path)
            if entry is None:
                return False
            log.info("remote %s: %s is onitufs's copy of %s, moved aside there before a "
                     "crash: it goes on from there", source.name, new.path, old_path)
            self.index.move_mirror(txn, source.rid, ino, old_path, new.path,
                                   entry.moved(new.revision, new.file_id, new.changed_ns))
            self.replicator.requeue(txn, source, ino)
        return True

    def _stepped_from(self, source: Remote, path: str, gone: list[str]) -> str | None:
        """Where the remote's copy at `path` was, if `path` is a name an inode's copy steps
        aside to and the remote no longer holds it where it is recorded: found by that
        name where the remote gives no file ids."""
        ino = aside_ino(path)
        if ino is None:
            return None
        with self.index.begin() as txn:
            recorded = self.index.mirror(source.rid, ino, txn)
        return next((old for old in recorded if old in gone), None)

    def _move(self, txn: lmdb.Transaction, remote: Remote, ino: int, old: str, new: Metadata,
              entry: MirrorEntry) -> bool:
        if old not in self.index.paths_of(ino, txn) or \
                self.index.resolve(new.path, txn) is not None:
            return False
        old_parent = self.index.resolve(old.rpartition("/")[0], txn)
        new_parent = self._make_parents(txn, remote, new.path)
        assert old_parent is not None
        old_name = encode_path(old.rpartition("/")[2])
        new_name = encode_path(new.path.rpartition("/")[2])
        moved = entry.moved(new.revision, new.file_id, new.changed_ns)
        # A chmod there with the rename: the change time the rename set says nothing of
        # it, the mode it holds does. (Weighed before the mount's rename, which moves the
        # file's change time here.)
        if new.attrs_key() != entry.attrs:
            self._take_mode(txn, remote, ino, new, moved)
        if new.kind != "symlink" and new.mode != moved.mode:
            self._mode_found(txn, remote, ino, new, moved)
        log.debug("remote %s: %s moved there to %s: it moves here", remote.name, old, new.path)
        self.tree.rename(txn, old_parent, old_name, new_parent, new_name, source=remote.rid)
        self.index.move_mirror(txn, remote.rid, ino, old, new.path, moved)
        self.tree.kernel.entry_changed(old_parent, old_name)
        self.tree.kernel.entry_changed(new_parent, new_name)
        return True

    async def report_tree(self, remote: str, entries: list[Metadata], started: float) -> bool:
        """Apply what changed since the last listing; False if part of it was too old to use,
        or if the listing cannot be trusted (then nothing of it is applied)."""
        source = self.remotes[remote]
        marker = next((md for md in entries if md.path == MARKER), None)
        entries = [md for md in entries if md.path != MARKER]
        # The first listing after a start mostly finds what the remote held: known by its
        # fingerprint, it is not compared path by path (a judge needs no paths where the
        # marker is listed), nor is the mirror decoded for it.
        unchanged = marker is not None and not self.index.mirror_in_memory(source.rid) \
            and self.index.matches_mirror(source.rid, sum(
                listed_digest(md.path, md.kind, md.revision, md.file_id, md.changed_ns)
                for md in entries) % SUM_MOD)
        held: dict[str, MirrorEntry] = {}
        if not unchanged:
            await decode_mirror_aside(self.index, source.rid)
            with self.index.begin() as txn:
                held = self.index.mirror_entries(source.rid, txn)
            held.pop("", None)  # the root, which every remote holds
        judgement = await self.identities[remote].judge(marker, {md.path for md in entries},
                                                        held)
        if judgement.outage is not None or judgement.trusted:
            source.set_outage(judgement.outage)
        if not judgement.trusted:
            return False
        source.trusted.set()
        try:
            if unchanged:
                log.info("remote %s: its listing holds what the index says it holds (%d "
                         "entries): not compared path by path", remote, len(entries))
                source.forget_touched_before(started)
                whole = True
            else:
                whole = await self._apply(source, entries, held, started,
                                          lost=judgement.put_back)
            if whole and judgement.put_back:
                self.identities[remote].put_back_taken()
            return whole
        finally:
            source.listed.set()  # even if cut short: the rest comes with the next one

    async def report_part(self, remote: str, entries: list[Metadata], scope: list[str],
                          started: float) -> bool:
        """Apply part of a listing: what the remote holds at and below the paths of
        `scope` (see Plug.report_part). The marker, a remote whose folder is not known to
        be right, and one found put back from a copy, are judged on whole listings only."""
        source = self.remotes[remote]
        if MARKER in scope or not (source.listed.is_set() and self._heeded(source)) \
                or self.identities[remote].put_back:
            raise ListingNeeded()
        with self.index.begin() as txn:
            held = self.index.mirror_at(source.rid, scope, txn)
        # What is below a folder of the part is in it too: looked for only then.
        if any(md.kind == "dir" for md in entries) \
                or any(entry.kind == "dir" for entry in held.values()):
            held.update(await self._held_below(source.rid, scope))
        return await self._apply(source, entries, held, started)

    async def _held_below(self, rid: int, folders: list[str]) -> dict[str, MirrorEntry]:
        """What the remote holds below `folders`: from LMDB's records on a worker thread if
        the mirror is not decoded (a folder may hold the whole tree, 6 µs an entry), as
        the held paths of any listing may be: a change onitufs makes there meanwhile is
        seen by `_apply` (Remote.touched_since)."""
        if not self.index.mirror_in_memory(rid):
            return await trio.to_thread.run_sync(self.index.stored_below, rid, folders)
        with self.index.begin() as txn:
            return {path: entry for _, path, entry in self.index.mirror_below(rid, folders, txn)}

    async def _apply(self, source: Remote, entries: list[Metadata],
                     held: dict[str, MirrorEntry], started: float, lost: bool = False) -> bool:
        """The changes of a listing (or part of one, see report_part) that can be trusted;
        with `lost`, of a folder put back from a copy, which lost what it lacks."""
        remote = source.name
        skipped = False

        def current(path: str) -> bool:
            nonlocal skipped
            fresh = not source.touched_since(path, started)
            skipped = skipped or not fresh
            return fresh

        def undecided(old: str) -> bool:
            """Whether the listing cannot say what became of a folder it finds gone: what
            the folder held was changed or taken in since it began, and is left for the
            next listing (the folder may be back, or renamed, with it)."""
            nonlocal skipped
            unknown = known[old].kind == "dir" and source.touched_below(old, started)
            skipped = skipped or unknown
            return unknown

        known = {path: entry async for path, entry in paced(held.items()) if current(path)}
        # A path the remote is known to hold was found acceptable when it was taken in.
        listed = {md.path: md async for md in paced(entries) if md.path and current(md.path)
                  and (md.path in held or self._acceptable(source, md.path))}
        # A path listed as another kind than the remote held there (a folder made where a
        # file was deleted, a file where a symlink was): what it held there is gone, by the
        # rules of any delete, and what is there now is new, taken after that delete with
        # what it holds. Recorded as the old node's next version, it would never travel,
        # and a delete of the old node in the mount would delete it there. (On a
        # write-only remote, it is a change there like any other: kept aside there.)
        retyped = {path for path, md in listed.items() if source.config.readable
                   and path in known and known[path].kind != md.kind}
        gone = [path for path in known if path not in listed or path in retyped]
        gone_by_fid = {known[path].fid: path for path in gone if known[path].fid}
        # A new path may be a held one renamed that is left for the next listing (onitufs
        # touched it meanwhile): taken now, the rename would travel as a copy and a delete.
        held_back = {entry.fid for path, entry in held.items() if entry.fid and path not in known}

        async def take_new(path: str) -> None:
            nonlocal skipped
            md = listed[path]
            if not current(path):
                return
            old = gone_by_fid.pop(md.file_id, None) if md.file_id else None
            if old is None:
                old = self._stepped_from(source, path, gone)
                if old is not None and gone_by_fid.get(known[old].fid) == old:
                    del gone_by_fid[known[old].fid]
            if old is None and md.file_id in held_back:
                skipped = True
            elif old is not None and undecided(old):
                # Both wait for the next listing: judged now, a rename could be taken for
                # a new folder and a delete, or a new folder for a rename.
                return
            elif old is not None and renamed(known, listed, old, md) \
                    and await self._rename(source, old, md):
                gone.remove(old)
            elif not await self._take(source, md):
                skipped = True  # tried again with the next listing

        async def delete(paths: list[str]) -> None:
            # Deleted now, an undecided folder would still hold what was left for the next
            # listing: that would be taken for new content here, and the folder made again
            # there.
            for path in sorted(paths, key=_depth, reverse=True):
                if current(path) and not undecided(path):
                    await self.delete_file(remote, path, lost)

        # Each step may await a remote, during which the replicator may touch more
        # paths: `current` is asked again right before each change is applied.
        after_deletes: dict[str, list[str]] = {root: [] for root in retyped}
        for path in sorted((p for p in listed if p not in known or p in retyped), key=_depth):
            root = root_of(path, retyped) if retyped else None
            if root is None:
                await take_new(path)
            else:
                after_deletes[root].append(path)
        modes: list[Metadata] = []  # found with other permission bits than recorded
        async for path, md in paced(listed.items()):
            entry = known.get(path)
            if entry is None or path in retyped or not current(path):
                continue
            if md.mode != entry.mode and md.kind != "symlink":
                modes.append(md)  # (weighed after what else changed there)
            if md.kind == entry.kind == "dir" or (is_version(entry, md)
                                                  and not unsettled(entry, md)):
                continue
            if not (is_version(entry, md) or refiled(entry, md)):
                # A new version replaces our inode there: not while a copy of that inode is
                # on its way to another remote, whose record would land on the inode
                # replaced (and its copy then read as a conflict). The next listing says.
                settled = not self._sending(source, path) and await self._take(source, md)
            else:
                settled = await self._settle(source, md)
            skipped = skipped or not settled
        self._modes_found(source, [md for md in modes if current(md.path)])
        if retyped:
            deletes_first: dict[str, list[str]] = {root: [] for root in retyped}
            for path in gone:
                root = root_of(path, retyped)
                if root is not None:
                    deletes_first[root].append(path)
                    fid = known[path].fid
                    if fid and gone_by_fid.get(fid) == path:
                        del gone_by_fid[fid]  # (no rename's source now)
            gone = [path for path in gone if root_of(path, retyped) is None]
            for root, paths in after_deletes.items():
                await delete(deletes_first[root])
                with self.index.begin() as txn:
                    still_held = self.index.mirror_ino(source.rid, root, txn) is not None
                if still_held:  # its delete waits for the next listing, and so does the new
                    skipped = True
                    continue
                for path in paths:
                    await take_new(path)
        await delete(gone)
        source.forget_touched_before(started)
        return not skipped

    def _sending(self, source: Remote, path: str) -> bool:
        """Whether onitufs is changing `path` on a remote other than `source` now."""
        return any(path in remote.changing for remote in self.remotes.values()
                   if remote is not source)


async def decode_mirror_aside(index: Index, rid: int) -> None:
    """Have the remote's mirror in memory, decoded on a worker thread if it is not yet (a
    second for 100,000 files): the mount goes on being served meanwhile. Before a whole
    listing is compared with all the remote holds."""
    if index.mirror_in_memory(rid):
        return
    changed = index.watch_mirror(rid)
    known = None
    try:
        known = await trio.to_thread.run_sync(index.decode_mirror, rid)
    finally:
        index.keep_mirror(rid, known, changed)


async def paced(items: Iterable[T]) -> AsyncIterator[T]:
    """The items, the mount served between every CHECKPOINT_EVERY of them: comparing a
    listing of 100,000 entries takes some 0.15 s of the thread that serves it, for each
    remote, at each listing taken after onitufs wrote there."""
    for number, item in enumerate(items):
        if number % CHECKPOINT_EVERY == 0:
            await trio.lowlevel.checkpoint()
        yield item


def renamed(known: dict[str, MirrorEntry], listed: dict[str, Metadata], old: str,
            md: Metadata) -> bool:
    """Whether `md`, which has the file id of what the remote held at `old` (now gone), is
    that entry renamed. A file system gives the number of a file just deleted to the next
    one made, so the id alone does not tell: a renamed file keeps its version (token),
    and a renamed folder that held anything holds one of those things still, unchanged
    under the new name. A folder that held nothing keeps its time, as a file does: a
    folder made in the tick the one deleted last changed is taken for it (no content
    is taken for another's that way)."""
    entry = known[old]
    if entry.kind != md.kind:
        return False
    prefix = old + "/"
    below = [path for path in known if path.startswith(prefix)] if md.kind == "dir" else []
    if not below:
        return entry.token is None or md.revision is None or entry.token == md.revision
    return any(
        (moved := md.path + path[len(old):]) in listed and is_version(known[path], listed[moved])
        for path in below)


def root_of(path: str, roots: set[str]) -> str | None:
    """The one of `roots` that `path` is or is below, if any."""
    while path:
        if path in roots:
            return path
        path = path.rpartition("/")[0]
    return None


def _depth(path: str) -> int:
    return path.count("/")
