"""Versions this mount moved aside on the remote, and the deletes a crash cut short there.

delete_file renames the version it deletes to its aside name (plug.aside_path),
checks what the rename took, then unlinks it. A kill -9 or a power loss between the
rename and the unlink leaves that version at the hidden name, or another version the
rename took (one another program saved between the check and the rename) before it
went back: the next listing tells the core the file is gone, so no handler comes back
for it. Each full walk finds the hidden names (listing's `hidden`), and `sweep`
finishes this mount's: the version set aside is unlinked, and another version goes
back to its name where that is free.

No handler is waited for. A handler renames a file onto an aside name only where the
file is the very version the name was made for (the file id is its inode): a file
found at that name holding that version cannot also be where a handler takes it
from, so no other file takes the name between the sweep's look and its unlink. Where a
handler and the sweep move the same other version back, one of them finds it gone.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable, Iterable

from onitufs.plug import (
    DriverError,
    Plug,
    RemoteUnavailable,
    SweepWarnings,
    left_aside_by_another,
    set_aside_by,
)
from onitufs.renames import rename_noreplace

from .listing import file_id, token

log = logging.getLogger(__name__)


class Asides:
    def __init__(self, plug: Plug, inside: Callable[[str], str]) -> None:
        self.plug = plug
        self.inside = inside  # the local path of a stored path, never one outside the root
        self._warnings = SweepWarnings(plug, log)

    def sweep(self, hidden: Iterable[str]) -> None:
        """Finish each of this mount's aside files among `hidden` (the stored paths of
        the hidden names a walk found), where onitufs may write (plug.writable)."""
        if not self.plug.writable:
            return
        for stored in hidden:
            name = stored.rpartition("/")[2]
            beside = set_aside_by(name, self.plug.aside_owner)
            if beside is None:
                continue  # an upload's temp file, or another mount's aside name
            try:
                self._finish(stored, name, beside)
            except (FileNotFoundError, NotADirectoryError):
                continue  # gone since the walk
            except RemoteUnavailable:
                return  # the folder gone (a disk unplugged): the next listing says so
            except (OSError, DriverError) as error:  # (DriverError: a path leading out)
                self._warnings.warn(stored, "cannot finish the delete cut short at %s: %s", error)

    def _finish(self, stored: str, name: str, beside: str) -> None:
        path = self.inside(stored)
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            return
        # (the core's record of the version may lack its file id)
        other = left_aside_by_another(name, token(st), file_id(st)) \
            and left_aside_by_another(name, token(st), None)
        if other is None:
            os.unlink(path)
            log.info("remote %s: removed %s, a version whose delete was cut short",
                     self.plug.name, stored)
            return
        if not beside:
            self._warnings.warn(stored, "another version was moved aside to %s, and the name "
                                "it had was cut short there: it stays")
            return
        try:
            rename_noreplace(path, os.path.join(os.path.dirname(path), other))
        except FileExistsError:
            self._warnings.warn(stored, "another version was moved aside to %s and its name "
                                "is taken: it stays there")
