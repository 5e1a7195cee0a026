"""Where the content of files goes on the remote: under its key, or exported under the
file's own path.

Under its key (the default), the same content is stored once, a key no
path uses any more waits `remove_after` before it is removed (sync.py), and
a rename or a delete changes the tree only. Exported (`export = true`), the
remote holds a tree anyone can browse: each file is stored under its path
with git-annex's export interface. An upload is exported first under a
name of its own in ONITUFS_FOLDER (its spool file's) and renamed into place
once it is known that nothing else took the path meanwhile (a program that
cannot rename exports it again there), or removed when it is not needed
there. The journal holds such a name from before it is exported until it
is in place or removed: one that a failure or a crash left, and that no
upload uses, is removed at the next poll (sweep). A rename is a rename
there, a delete a removal, and a folder deleted is removed there where the
program has folders. The manifest and the pointer are keys in both cases
(sync.py).
"""

from __future__ import annotations

import threading
from pathlib import Path

from .fetched import Fetched
from .journal import Journal
from .manifest import Entry
from .sync import Sync
from .transfers import Special

ONITUFS_FOLDER = ".onitufs-annex"  # on an exporting remote: uploads not yet in place


class Content:
    def __init__(self, special: Special, journal: Journal, sync: Sync, fetched: Fetched,
                 export: bool) -> None:
        self.special = special
        self.journal = journal
        self.sync = sync
        self.fetched = fetched  # a rename the program cannot do is a copy
        self.export = export
        self._sending: set[str] = set()  # names aside of the uploads under way (journal lock)
        self._swept = threading.Lock()  # one sweep at a time

    def retrieve(self, key: str, where: str | None, file: Path, size: int) -> None:
        """Fetch the key's content into `file`: from the file at `where`, when exported."""
        if self.export and where is not None:
            self.special.export_retrieve(where, key, file, size)
        else:
            self.special.retrieve(key, file, size)

    def send(self, key: str, spool: Path, size: int) -> None:
        """An upload's content onto the remote, where no file shows it yet; `sent` follows,
        whatever came of the upload."""
        if self.export:
            with self.journal.lock:
                self._sending.add(_aside(spool))
                self.journal.asides[_aside(spool)] = key
                self.journal.save()  # before it is there: a crash from here leaves it known
            self.special.export_store(_aside(spool), key, spool, size)
            return
        with self.journal.lock:
            while key in self.sync.removing:  # removed as unused right now: store it after
                self.sync.removed.wait()
            self.journal.garbage.pop(key, None)
            known = key in {entry.key for entry in self.journal.tree.values()}
        if not (known and self.special.present(key)):
            self.special.store(key, spool, size)

    def sent(self, spool: Path) -> None:
        """The upload from `spool` ended: what it left aside is the next sweep's."""
        with self.journal.lock:
            self._sending.discard(_aside(spool))

    def unsent(self, key: str, spool: Path) -> None:
        """An upload that does not go in place (a conflict, or the path holds its content
        already): what it sent goes, unless something uses it."""
        if self.export:
            self.special.export_remove(_aside(spool), key)
            self._removed(_aside(spool))
        else:
            self.journal.drop(key)

    def sweep(self) -> None:
        """Remove what uploads that ended without putting it in place left aside."""
        with self._swept:
            with self.journal.lock:
                left = {name: key for name, key in self.journal.asides.items()
                        if name not in self._sending}
            for name, key in left.items():
                self.special.export_remove(name, key)
                with self.journal.lock:
                    if name not in self._sending:  # else its upload stored it anew
                        self._removed(name)

    def release(self, key: str | None) -> None:
        """A key the tree may no longer use (after the change): garbage once no path does.
        An exported file went with its path."""
        if not self.export:
            self.journal.drop(key)

    def place(self, path: str, key: str, spool: Path, size: int) -> None:
        """The upload's content at `path` (the journal locked, the path checked: the change
        is being made)."""
        if not self.export:
            return
        if not self.special.export_rename(_aside(spool), key, path):
            self.special.export_store(path, key, spool, size)
            self.special.export_remove(_aside(spool), key)
        self._removed(_aside(spool))

    def gone(self, path: str, entry: Entry) -> None:
        """The entry at `path` is leaving the tree (deleted): an exported file goes."""
        if self.export and entry.kind == "file" and entry.key is not None:
            self.special.export_remove(path, entry.key)
        elif self.export and entry.kind == "dir":
            self.special.export_remove_folder(path)

    def moved(self, old: str, new: str, entries: dict[str, Entry]) -> None:
        """The entries below `old` (and itself) go below `new`: exported files with them."""
        if not self.export:
            return
        for path, entry in entries.items():
            if entry.kind != "file" or entry.key is None:
                continue
            target = new + path[len(old):]
            if self.special.export_rename(path, entry.key, target):
                continue
            local = self.fetched.get(entry.key, path)
            self.special.export_store(target, entry.key, local, entry.size)
            self.special.export_remove(path, entry.key)
        if entries.get(old) is not None and entries[old].kind == "dir":
            self.special.export_remove_folder(old)

    def _removed(self, name: str) -> None:
        with self.journal.lock:
            if self.journal.asides.pop(name, None) is not None:
                self.journal.save()


def _aside(spool: Path) -> str:
    return f"{ONITUFS_FOLDER}/{spool.name}"
