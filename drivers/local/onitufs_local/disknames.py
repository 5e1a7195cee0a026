"""How a local remote's disk keeps names: one that ignores case, one that refuses some.

A folder that ignores case answers to a name with another entry's (onitufs.storednames).
Where a handler finds something it did not expect, it lists the folder to know whether
the entry has that very name (never where it found what it expected). A change notice
names what a program asked for, which may be another case of the name: the entry it
names is looked at only where it has that name (named_so), and a file there changed
under another case of its name waits for the next full listing, or a read.

exFAT and FAT refuse " * : < > ? \\ | and control characters in a name: making one
fails with EINVAL (the kernel's vfat), or ENOENT though the folder is there
(exfat-fuse), which `refusal` turns into a line that says so.
"""

from __future__ import annotations

import errno
import os

from onitufs.storednames import refused


def names_beside(path: str) -> list[str]:
    """The names in the folder of `path` (none where it is not there)."""
    try:
        return os.listdir(os.path.dirname(path))
    except (FileNotFoundError, NotADirectoryError):
        return []


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
