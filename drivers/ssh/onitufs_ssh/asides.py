"""Versions this mount moved aside on the server, and the deletes and replaces cut short there.

A delete or a replace moves the version it removes to its aside name
(plug.aside_path), checks what moved, then removes it. A connection lost or a crash
between the move and the remove leaves the version at that hidden name; the next
listing tells the core the file is gone from its name (or holds the new version),
so no handler comes back for it. Each walk of the poll finds this mount's aside
files (listing.Tree.asides), and `sweep` finishes what no handler is doing: the
version set aside is removed, and another version a move took instead (one saved
between the look and the move) goes back to its name where that is free.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import logging
import stat
import threading
from collections.abc import Iterator

from onitufs.plug import Plug, SweepWarnings, left_aside_by_another, set_aside_by

from .connect import Connection
from .listing import decode, encode, token
from .sftp import Attrs, SftpError, found

log = logging.getLogger(__name__)


class Asides:
    """Which aside names a handler is using, so the sweep leaves them alone; thread-safe."""

    def __init__(self, plug: Plug) -> None:
        self.plug = plug
        self._cond = threading.Condition()
        self._used: collections.Counter[bytes] = collections.Counter()  # by handlers
        self._swept: set[bytes] = set()  # by the sweep, now
        self._warnings = SweepWarnings(plug, log)

    @contextlib.contextmanager
    def used(self, aside: bytes) -> Iterator[None]:
        """A handler's move of a version to `aside` (a full path on the server) and what
        follows, up to its remove: a sweep of that name under way ends first."""
        with self._cond:
            while aside in self._swept:
                self._cond.wait()
            self._used[aside] += 1
        try:
            yield
        finally:
            with self._cond:
                self._used[aside] -= 1
                if not self._used[aside]:
                    del self._used[aside]

    def sweep(self, conn: Connection, asides: list[tuple[bytes, Attrs]]) -> None:
        """Finish each of this mount's aside files a walk found (its full path, and what
        the walk found there) that no handler is using, where onitufs may write
        (plug.writable). A refusal is said and left for the next walk; a lost connection
        is raised."""
        if not self.plug.writable:
            return
        for aside, listed in asides:
            with self._cond:
                if aside in self._used:
                    continue
                self._swept.add(aside)
            try:
                self._finish(conn, aside, listed)
            except SftpError as error:
                self._warnings.warn(decode(aside), "cannot finish the delete or replace cut "
                                    "short at %s: %s", error)
            finally:
                with self._cond:
                    self._swept.discard(aside)
                    self._cond.notify_all()

    def _finish(self, conn: Connection, aside: bytes, listed: Attrs) -> None:
        sftp = conn.sftp
        there = found(sftp.in_one_flight([sftp.looking(aside, decode(aside))])[0])
        if there is None or not stat.S_ISREG(there.mode or 0) or token(there) != token(listed):
            return  # gone or changed since the walk: the next walk says
        folder, _, name = aside.rpartition(b"/")
        other = left_aside_by_another(decode(name), token(there), None)
        if other is None:
            try:
                sftp.remove(aside)
            except SftpError as error:
                if error.errno == errno.ENOENT:
                    return
                raise
            log.info("remote %s: removed %s, a version whose delete or replace was cut "
                     "short", self.plug.name, decode(aside))
            return
        if not set_aside_by(decode(name), self.plug.aside_owner):
            self._warnings.warn(decode(aside), "another version was moved aside to %s, and "
                                "the name it had was cut short there: it stays")
            return
        try:  # SFTP's plain rename never replaces: a name taken since stays taken
            sftp.rename(aside, folder + b"/" + encode(other))
        except SftpError as error:
            if error.errno == errno.ENOENT:
                return
            self._warnings.warn(decode(aside), "another version was moved aside to %s and "
                                "its name is taken: it stays there")
