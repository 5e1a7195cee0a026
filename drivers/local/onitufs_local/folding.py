"""Names in a folder that ignores case: what answers to a name there, and renames in case only.

exFAT and FAT (most USB disks), ext4's casefold folders and Samba shares answer to
`a.txt` with the `A.txt` they hold, and cannot hold both. So an entry found at a path
is not always the file of that name: where a handler finds something it did not expect,
it asks whether the folder holds that very name before taking what it found for that
file. A file whose name such a folder takes for another's stays off the remote (the
handler fails, with a line naming both, and onitufs tries again later) rather than
replace or move aside the other. Only what was unexpected is checked (a listing of the
folder each time), never an operation that found what it expected. A change notice
names what a program asked for, which may be another case of the name: the entry it
names is looked at only where it has that name (named_so), and a file there changed
under another case of its name waits for the next full listing.
"""

from __future__ import annotations

import os
import unicodedata

from onitufs.plug import DriverError


def fold(name: str) -> str:
    """A name as a folder that ignores case and Unicode normalisation compares it."""
    return unicodedata.normalize("NFC", name).casefold()


def holds_exactly(path: str) -> bool:
    """Whether the folder of `path` holds an entry of exactly its name."""
    folder, name = os.path.split(path)
    try:
        return name in os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return False


def named_so(path: str) -> bool:
    """Whether the entry found at `path` has that name: at the cost of one lstat where the
    folder does not answer to the name in the other case, which no folder ignoring case
    does for a name with letters; a listing of the folder where it does."""
    folder, name = os.path.split(path)
    other = name.swapcase()
    return other == name or not os.path.lexists(os.path.join(folder, other)) \
        or holds_exactly(path)


def taken_for(path: str) -> list[str]:
    """The names in the folder of `path`, other than its own, that compare as it does."""
    folder, name = os.path.split(path)
    try:
        names = os.listdir(folder)
    except (FileNotFoundError, NotADirectoryError):
        return []
    return [other for other in names if other != name and fold(other) == fold(name)]


def clash(shown: str, path: str) -> DriverError:
    """The error for a name (`shown`, as the mount has it) that the folder at `path`
    takes for another entry's."""
    others = taken_for(path)
    other = repr(others[0]) if others else "another name"
    return DriverError(f"{shown}: the remote's folder holds {other}, which it takes for "
                       "the same name (it ignores case): this one stays off the remote "
                       "until one of them is renamed")


def renames_in_case(source: str, target: str) -> bool:
    """Whether target, which the folder answers to though no entry has exactly its name,
    names source itself, changed in case only: both in one folder, source there under
    its own name, and no other name there that compares as they do (a folder that
    ignores case holds one entry per such name, so that one is source)."""
    folder, name = os.path.split(source)
    return (os.path.dirname(target) == folder and fold(name) == fold(os.path.basename(target))
            and holds_exactly(source) and not holds_exactly(target)
            and taken_for(target) == [name])
