"""The tree's way to and from the remote: manifests, the pointer to the current one, and
the removal of keys no path uses any more.

The remote holds the current manifest under its content key, and a small
pointer under a fixed key, POINTER, naming it; a program must replace a key
it is asked to store again (every one tried does). A machine with nothing
but the remote's configuration reads the pointer and the manifest, and has
the whole tree; a machine that finds the pointer moved on merges that
manifest into its own tree (manifest.merge), from the manifest both descend
from. Every change goes the same way round: the pointer is read, another
machine's manifest written since is merged first (not overwritten), the
change is made to that tree, and the new manifest is stored and named by
the pointer (two machines writing within that moment are merged by
whichever looks next: a manifest names those it descends from).

A key that no path uses any more is removed after `remove_after`, unless a
path uses it again by then; so is a manifest replaced by a newer one, which
a machine still merging from it may need meanwhile.
"""

from __future__ import annotations

import hashlib
import json
import logging
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from onitufs.gitannex.keys import content_key
from onitufs.plug import DriverError, RemoteUnavailable

from .fetched import Fetched
from .journal import Base, Journal
from .manifest import HISTORY, Manifest, merge, referenced
from .transfers import Special

log = logging.getLogger(__name__)
POINTER = "WORM--onitufs-manifest-pointer"
MANIFEST_EXTENSION = ".onitufs-manifest"
T = TypeVar("T")


class Sync:
    def __init__(self, special: Special, journal: Journal, fetched: Fetched, work: Path,
                 remove_after: float, taken_in: Callable[[], None]) -> None:
        self.special = special
        self.journal = journal
        self.fetched = fetched
        self.work = work
        self.remove_after = remove_after
        self.label = special.label
        self.host = socket.gethostname()
        self.reached = False  # the pointer was read once: the tree is the remote's
        self.unreachable: str | None = None  # why the last look at the pointer failed
        self.taken_in = taken_in  # called when the tree took in another machine's changes
        self._lock = threading.Lock()  # one look at the pointer, or one write, at a time
        self._behind = False  # the pointer names a manifest older than ours
        # Keys being removed: an upload of the same content waits, then stores it again.
        self.removing: set[str] = set()
        self.removed = threading.Condition(journal.lock)

    def poll(self) -> None:
        """Take in what other machines wrote, and write what this one has not yet."""
        self.change(lambda: None)

    def look(self) -> None:
        """Take in the tree as the remote holds it now."""
        with self._lock:
            self._pull()

    def change(self, apply: Callable[[], T]) -> T:
        """Change the tree with `apply` (which calls journal.changed() if it changes it) as
        the remote's tree is now, and return once the remote holds the change. `apply` runs
        with the journal locked, right after the remote's manifest was read: what it checks
        (the version at a path, a name in use) is what the remote holds, not what the last
        poll found; what it raises changes nothing."""
        with self._lock:
            self._pull()
            with self.journal.lock:
                result = apply()
                unsent = self._behind or self.journal.sent < self.journal.generation \
                    or self.journal.tree != self.journal.base.entries
            if unsent:
                self._push()
            return result

    def collect(self) -> None:
        """Remove the keys that no path has used for `remove_after`."""
        now = time.time()
        with self.journal.lock:
            used = referenced(self.journal.tree) | {self.journal.base.id}
            for key in [key for key in self.journal.garbage if key in used]:
                del self.journal.garbage[key]
            due = [key for key, since in self.journal.garbage.items()
                   if now - since >= self.remove_after]
            self.removing.update(due)
        for key in due:
            removed = False
            try:
                self.special.remove(key)
                removed = True
                log.debug("%s: removed %s, which nothing uses", self.label, key)
            finally:
                with self.journal.lock:
                    self.removing.discard(key)
                    if removed:  # else it is tried again at the next look
                        self.journal.garbage.pop(key, None)
                        self.journal.save()
                    self.removed.notify_all()

    def _pull(self) -> None:
        try:
            pointer = self._read_pointer()
        except RemoteUnavailable as error:
            self.unreachable = str(error)
            raise
        self.unreachable = None
        base = self.journal.base
        if pointer is None:
            if base.id is not None:
                self.unreachable = (f"{self.label}: the remote no longer holds the manifest "
                                    "of onitufs's tree (emptied, or another place?); treated "
                                    "as unavailable")
                raise RemoteUnavailable(self.unreachable)
            self.reached = True
            return
        if pointer == base.id:
            self.reached = True
            return
        if pointer in base.history:
            log.warning("%s: the remote's manifest went back to an older one; writing ours "
                        "again", self.label)
            self._behind = True
            self.reached = True
            return
        theirs = self._manifest(pointer)
        ancestors = {pointer, *theirs.history}
        common = next((id for id in ([base.id] if base.id else []) + base.history
                       if id in ancestors), None)
        if common == base.id:
            start = base.entries
        else:
            try:
                start = self._manifest(common).entries if common else {}
            except (DriverError, ValueError) as error:
                log.info("%s: cannot read manifest %s, where the trees parted (%s): merging "
                         "without it", self.label, common, error)
                start = {}
        with self.journal.lock:
            self.journal.tree = merge(start, self.journal.tree, theirs.entries, self.host,
                                      theirs.writer or "another machine")
            history = [pointer, *([base.id] if base.id else []), *theirs.history,
                       *base.history]
            self.journal.base = Base(pointer, list(dict.fromkeys(history))[:HISTORY],
                                     theirs.entries)
            self.journal.save()
        log.info("%s: took in the tree written by %s", self.label, theirs.writer or "another")
        self.reached = True
        self.taken_in()

    def _push(self) -> None:
        with self.journal.lock:
            entries = dict(self.journal.tree)
            generation = self.journal.generation
            base = self.journal.base
        manifest = Manifest(entries, [*([base.id] if base.id else []), *base.history],
                            self.host)
        data = manifest.encode()
        key = content_key(hashlib.sha256(data).digest(), len(data), MANIFEST_EXTENSION)
        out = self.work / "manifest.out"
        out.write_bytes(data)
        self.special.store(key, out, len(data))
        self.fetched.adopt(key, out)
        self._write_pointer(key)
        with self.journal.lock:
            if base.id is not None:
                self.journal.garbage.setdefault(base.id, time.time())
            self.journal.base = Base(key, manifest.history[:HISTORY], entries)
            self.journal.sent = max(self.journal.sent, generation)
            self.journal.save()
        self._behind = False

    def _manifest(self, key: str) -> Manifest:
        return Manifest.decode(self.fetched.get(key).read_bytes())

    def _read_pointer(self) -> str | None:
        path = self.work / "pointer"
        try:
            self.special.retrieve(POINTER, path, 0)
        except RemoteUnavailable:
            raise
        except DriverError as error:
            if self.special.present(POINTER):
                raise RemoteUnavailable(f"{self.label}: cannot read its manifest pointer: "
                                        f"{error}") from None
            return None  # a remote onitufs never wrote to
        try:
            value = json.loads(path.read_bytes())["manifest"]
        except (ValueError, KeyError, TypeError):
            raise RemoteUnavailable(f"{self.label}: its {POINTER} is not onitufs's; "
                                    "treated as unavailable") from None
        if not isinstance(value, str):
            raise RemoteUnavailable(f"{self.label}: its {POINTER} is damaged")
        return value

    def _write_pointer(self, key: str) -> None:
        data = json.dumps({"manifest": key, "writer": self.host,
                           "written": time.time()}).encode()
        out = self.work / "pointer.out"
        out.write_bytes(data)
        self.special.store(POINTER, out, len(data))
