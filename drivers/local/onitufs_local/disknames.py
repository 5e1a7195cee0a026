"""How a local remote's disk keeps names: one that ignores case, one that refuses some.

A folder that ignores case answers to a name with another entry's (onitufs.storednames).
Where a handler finds something it did not expect, it lists the folder to know whether
the entry has that very name (never where it found what it expected); where it does not,
the name is one the folder takes for another entry's (`README` beside `readme`), and it
is stored under its escape instead (`clash_escape`), as Dropbox stores such a name. A
change notice names what a program asked for, which may be another case of the name:
the entry it names is looked at only where it has that name (named_so), and a file
there changed under another case of its name waits for the next full listing, or a
read.

exFAT and FAT refuse " * : < > ? \\ | and control characters in a name: making one
fails with EINVAL (the kernel's vfat), or ENOENT though the folder is there
(exfat-fuse). Asked once (Disk.refuses), such a disk gets those names under their
escape, every other disk as they are. Every escape is read back (storednames.mount_name)
and found where it is, on the disk or on a copy of it on another (one lstat per name);
a name that reads as an escape is escaped again everywhere. A name the disk refuses all
the same gets a line that says so (`refusal`). They hold no symbolic links either;
symlink(2) fails there as it does in a folder that takes no new entry (chattr +i), and
`holds_links` tells the two apart.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable

from onitufs.plug import TEMP_SUFFIX, DriverError
from onitufs.storednames import (
    disk_refusable,
    escape,
    mount_name,
    refuse_clash,
    refused,
    unescape,
)

NAME_MAX = 255  # bytes, on every disk Linux mounts
# Made once in the root to learn whether the disk refuses what disk_refusable names.
PROBE = f".onitufs-probe:{TEMP_SUFFIX}"
# Made in a folder to learn whether its disk holds symbolic links, where making one failed.
LINK_PROBE = f".onitufs-link-probe{TEMP_SUFFIX}"
# What symlink(2) answers on a disk that holds no links (FAT, exFAT: EPERM, its own word);
# EPERM also comes from a folder that takes no new entry (chattr +i, +a).
NO_LINKS = (errno.EPERM, errno.ENOSYS, errno.EOPNOTSUPP)


class Disk:
    """The remote's root folder, and how the mount's paths are stored in it: thread-safe
    (one answer is kept, and two threads asking at once make the same)."""

    def __init__(self, root: str) -> None:
        self.root = root
        # The root's device, and whether the disk there refuses those names: a disk
        # plugged in where another was (or the empty folder under an unplugged one) is
        # asked again.
        self._known: tuple[int, bool] | None = None

    def through(self, base: str) -> Disk:
        """The same disk, its root reached through `base` (the root held open:
        /proc/self/fd/N), for reading what is there."""
        view = Disk(base)
        view._known = self._known
        return view

    def refuses(self) -> bool:
        """Whether the disk refuses the names disk_refusable() names. Learnt by making an
        empty hidden file of such a name in the root, the first time one is to be made,
        and kept; not kept where the disk could not tell (read-only, full, away)."""
        try:
            device = os.stat(self.root).st_dev
        except OSError:
            return False  # away: nothing is made there
        if self._known is None or self._known[0] != device:
            answer = self._probe()
            if answer is None:
                return False
            self._known = (device, answer)
        return self._known[1]

    def _probe(self) -> bool | None:
        """Whether the disk refuses the probe's name; None where it could not tell."""
        probe = os.path.join(self.root, PROBE)
        try:
            make_empty(probe)
        except FileExistsError:
            pass  # (left by a crash, or made by another thread now): it holds the name
        except OSError as error:
            if error.errno in (errno.EINVAL, errno.ENOENT) and os.path.isdir(self.root):
                return True
            return None
        with contextlib.suppress(FileNotFoundError):
            os.unlink(probe)
        return False

    def path(self, path: str, making: bool = True) -> str:
        """Where the mount's `path` is stored, relative to the root. `making`: where it is
        not there yet, where it is to be made (the disk may be asked whether it refuses
        the name); else only where to look."""
        stored: list[str] = []
        for name in path.split("/"):
            stored.append(self._name("/".join(stored), name, making))
        return "/".join(stored)

    def _name(self, folder: str, name: str, making: bool) -> str:
        """How `name` is stored in the stored `folder`: as it is or as its escape,
        whichever is there, and where both are (a copy of the disk made on another, then
        written to there) the name itself; where neither is, as this disk needs. A name
        that reads as an escape: as its escape."""
        if unescape(name) is not None:
            return escape(name)  # (too long for the disk: making it fails, and says so)
        escaped = escape(name)
        if len(os.fsencode(escaped)) > NAME_MAX:
            return name
        at = os.path.join(self.root, folder)
        plain = os.path.join(at, name)
        if os.path.lexists(os.path.join(at, escaped)):
            # (the listing, not a lookup of another case: a FUSE disk that ignores case
            # answers for a name the kernel still keeps for an entry renamed or deleted)
            return name if os.path.lexists(plain) and holds_exactly(plain) else escaped
        if making and disk_refusable(name) and not os.path.lexists(plain) and self.refuses():
            return escaped
        return name

    def shown(self, folder: str, stored_folder: str, name: str) -> str | None:
        """The mount path of the entry `name` of a folder (given as its mount path and its
        stored one); None for an escape beside the very name it stands for, which is the
        mount's file (path() finds that one)."""
        plain = mount_name(name)
        if plain != name:
            beside = os.path.join(self.root, stored_folder, plain)
            if os.path.lexists(beside) and holds_exactly(beside):
                return None
        return f"{folder}/{plain}" if folder else plain


def clash_escape(shown: str, full: str) -> str | None:
    """Where to make the entry of the mount's path `shown` instead of at `full`, where
    another entry answers: at its escape, where the folder takes the name for that entry's
    (it ignores case; path() finds the escape from then on). None where the folder holds
    that very name (no clash). DriverError (refuse_clash) where the escape cannot be made:
    too long, or `full` is one already."""
    if holds_exactly(full):
        return None
    folder, name = os.path.split(full)
    escaped = escape(name)
    if name != shown.rpartition("/")[2] or len(os.fsencode(escaped)) > NAME_MAX:
        refuse_clash(shown, shown_beside(full))
        raise DriverError(f"{shown}: the remote's folder takes its name for another entry's")
    return os.path.join(folder, escaped)


def made_at(shown: str, full: str, make: Callable[[str], None]) -> str:
    """Where make(at) made the entry of the mount's path `shown`: at `full`, or at its
    escape where the folder takes that name for another entry's (clash_escape).
    FileExistsError where that very name is there, its filename saying where."""
    try:
        make(full)
        return full
    except FileExistsError:
        instead = clash_escape(shown, full)
        if instead is None:
            raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), full) from None
    try:
        make(instead)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), instead) from None
    return instead


def make_empty(path: str) -> None:
    """An empty file at `path`, where nothing is (a probe)."""
    os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600))


def holds_links(folder: str) -> bool | None:
    """Whether the disk of `folder` holds symbolic links, where making one there failed
    with one of NO_LINKS: a link and then a file are made (and deleted) in it. None where
    it could not tell: the folder takes no new entry of any kind (chattr +i, read-only,
    full)."""
    probe = os.path.join(folder, LINK_PROBE)
    try:
        os.symlink(".", probe)
    except OSError as error:
        if error.errno not in NO_LINKS:
            with contextlib.suppress(OSError):
                os.unlink(probe)  # (FileExistsError: left by a crash; asked again next time)
            return None
        try:
            make_empty(probe)
        except OSError:
            return None  # no file either: what refused the link said nothing of links
        os.unlink(probe)
        return False
    os.unlink(probe)
    return True


def names_beside(path: str) -> list[str]:
    """The names in the folder of `path` (none where it is not there)."""
    try:
        return os.listdir(os.path.dirname(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


def shown_beside(path: str) -> list[str]:
    """names_beside(), as the mount names them."""
    return [mount_name(name) for name in names_beside(path)]


def holds_exactly(path: str) -> bool:
    """Whether the folder of `path` holds an entry of exactly its name."""
    return os.path.basename(path) in names_beside(path)


def named_so(path: str) -> bool:
    """holds_exactly(), at the cost of one lstat where the folder does not answer to the
    name in the other case, which no folder ignoring case does for a name with letters."""
    folder, name = os.path.split(path)
    other = name.swapcase()
    return other == name or not os.path.lexists(os.path.join(folder, other)) \
        or holds_exactly(path)


def refusal(shown: str, path: str, error: OSError) -> Exception:
    """What to raise where making an entry at `path` (`shown`: its path in the mount)
    failed with `error`."""
    if error.errno in (errno.EINVAL, errno.ENOENT) and os.path.isdir(os.path.dirname(path)):
        return refused(shown, error.strerror or str(error))
    return error
