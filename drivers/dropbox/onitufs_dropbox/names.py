"""Names in the mount as Dropbox can keep them: folding, refused names and their escape.

Dropbox compares names with case folded and Unicode normalised (keeping each
in the form it was made in), and refuses some (see `refused`). A name it
would fold onto another name of the same folder, or refuse, is stored under
its escape instead: every character but lower-case ASCII letters, digits,
safe punctuation and lower-case non-ASCII letters of a name in NFC becomes
%HH (ASCII, two upper-case hex digits) or %{H...} (any other code point, a
lone surrogate of a name that is not UTF-8 included), and "~onitufs" ends
it. `Report.txt` beside `report.txt` is stored as `%52eport.txt~onitufs`,
`cafe\u0301` (NFD) beside `caf\u00e9` (NFC) as `cafe%{301}~onitufs`. An
escape is read back only when it is exactly what `escape` makes of the name
it decodes to (canonical); any other name, one that merely looks like an
escape included, is its own name. A mount name that is itself a canonical
escape is escaped again, so every name round-trips.
"""

from __future__ import annotations

import re
import unicodedata

SUFFIX = "~onitufs"
MAX_UNITS = 255  # Dropbox's limit on a name, in UTF-16 code units
# Kept as they are in an escape: none changes under case folding or normalisation.
_SAFE_ASCII = frozenset("abcdefghijklmnopqrstuvwxyz0123456789 !#$&'()+,-.;=@[]^_`{}~")
_TOKEN = re.compile(r"%([0-9A-F]{2})|%\{([0-9A-F]{1,6})\}|([^%])", re.S)
_REFUSED_CHARS = re.compile(r"[\x00-\x1f\x7f/\\\ud800-\udfff]")
# Names Dropbox never syncs (it answers disallowed_name), compared case-insensitively.
_IGNORED = frozenset({"desktop.ini", "thumbs.db", ".ds_store", "icon\r", ".dropbox",
                      ".dropbox.attr"})


def units(name: str) -> int:
    return len(name.encode("utf-16-le", "surrogatepass")) // 2


def refused(name: str) -> bool:
    """Whether Dropbox would refuse the name as it is."""
    return (name in ("", ".", "..") or name.endswith((" ", ".")) or units(name) > MAX_UNITS
            or bool(_REFUSED_CHARS.search(name)) or name.lower() in _IGNORED)


def escape(name: str) -> str:
    nfc = unicodedata.is_normalized("NFC", name)
    out = []
    for char in name:
        if char in _SAFE_ASCII or (ord(char) >= 0x80 and nfc and _stable(char)):
            out.append(char)
        elif ord(char) < 0x80:
            out.append(f"%{ord(char):02X}")
        else:
            out.append(f"%{{{ord(char):X}}}")
    if out and out[-1] in (" ", "."):  # Dropbox refuses a name that ends so
        out[-1] = f"%{ord(out[-1]):02X}"
    return "".join(out) + SUFFIX


def _stable(char: str) -> bool:
    return (char.casefold() == char and unicodedata.combining(char) == 0
            and unicodedata.category(char) not in ("Cs", "Cc", "Mn", "Me", "Mc")
            and unicodedata.normalize("NFD", char) == char)


def unescape(stored: str) -> str | None:
    """The mount name a canonical escape stands for; None for any other name."""
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
    # a stray '%' matches no token and is skipped: the comparison then fails
    return name if name and escape(name) == stored else None


def mount_name(stored: str) -> str:
    """The name in the mount of a name stored on Dropbox."""
    found = unescape(stored)
    return stored if found is None else found


def needs_escape(name: str) -> bool:
    """Whether the name cannot be stored as it is, whatever its folder holds."""
    return refused(name) or unescape(name) is not None
