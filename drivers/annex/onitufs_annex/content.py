"""Where the content of files goes on the remote: under its key, or exported under the
file's own path.

Under its key (the default), the same content is stored once, a key no
path uses any more waits `remove_after` before it is removed (sync.py), and
a rename or a delete changes the tree only. Exported (`export = true`), the
remote holds a tree anyone can browse: each file is stored under its path
with git-annex's export interface. An upload is exported first under a
name of its own in ONITUFS_FOLDER and renamed into place once it is known
that nothing else took the path meanwhile (a program that cannot rename
exports it again there); a rename is a rename there, a delete a removal,
and a folder deleted is removed there where the program has folders. The
manifest and the pointer are keys in both cases (sync.py).
"""

from __future__ import annotations

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

    def retrieve(self, key: str, where: str | None, file: Path, size: int) -> None:
        """Fetch the key's content into `file`: from the file at `where`, when exported."""
        if self.export and where is not None:
            self.special.export_retrieve(where, key, file, size)
        else:
            self.special.retrieve(key, file, size)

    def send(self, key: str, spool: Path, size: int) -> None:
        """An upload's content onto the remote, where no file shows it yet."""
        if self.export:
            self.special.export_store(_aside(key), key, spool, size)
            return
        with self.journal.lock:
            while key in self.sync.removing:  # removed as unused right now: store it after
                self.sync.removed.wait()
            self.journal.garbage.pop(key, None)
            known = key in {entry.key for entry in self.journal.tree.values()}
        if not (known and self.special.present(key)):
            self.special.store(key, spool, size)

    def unsent(self, key: str) -> None:
        """An upload that did not go in place (a conflict): its content goes."""
        if self.export:
            self.special.export_remove(_aside(key), key)
        else:
            self.journal.drop(key)

    def release(self, key: str | None) -> None:
        """A key the tree may no longer use (after the change): garbage once no path does.
        An exported file went with its path."""
        if not self.export:
            self.journal.drop(key)

    def place(self, path: str, key: str, spool: Path, size: int) -> None:
        """The upload's content at `path` (the journal locked, the path checked: the change
        is being made)."""
        if self.export and not self.special.export_rename(_aside(key), key, path):
            self.special.export_store(path, key, spool, size)
            self.special.export_remove(_aside(key), key)

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


def _aside(key: str) -> str:
    return f"{ONITUFS_FOLDER}/{key}"
