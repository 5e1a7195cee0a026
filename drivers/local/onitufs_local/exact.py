"""Whether an entry found at a path of a local remote has that very name.

A folder that ignores case answers to a name with another entry's (onitufs.folding).
Where a handler finds something it did not expect, it lists the folder to know (never
where it found what it expected). A change notice names what a program asked for, which
may be another case of the name: the entry it names is looked at only where it has that
name (named_so), and a file there changed under another case of its name waits for the
next full listing, or a read.
"""

from __future__ import annotations

import os

from onitufs.folding import clash, renames_in_case
from onitufs.plug import DriverError


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


def clash_at(shown: str, path: str) -> DriverError:
    """The error for the name of `path` (`shown`: its path in the mount), which its folder
    takes for another entry's."""
    return clash(shown, os.path.basename(path), names_beside(path))


def renamed_in_case(source: str, target: str) -> bool:
    """Whether target, which its folder answers to, is source changed in case only."""
    return os.path.dirname(source) == os.path.dirname(target) and renames_in_case(
        names_beside(source), os.path.basename(source), os.path.basename(target))
