"""`onitufs fsck` and `onitufs verify`: checking the index, the cache and the remotes' copies.

fsck reads the index and the block cache alone, so it works with every
remote offline: names that lead nowhere, wrong link counts, inodes without
a name, blocks no file owns, cached blocks that no longer match their
checksum, and replicas that are neither up to date nor queued. What it can
mend it mends; the rest it reports.

verify reads back every copy each readable remote holds of the current
revisions and compares it with the cached content (only where that content
is sound) or the SHA-256 the index keeps; a damaged copy is marked and
uploaded again from a good one before the command ends, and a damaged
cached block is replaced by a remote's copy that matches the checksum.
"""

from __future__ import annotations

import hashlib
import stat
from collections.abc import Callable
from dataclasses import dataclass, field

import lmdb

from .daemon import Mount
from .index import FLAG_COMPLETE, NO_HASH, ROOT_INO, Inode, MirrorEntry, keys, scan, unq, unseal
from .plug import Changed
from .remotes import CallFailed, Remote
from .replicator import entry_metadata
from .tree import NewNode

Show = Callable[[str], None]
LOST_AND_FOUND = b"lost+found"


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    repaired: int = 0
    left: int = 0
    checked: int = 0
    unverified: int = 0

    def found(self, message: str, repaired: bool, show: Show) -> None:
        self.problems.append(message)
        if repaired:
            self.repaired += 1
        else:
            self.left += 1
        show(("repaired: " if repaired else "NOT repaired: ") + message)

    def exit_status(self, complete: bool) -> int:
        """As fsck(8): 0 clean, 1 errors corrected, 4 errors left (also when repairs
        could not reach every remote before the command ended)."""
        return 4 if self.left or not complete else 1 if self.repaired else 0


async def fsck(mount: Mount, show: Show) -> Report:
    report = Report()
    index, tree = mount.index, mount.tree
    with index.write() as txn:
        inodes = {inode.ino: inode for inode in index.all_inodes(txn)}
        report.checked = len(inodes)
        names: dict[int, list[tuple[int, bytes]]] = {ino: [] for ino in inodes}
        for key, value in list(scan(txn, index.db["dirents"], b"")):
            parent, name, child = unq(key), key[8:], unq(value)
            if child not in inodes or parent not in inodes or not inodes[parent].is_dir:
                index.unlink(txn, parent, name, child)
                report.found(f"name {name!r} in folder {parent} led to no inode ({child})", True,
                             show)
            else:
                names[child].append((parent, name))
        for key, _ in list(scan(txn, index.db["parents"], b"")):
            child, parent, name = unq(key), unq(key[8:]), key[16:]
            if (parent, name) not in names.get(child, []):
                txn.delete(key, db=index.db["parents"])
                report.found(f"back-reference of inode {child} to a name it lacks", True, show)
        for ino, inode in inodes.items():
            if ino != ROOT_INO and not names[ino]:
                if inode.nlink:
                    _to_lost_and_found(mount, txn, inode, report, show)
                    names[ino].append((ROOT_INO, b""))
                else:
                    tree.purge(txn, inode)
                    report.found(f"inode {ino} had no name and no link: removed", True, show)
        for ino, inode in inodes.items():
            if ino not in names or (ino != ROOT_INO and not names[ino]):
                continue
            subdirs = sum(1 for _, child in index.children(ino, txn)
                          if child in inodes and inodes[child].is_dir)
            expected = 2 + subdirs if inode.is_dir else len(names[ino])
            if inode.nlink != expected:
                report.found(f"inode {ino}: link count {inode.nlink}, should be {expected}",
                             True, show)
                inode.nlink = expected
                index.put_inode(txn, inode)
        for key in keys(txn, index.db["blocks"]):
            ino, blockno = unq(key), unq(key[8:])
            owner = inodes.get(ino)
            if owner is None or blockno * mount.cache.block_size >= owner.size:
                txn.delete(key, db=index.db["blocks"])
                report.found(f"cached block {blockno} of inode {ino} belonged to no content",
                             True, show)
            elif not unseal(txn.get(key, db=index.db["blocks"]) or b"")[1]:
                _damaged_block(mount, txn, owner, blockno, report, show)
        for key in keys(txn, index.db["hashes"]):
            if unq(key) not in inodes:
                txn.delete(key, db=index.db["hashes"])
    _queue_missing_replicas(mount, report, show)
    return report


def _damaged_block(mount: Mount, txn: lmdb.Transaction, inode: Inode, blockno: int,
                   report: Report, show: Show) -> None:
    """A cached block no longer matches its checksum: dropped where a remote holds the
    revision it belongs to (it is read from there when needed), else reported."""
    index, size = mount.index, mount.cache.block_size
    start = blockno * size
    paths = index.paths_of(inode.ino, txn)
    where = f"bytes {start}-{min(start + size, inode.size) - 1} of /{paths[0] if paths else inode.ino}"
    held = not inode.dirty and any(
        entry.rev == inode.rev for remote in mount.remotes if remote.config.readable
        for entry in index.mirror(remote.rid, inode.ino, txn).values())
    if held:
        mount.cache.discard(txn, (inode.ino, blockno))
        inode.flags &= ~FLAG_COMPLETE
        index.put_inode(txn, inode)
        report.found(f"the cached {where} were damaged: dropped, to be read again from a "
                     "remote", True, show)
    else:
        report.found(f"the cached {where} are damaged, and no remote holds that content",
                     False, show)


def _to_lost_and_found(mount: Mount, txn: lmdb.Transaction, inode: Inode, report: Report, show: Show) -> None:
    index, tree = mount.index, mount.tree
    folder = index.lookup(ROOT_INO, LOST_AND_FOUND, txn)
    if folder is None:
        root = tree.inode(ROOT_INO, txn)
        folder = tree.create(txn, ROOT_INO, LOST_AND_FOUND,
                             NewNode(stat.S_IFDIR | 0o700, root.uid, root.gid)).ino
    index.link(txn, folder, str(inode.ino).encode(), inode.ino)
    if inode.is_dir:
        parent = tree.inode(folder, txn)
        parent.nlink += 1
        index.put_inode(txn, parent)
    mount.replicator.schedule(txn, inode.ino, 0, None)
    report.found(f"inode {inode.ino} had links but no name: now /lost+found/{inode.ino}", True,
                 show)


def _queue_missing_replicas(mount: Mount, report: Report, show: Show) -> None:
    """A remote that lacks the current state of an inode must have it queued."""
    index, replicator = mount.index, mount.replicator
    with index.write() as txn:
        inodes = {inode.ino: inode for inode in index.all_inodes(txn) if inode.nlink}
        for remote in replicator.writable:
            held = _mirror_by_ino(mount, remote, txn)
            for ino, inode in inodes.items():
                if ino == ROOT_INO or replicator.is_queued(remote, ino):
                    continue
                if not (inode.is_reg or inode.is_dir or inode.is_symlink):
                    continue
                paths = index.paths_of(ino, txn)
                entries = held.get(ino, {})
                current = all(path in entries and (not inode.is_reg or entries[path] == inode.rev)
                              for path in paths)
                if not current:
                    replicator.requeue(txn, remote, ino)
                    report.found(f"remote {remote.name} lacked /{paths[0] if paths else ino} and "
                                 "it was not queued", True, show)
            for ino in held:
                if ino not in inodes and not replicator.is_queued(remote, ino):
                    replicator.requeue(txn, remote, ino)
                    report.found(f"remote {remote.name} still holds deleted inode {ino}, "
                                 "and its removal was not queued", True, show)


def _mirror_by_ino(mount: Mount, remote: Remote, txn: lmdb.Transaction) -> dict[int, dict[str, int]]:
    held: dict[int, dict[str, int]] = {}
    for ino, path, entry in mount.index.mirror_all(remote.rid, txn):
        held.setdefault(ino, {})[path] = entry.rev
    return held


async def verify(mount: Mount, show: Show, progress: Show) -> Report:
    report = Report()
    readable = [remote for remote in mount.remotes if remote.config.readable]
    for remote in mount.remotes:
        if remote not in readable:
            show(f"{remote.name}: write-only, so never read back")
    # What changed on any remote while nothing was mounted is taken in first (every first
    # listing), not read as the copy the index knows and called damaged: a copy replaced
    # there, or one whose change time moved (a chmod). Every remote's, before any copy is
    # read: an edit on one remote makes the others' copies an older revision.
    for remote in readable:
        await remote.ready.wait()
        await mount.replicator.first_listing_in(remote)
    for remote in readable:
        with mount.index.begin() as txn:
            copies = [(ino, path, entry) for ino, path, entry in
                      mount.index.mirror_all(remote.rid, txn) if entry.kind == "file"]
        for number, (ino, path, entry) in enumerate(copies, 1):
            inode = mount.index.get_inode(ino)
            if inode is None or inode.dirty or entry.rev != inode.rev:
                continue  # not a copy of the current revision: the replicator handles it
            progress(f"{remote.name}: {number}/{len(copies)} /{path}")
            try:
                outcome = await _check_copy(mount, remote, inode, path, entry)
            except CallFailed as error:
                if isinstance(error.__cause__, Changed):
                    # Changed there since it was listed: a new version, taken in as its
                    # report would be, and no damage.
                    await mount.replicator.on_changed(remote.name, error.__cause__.current)
                    continue
                report.checked += 1
                report.found(f"remote {remote.name}: /{path}: unreadable: {error}", False, show)
                continue
            if outcome is None:
                continue  # moved on while read: the replicator brings the copy up to date
            problem, judged = outcome
            report.checked += 1
            if not judged:
                report.unverified += 1
                show(f"{remote.name}: /{path}: no checksum or cached content to compare with")
            if problem is not None:
                mount.replicator.mark_damaged(remote, inode, path, problem)
                report.found(f"remote {remote.name}: /{path}: {problem}", remote.config.writable,
                             show)
    return report


def _still_current(mount: Mount, remote: Remote, ino: int, path: str, rev: int) -> bool:
    """Whether the file is still at revision `rev`, unchanged in the mount, and the
    remote's entry still says the remote holds that revision."""
    now = mount.index.get_inode(ino)
    with mount.index.begin() as txn:
        entry = mount.index.mirror(remote.rid, ino, txn).get(path)
    return (now is not None and not now.dirty and now.rev == rev
            and entry is not None and entry.rev == rev)


async def _check_copy(mount: Mount, remote: Remote, inode: Inode, path: str,
                      entry: MirrorEntry) -> tuple[str | None, bool] | None:
    """Why the remote's copy is not the current revision (None if it is), and whether
    there was anything to compare it with; None if a change moved the file on while its
    copy was read (a remote's listing, or a read through the mount, took one in), as the
    cache and the checksums are of the new revision then."""
    cache = mount.cache
    md = entry_metadata(path, entry)
    rev, size, sha256 = inode.rev, inode.size, inode.sha256
    whole = hashlib.sha256()
    unchecked = 0
    for blockno in range((size + cache.block_size - 1) // cache.block_size):
        offset = blockno * cache.block_size
        length = min(cache.block_size, size - offset)
        data: bytes = await remote.call("get_chunk", md, offset, length)
        if not _still_current(mount, remote, inode.ino, path, rev):
            return None
        if len(data) != length:
            return f"{len(data)} bytes at byte {offset}, expected {length}", True
        whole.update(data)
        expected = cache.cached_block(inode, blockno, length)  # None where damaged
        digest = mount.index.block_hash(inode.ino, blockno, rev)
        if expected is not None and data != expected:
            first, last = differing_range(data, expected)
            return f"bytes {offset + first}-{offset + last} differ from the cached content", True
        if expected is None and digest is not None:
            if hashlib.sha256(data).digest() != digest:
                return (f"bytes {offset}-{offset + length - 1} do not match the SHA-256 of that "
                        "block"), True
            if cache.damaged(inode.ino, blockno):
                cache.take_fetched(inode.ino, blockno, rev, data, digest, new_checksum=False)
        unchecked += expected is None and digest is None
    if sha256 != NO_HASH and whole.digest() != sha256:
        return "does not match the SHA-256 of the revision", True
    return None, not unchecked or sha256 != NO_HASH


def differing_range(a: bytes, b: bytes) -> tuple[int, int]:
    """The first and the last position at which two different byte strings of the same
    length differ."""
    first = next(i for i in range(len(a)) if a[i] != b[i])
    last = next(i for i in range(len(a) - 1, -1, -1) if a[i] != b[i])
    return first, last
