"""What a local remote's folder holds, as the driver reports it: one walk of the tree.

Uploads in progress (their temp files) are left out, and so are fifos, sockets
and devices, which live in the index only. Both the watched folder (watch.py)
and the polled one list it this way, so both report the same things.

The local remotes of a mount walk their trees one at a time. A walk is
mostly Python work per entry, under the GIL: on two cores, three remotes of
100,000 files walked at once after a remount took as long in all as one
after the other (2.4-3.2 s) and starved the thread that serves the mount,
so that the first `find -ls` took 4.7 s instead of 2.0. A walk that hangs
(a disk that stopped answering) holds the others back for WALK_WAIT only.
Before each folder, a walk gives way to people using the mount
(Plug.give_way): after a remount, the first `find -ls` of 100,000 files
there took 2.4-3.3 s beside three such walks, and 1.2-1.35 s with them
giving way (1.2 s with no walk at all).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import stat
import sys
import threading
from collections.abc import Callable, Iterator, Mapping

from onitufs.plug import TEMP_SUFFIX, Kind, Metadata, RemoteUnavailable

from .disknames import Disk, named_so

LISTING_TRIES = 3
WALK_WAIT = 10.0
_walking = threading.Lock()


def require_root(root: str) -> None:
    """RemoteUnavailable while the root folder is missing: the remote is away, so nothing in
    it is "not there"."""
    if not os.path.isdir(root):
        raise RemoteUnavailable(f"{root} is missing (unmounted disk?)")


class TreeMoved(Exception):
    """Something in the tree went while it was listed."""


def token(st: os.stat_result) -> str:
    return f"{st.st_mtime_ns}:{st.st_size}"


FolderId = tuple[int, int, int]  # st_dev, st_ino, and the mount's id

# statx(2), for the id of the mount a folder is reached through: the unique one since Linux
# 6.8 (STATX_MNT_ID_UNIQUE); before, one the kernel may give the next mount made.
_libc = ctypes.CDLL(None, use_errno=True)
_AT_EMPTY_PATH = 0x1000
_STATX_MNT_ID = 0x1000
_STATX_MNT_ID_UNIQUE = 0x4000
_STATX_SIZE = 256  # struct statx
_STX_MNT_ID = slice(0x90, 0x98)  # its stx_mnt_id, a __u64


def folder_id(path: str) -> FolderId:
    """The folder at `path`, and the mount it is reached through: a disk unmounted and
    mounted there again within a walk is another mount, though its device and inode may
    be the same (a bind mount of the same folder), and what the walk read meanwhile came
    from the folder under it. OSError if there is none."""
    fd = os.open(path, os.O_PATH)
    try:
        st = os.fstat(fd)
        found = ctypes.create_string_buffer(_STATX_SIZE)
        if _libc.statx(fd, b"", _AT_EMPTY_PATH, _STATX_MNT_ID | _STATX_MNT_ID_UNIQUE,
                       found) != 0:
            error = ctypes.get_errno()
            raise OSError(error, os.strerror(error), path)
    finally:
        os.close(fd)
    return st.st_dev, st.st_ino, int.from_bytes(found.raw[_STX_MNT_ID], sys.byteorder)


@contextlib.contextmanager
def held_folder(path: str) -> Iterator[tuple[str, FolderId]]:
    """The folder at `path` held open: a path that leads to it whatever `path` leads to
    meanwhile (/proc/self/fd/N), and its id. OSError if there is none."""
    fd = os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        held = f"/proc/self/fd/{fd}"
        yield held, folder_id(held)
    finally:
        os.close(fd)


@contextlib.contextmanager
def held_root(disk: Disk) -> Iterator[tuple[Disk, FolderId]]:
    """The root folder held open: the disk as reached through it, and the folder's id.

    What is read through it comes from that one folder. A look at the root's path before
    and after a walk misses a disk plugged in and unplugged again within the walk: the same
    empty mount point at both ends, and the walk read part of the disk between, whose
    missing rest would read as deleted. The caller still checks that the path leads to the
    held folder after reading (a disk unplugged is still read through a folder held open).
    OSError (FileNotFoundError: the remote is away) if it cannot be opened."""
    with held_folder(disk.root) as (held, root):
        yield disk.through(held), root


def file_id(st: os.stat_result) -> str:
    """The inode number. Not the device's: a disk gets another when it is plugged in
    elsewhere (another /dev/sdX, another loop device), and NFS and btrfs mounts a new one
    at each mount; every file would read as another then. Two files of two file systems
    mounted in one remote's folder can share a number: the token tells them apart."""
    return str(st.st_ino)


def describe_kind(st: os.stat_result) -> Kind:
    return "dir" if stat.S_ISDIR(st.st_mode) else \
        "symlink" if stat.S_ISLNK(st.st_mode) else "file"


def changed_ns(st: os.stat_result) -> int | None:
    """A file's ctime, which no one can set back: content rewritten in place with its
    modification time put back (touch -r, a restore) still moves it. A folder's moves with
    every name made in it, and a link's content is its target: theirs are not reported."""
    return st.st_ctime_ns if stat.S_ISREG(st.st_mode) else None


def describe(path: str, st: os.stat_result) -> Metadata:
    kind = describe_kind(st)
    return Metadata(path=path, kind=kind, size=st.st_size if kind == "file" else 0,
                    mtime_ns=st.st_mtime_ns, mode=stat.S_IMODE(st.st_mode),
                    revision=token(st), file_id=file_id(st), changed_ns=changed_ns(st))


def stamp(md: Metadata, st: os.stat_result) -> None:
    """Give md what the remote now holds for it, after onitufs changed it there: the
    permission bits too, read back (a disk may keep others than it is given: exFAT)."""
    md.revision, md.file_id, md.changed_ns = token(st), file_id(st), changed_ns(st)
    md.mode = stat.S_IMODE(st.st_mode)


def reported(st: os.stat_result) -> bool:
    """Whether an entry of this type is reported: folders, links and files."""
    return stat.S_ISDIR(st.st_mode) or stat.S_ISLNK(st.st_mode) or stat.S_ISREG(st.st_mode)


def entry(disk: Disk, path: str) -> Metadata | None:
    """The entry at the mount's path as the listing reports it; None if nothing reported
    is there (gone, a temp file of an upload, a fifo)."""
    if path.rpartition("/")[2].endswith(TEMP_SUFFIX):
        return None
    full = os.path.join(disk.root, disk.path(path, making=False))
    try:
        st = os.lstat(full)
        target = os.readlink(full) if stat.S_ISLNK(st.st_mode) else None
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not reported(st) or not named_so(full):
        return None  # (or another name's, in a folder that ignores case)
    md = describe(path, st)
    md.target = target
    return md


def unchanged(old: Metadata, st: os.stat_result, target: str | None) -> bool:
    """Whether describe() would make of `st` (and a link's target) what `old` holds."""
    return (old.mtime_ns == st.st_mtime_ns and old.mode == stat.S_IMODE(st.st_mode)
            and old.target == target and old.revision == token(st)
            and old.file_id == file_id(st) and old.changed_ns == changed_ns(st)
            and old.kind == describe_kind(st))


def listing(disk: Disk, give_way: Callable[[], None], top: str = "",
            watch: Callable[[str, str], None] | None = None,
            known: Mapping[str, Metadata] | None = None,
            hidden: list[str] | None = None) -> list[Metadata]:
    """Everything below the folder `top` of the mount ("": all of it). give_way() is called
    before each folder is read (Plug.give_way: people using the mount come first).
    Where `known` (an earlier listing, by path) holds what an entry still is, that very
    object is listed again: a safety-net walk of an unchanged tree makes nothing new.
    The stored paths of the hidden names found (TEMP_SUFFIX) go into `hidden`, if given.

    Without `watch`, TreeMoved if something in it went while it was read (a build, git
    gc): that is no reason to call the remote unreachable. With it, watch(folder, stored)
    is called before each folder is read (its mount path, and where it is stored), and
    what goes meanwhile is left out: the kernel then tells of it.
    """
    waited = _walking.acquire(timeout=WALK_WAIT)
    try:
        return _walk(disk, give_way, top, watch, known or {}, hidden)
    finally:
        if waited:
            _walking.release()


def _walk(disk: Disk, give_way: Callable[[], None], top: str,
          watch: Callable[[str, str], None] | None, known: Mapping[str, Metadata],
          hidden: list[str] | None) -> list[Metadata]:
    entries: list[Metadata] = []
    folders = [(top, disk.path(top, making=False) if top else "")]  # mount paths, stored ones
    while folders:
        folder, stored = folders.pop()
        give_way()
        try:
            if watch is not None:
                watch(folder, stored)
            scan = os.scandir(os.path.join(disk.root, stored))
        except (FileNotFoundError, NotADirectoryError):
            if not folder:
                raise  # the root itself: the remote is away
            if watch is not None:
                continue
            raise TreeMoved(folder) from None
        with scan:
            for item in scan:
                if item.name.endswith(TEMP_SUFFIX):
                    if hidden is not None:
                        hidden.append(f"{stored}/{item.name}" if stored else item.name)
                    continue
                path = disk.shown(folder, stored, item.name)
                if path is None:
                    continue
                try:
                    st = item.stat(follow_symlinks=False)
                    target = os.readlink(item.path) if stat.S_ISLNK(st.st_mode) else None
                except (FileNotFoundError, NotADirectoryError):
                    if watch is not None:
                        continue
                    raise TreeMoved(path) from None
                if not reported(st):
                    continue  # fifos, sockets, devices live in the index only
                md = known.get(path)
                if md is None or not unchanged(md, st, target):
                    md = describe(path, st)
                    md.target = target
                if md.kind == "dir":
                    folders.append((path, f"{stored}/{item.name}" if stored else item.name))
                entries.append(md)
    return entries


def steady_listing(disk: Disk, give_way: Callable[[], None],
                   hidden: list[str]) -> list[Metadata] | None:
    """A listing of the root folder taken while nothing went from under it and its path
    led there, or None if the tree keeps changing or the disk came or went (the next poll
    tries again); the stored paths of the hidden names it found go into `hidden`.
    OSError or RemoteUnavailable if the root cannot be listed."""
    require_root(disk.root)
    with held_root(disk) as (held, root):
        for _ in range(LISTING_TRIES):
            hidden.clear()
            try:
                entries = listing(held, give_way, hidden=hidden)
            except TreeMoved:
                continue
            return entries if folder_id(disk.root) == root else None
    return None
