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

exFAT and FAT also refuse " * : < > ? \\ | and control characters in a name
(`disk_refusable`). A name a remote cannot hold is stored there under its escape
instead: every character but lower-case ASCII letters, digits, safe punctuation and
lower-case non-ASCII letters of a name in NFC becomes %HH (ASCII, two upper-case hex
digits) or %{H...} (any other code point, a lone surrogate of a name that is not UTF-8
included), and "~onitufs" ends it: `at 10:30` is stored as `at 10%3A30~onitufs`,
`Report.txt` as `%52eport.txt~onitufs` (an escape has no upper case, so that a folder
that ignores case keeps it apart). An escape is read back only when it is exactly what
`escape` makes of the name it decodes to (canonical, `unescape`); any other name, one
that merely looks like an escape included, is its own name. A mount name that would read
back as another is escaped again, so every name round-trips: Dropbox reads back every
canonical escape (`mount_name`), and so does a local disk, where a name its folder takes
for another entry's is stored under its escape too; a disk behind an SSH server only
the escapes of names a disk may refuse (`disk_name`), as one lookup per name to find the
others would cost a round trip. A driver that finds its remote refusing a name it makes,
in a folder that is there, raises `refused`.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Collection

from onitufs.plug import DriverError

SUFFIX = "~onitufs"
# Kept as they are in an escape: none changes under case folding or normalisation.
_SAFE_ASCII = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 !#$&'()+,-.;=@[]^_`{}~")
_TOKEN = re.compile(r"%([0-9A-F]{2})|%\{([0-9A-F]{1,6})\}|([^%])", re.S)
_DISK_REFUSED = re.compile(r'[\x00-\x1f"*:<>?\\|]')


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


def disk_refusable(name: str) -> bool:
    """Whether exFAT, FAT, NTFS as Windows keeps it, or a Samba share would refuse the
    name for a character in it."""
    return bool(_DISK_REFUSED.search(name))


@functools.lru_cache(maxsize=4096)  # a local disk looks for the escape of each name it is given
def escape(name: str) -> str:
    """The name as the remote stores it where it cannot hold it as it is."""
    nfc = unicodedata.is_normalized("NFC", name)
    out = []
    for char in name:
        if char in _SAFE_ASCII or (ord(char) >= 0x80 and nfc and _stable(char)):
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"%{ord(char):02X}")
        else:
            out.append(f"%{{{ord(char):X}}}")
    if out and out[-1] in (" ", "."):  # Dropbox, and Windows, refuse a name that ends so
        out[-1] = f"%{ord(out[-1]):02X}"
    return "".join(out) + SUFFIX


def _stable(char: str) -> bool:
    return (char.casefold() == char and unicodedata.combining(char) == 0
            and unicodedata.category(char) not in ("Cs", "Cc", "Mn", "Me", "Mc")
            and unicodedata.normalize("NFD", char) == char)


def unescape(stored: str) -> str | None:
    """The mount name a canonical escape stands for; None for any other name, and for one
    that would read as what no mount's name can be (with '/' or NUL in it, '.', '..'):
    made on the remote by hand or by a hostile program, it is its own name."""
    if not stored.endswith(SUFFIX):
        return None
    chars = []
    for ascii_hex, other_hex, plain in _TOKEN.findall(stored[:-len(SUFFIX)]):
        if plain:
            chars.append(plain)
        else:
            code = int(ascii_hex or other_hex, 16)
            if code > 0x10FFFF:
                return None
            chars.append(chr(code))
    name = "".join(chars)
    if name in ("", ".", "..") or "/" in name or "\0" in name:
        return None
    # a stray '%' matches no token and is skipped: the comparison then fails
    return name if escape(name) == stored else None


def mount_name(stored: str) -> str:
    """The name in the mount of a stored name, where every canonical escape is read back."""
    found = unescape(stored)
    return stored if found is None else found


def disk_escaped(stored: str) -> str | None:
    """The mount name a name stored on an SSH server's disk stands for: where it is the
    escape of a name such a disk may refuse (disk_refusable), or of such an escape. None
    for any other name, which is its own: an escape of another name (Dropbox's of a name
    it folds onto another, a copy of a Dropbox folder or of a local disk) is read as it
    is."""
    name = unescape(stored)
    if name is None or not (disk_refusable(name) or disk_escaped(name) is not None):
        return None
    return name


def disk_name(stored: str) -> str:
    """The name in the mount of a name stored on an SSH server's disk."""
    found = disk_escaped(stored)
    return stored if found is None else found
