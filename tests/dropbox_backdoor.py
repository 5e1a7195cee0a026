"""The conformance suite's backdoor to a Dropbox remote: the fake's own side (the website,
another client), with names mapped as the driver maps them.

A name of the mount is found on Dropbox as the driver stores it: the entry of
the folder whose name reads back as it (storednames.mount_name), else, for a new
one, the name itself, or its escape where Dropbox would refuse it or fold it
onto a name the folder holds (names.py).
"""

from __future__ import annotations

import calendar
import contextlib
import datetime
from collections.abc import Iterator

from onitufs_dropbox.names import needs_escape

from onitufs.plug import Kind
from onitufs.storednames import escape, fold, mount_name
from onitufs.testing.backdoor import Backdoor
from onitufs.testing.dropbox_api import FakeDropbox


class DropboxBackdoor(Backdoor):
    def __init__(self, fake: FakeDropbox, root: str) -> None:
        self.fake = fake
        self.root = root  # "/folder": the remote's folder in the fake

    def _children(self, folder: str) -> dict[str, str]:
        """The stored names of the entries of the stored folder, by their mount names."""
        prefix = fold(f"{self.root}/{folder}" if folder else self.root) + "/"
        found = {}
        for display in self.fake.tree():
            if fold(display).startswith(prefix) and "/" not in display[len(prefix):]:
                name = display[len(prefix):]
                found[mount_name(name)] = name
        return found

    def _stored(self, path: str) -> str:
        folder = ""
        for name in path.split("/"):
            children = self._children(folder)
            stored = children.get(name)
            if stored is None:
                taken = {fold(other) for other in children.values()}
                stored = escape(name) if needs_escape(name) or fold(name) in taken else name
            folder = f"{folder}/{stored}" if folder else stored
        return folder

    def at(self, path: str) -> str:
        return f"{self.root}/{self._stored(path)}" if path else self.root

    def write(self, path: str, data: bytes) -> None:
        self.fake.write(self.at(path), data)

    def read(self, path: str) -> bytes:
        return self.fake.read(self.at(path))

    def kind(self, path: str) -> Kind | None:
        try:
            tag = self.fake.metadata(self.at(path))[".tag"]
        except FileNotFoundError:
            return None
        return "dir" if tag == "folder" else "file"

    def names(self, folder: str = "") -> set[str]:
        return set(self._children(self._stored(folder) if folder else ""))

    def mkdir(self, path: str) -> None:
        self.fake.mkdir(self.at(path))

    def remove(self, path: str) -> None:
        if self.kind(path) == "dir" and self.names(path):
            raise OSError(f"{path}: not empty")
        self.fake.delete(self.at(path))

    def rename(self, old: str, new: str) -> None:
        self.fake.move(self.at(old), self.at(new))

    def mtime_ns(self, path: str) -> int:
        modified = self.fake.metadata(self.at(path))["client_modified"]
        when = datetime.datetime.strptime(modified, "%Y-%m-%dT%H:%M:%SZ")
        return calendar.timegm(when.utctimetuple()) * 10**9

    @contextlib.contextmanager
    def disk_full(self) -> Iterator[None]:
        """The account's quota is what it holds: any write that grows it is refused."""
        self.fake.set_quota(self.fake.used())
        try:
            yield
        finally:
            self.fake.set_quota(None)

    @contextlib.contextmanager
    def unreachable(self) -> Iterator[None]:
        """No network: the fake stops listening and drops every connection."""
        self.fake.go_offline()
        try:
            yield
        finally:
            self.fake.go_online()
