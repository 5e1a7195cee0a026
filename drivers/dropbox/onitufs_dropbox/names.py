"""Names in the mount as Dropbox can keep them: the ones it refuses.

Dropbox compares names with case folded and Unicode normalised (keeping each
in the form it was made in), and refuses some (see `refused`). A name it
would fold onto another name of the same folder, or refuse, is stored under
its escape instead (onitufs.storednames): `Report.txt` beside `report.txt`
as `%52eport.txt~onitufs`, `cafe\u0301` (NFD) beside `caf\u00e9` (NFC) as
`cafe%{301}~onitufs`.
"""

from __future__ import annotations

import re

from onitufs.storednames import unescape

MAX_UNITS = 255  # Dropbox's limit on a name, in UTF-16 code units
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


def needs_escape(name: str) -> bool:
    """Whether the name cannot be stored as it is, whatever its folder holds."""
    return refused(name) or unescape(name) is not None
