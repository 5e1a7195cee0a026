"""The conformance suite's backdoor to an annex remote: another machine that shares it.

The remote is a folder of keys in the layout rclone's `lower` uses (PREFIX/
DIRHASH-LOWER/KEY), and what "a file on the remote" is, is what its manifest
says: the backdoor reads the manifest the pointer names, and changes the tree
as a second onitufs machine would, writing content keys, a new manifest that
descends from the current one, and the pointer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

from onitufs_annex.manifest import Entry, Manifest, Tree, new_id
from onitufs_annex.sync import MANIFEST_EXTENSION, POINTER

from onitufs.gitannex.keys import content_key, dirhash_lower
from onitufs.plug import Kind
from onitufs.testing.backdoor import Backdoor, FolderBackdoor


class AnnexBackdoor(Backdoor):
    def __init__(self, store: Path, ballast: Path) -> None:
        self.store = store
        self.ballast = ballast

    def _file(self, key: str) -> Path:
        return self.store / dirhash_lower(key) / key

    def _put(self, key: str, data: bytes) -> None:
        """Store a key whole or not at all, as rclone does (a partial file renamed into
        place): the driver polls the pointer, and a pointer read half written is a remote
        that looks damaged."""
        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f"{path.name}.partial")
        partial.write_bytes(data)
        partial.replace(path)

    def _manifest(self) -> tuple[str | None, Manifest]:
        try:
            pointer = json.loads(self._file(POINTER).read_bytes())["manifest"]
        except FileNotFoundError:
            return None, Manifest({}, [], "backdoor")
        return pointer, Manifest.decode(self._file(pointer).read_bytes())

    def _tree(self) -> Tree:
        return self._manifest()[1].entries

    def _write_tree(self, change: dict[str, Entry | None]) -> None:
        pointer, manifest = self._manifest()
        entries = dict(manifest.entries)
        for path, entry in change.items():
            if entry is None:
                entries.pop(path, None)
            else:
                entries[path] = entry
        history = [pointer, *manifest.history] if pointer else []
        data = Manifest(entries, history, "backdoor").encode()
        key = content_key(hashlib.sha256(data).digest(), len(data), MANIFEST_EXTENSION)
        self._put(key, data)
        self._put(POINTER, json.dumps({"manifest": key}).encode())

    def _entry(self, path: str) -> Entry:
        entry = self._tree().get(path)
        if entry is None:
            raise FileNotFoundError(path)
        return entry

    def write(self, path: str, data: bytes) -> None:
        key = content_key(hashlib.sha256(data).digest(), len(data))
        self._put(key, data)
        there = self._tree().get(path)
        self._write_tree({path: Entry(kind="file", id=there.id if there else new_id(),
                                      mode=there.mode if there else 0o644,
                                      mtime_ns=time.time_ns(), key=key, size=len(data))})

    def read(self, path: str) -> bytes:
        entry = self._entry(path)
        assert entry.key is not None, f"{path} is not a file"
        return self._file(entry.key).read_bytes()

    def kind(self, path: str) -> Kind | None:
        entry = self._tree().get(path)
        return entry.kind if entry else None

    def names(self, folder: str = "") -> set[str]:
        return {path.rpartition("/")[2] for path in self._tree()
                if path.rpartition("/")[0] == folder}

    def mkdir(self, path: str) -> None:
        self._write_tree({path: Entry(kind="dir", id=new_id(), mode=0o755)})

    def remove(self, path: str) -> None:
        self._entry(path)
        if any(other.startswith(path + "/") for other in self._tree()):
            raise OSError(f"{path}: not empty")
        self._write_tree({path: None})

    def rename(self, old: str, new: str) -> None:
        tree = self._tree()
        moved = {path: entry for path, entry in tree.items()
                 if path == old or path.startswith(old + "/")}
        change: dict[str, Entry | None] = dict.fromkeys(moved)
        change |= {new + path[len(old):]: entry for path, entry in moved.items()}
        self._write_tree(change)

    def symlink(self, target: str, path: str) -> None:
        there = self._tree().get(path)
        self._write_tree({path: Entry(kind="symlink", id=there.id if there else new_id(),
                                      mode=0o777, mtime_ns=time.time_ns(), target=target)})

    def readlink(self, path: str) -> str:
        return self._entry(path).target or ""

    def mode(self, path: str) -> int:
        return self._entry(path).mode

    def mtime_ns(self, path: str) -> int:
        return self._entry(path).mtime_ns

    def xattrs(self, path: str) -> dict[str, bytes]:
        return dict(self._entry(path).xattrs)

    @contextlib.contextmanager
    def unreachable(self) -> Iterator[None]:
        """The store gone, as a disk unmounted or a bucket out of reach."""
        away = self.store.with_name(self.store.name + ".away")
        self.store.rename(away)
        try:
            yield
        finally:
            away.rename(self.store)

    def disk_full(self) -> contextlib.AbstractContextManager[None]:
        return FolderBackdoor(self.store, self.ballast).disk_full()
