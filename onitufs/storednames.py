"""How a remote's folder keeps names, for drivers: one that ignores case, one that
refuses some.

exFAT and FAT (most USB disks), a Samba share, ext4's casefold folders, a Mac's or a
Windows machine's disk behind an SFTP server, and Dropbox answer to `a.txt` with the
`A.txt` they hold, and hold one of the two. A driver that finds something where it
expected nothing, or another version than the one it expected, asks whether the folder
holds that very name (its listing names it) before it takes what it found for that file:
a name that the folder takes for another entry's stays off the remote (`refuse_clash`),
and a rename that changes a name in case only is made as one (`renames_in_case`). Both
take paths as the mount has them, '/'-separated, for a driver that stores each name as it
is.

exFAT and FAT also refuse " * : < > ? \\ | and control characters in a name: a driver
that finds its remote refusing a name it makes, in a folder that is there, raises
`refused`.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Collection

from onitufs.plug import DriverError


def fold(name: str) -> str:
    """A name as a folder that ignores case and Unicode normalisation compares it."""
    return unicodedata.normalize("NFC", name).casefold()


def taken_for(names: Collection[str], name: str) -> list[str]:
    """The names of a folder, other than `name`, that compare as it does."""
    folded = fold(name)
    return [other for other in names if other != name and fold(other) == folded]


def refuse_clash(path: str, names: Collection[str]) -> None:
    """DriverError where the folder of `path`, which holds `names`, has no entry of exactly
    its name: what answers for it there is another entry's."""
    name = path.rpartition("/")[2]
    if name not in names:
        others = taken_for(names, name)
        other = repr(others[0]) if others else "another name"
        raise DriverError(f"{path}: the remote's folder holds {other}, which it takes for "
                          "the same name (it ignores case): this one stays off the remote "
                          "until one of them is renamed")


def renames_in_case(names: Collection[str], source: str, target: str) -> bool:
    """Whether `target`, which its folder (of `names`) answers for though none is exactly
    it, is `source` itself, changed in case only: both in that folder, and no name there
    but source's compares as target does (a folder that ignores case holds one entry per
    such name, so that one is source)."""
    folder, name = target.rpartition("/")[::2]
    source_folder, source_name = source.rpartition("/")[::2]
    return folder == source_folder and name not in names \
        and taken_for(names, name) == [source_name]


def refused(shown: str, why: str) -> DriverError:
    """The error for a name (`shown`: its path in the mount) that the remote refuses to
    make (`why`: what it answered)."""
    return DriverError(f"{shown}: the remote's disk refuses this name ({why}): it stays off "
                       "the remote until it is renamed")
