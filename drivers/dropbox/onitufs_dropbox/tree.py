"""What the remote folder holds, as the driver last learnt it, and how mount paths map to it.

Each entry is keyed by its folded path (onitufs.storednames.fold of each component),
as Dropbox compares them, and keeps its name as stored there. A mount path maps
to a Dropbox path one component at a time: a name the folder already holds
for it keeps its stored name; a new one is stored as it is, unless Dropbox
would refuse it, fold it onto another name of the folder, or read it as an
escape: then as its escape (onitufs.storednames), said once in the log.
"""

from __future__ import annotations

import calendar
import logging
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from dropbox import files

from onitufs.plug import TEMP_SUFFIX, DriverError, Metadata, ancestors, at_or_below, outermost
from onitufs.storednames import escape, fold, mount_name

from .names import MAX_UNITS, needs_escape, units

# Dropbox keeps no permission bits: every file shows with these, every folder with those.
FILE_MODE = 0o644
FOLDER_MODE = 0o755

log = logging.getLogger(__name__)


@dataclass
class Node:
    name: str  # as stored on Dropbox
    kind: str  # "file" or "dir"
    id: str
    rev: str | None = None
    size: int = 0
    mtime: int = 0  # client_modified, in whole seconds
    display: str = ""  # the path relative to the root as Dropbox last showed it


def node_metadata(path: str, node: Node) -> Metadata:
    """The node as reported at the mount path `path`."""
    if node.kind == "dir":
        return Metadata(path=path, kind="dir", mode=FOLDER_MODE, file_id=node.id)
    return Metadata(path=path, kind="file", size=node.size, mtime_ns=node.mtime * 10**9,
                    mode=FILE_MODE, revision=node.rev, file_id=node.id)


def node_of(entry: files.Metadata, relative: str) -> Node | None:
    """A listing's entry as a Node (None for a deleted one)."""
    if isinstance(entry, files.FileMetadata):
        return Node(entry.name, "file", entry.id, entry.rev, entry.size,
                    calendar.timegm(entry.client_modified.utctimetuple()), relative)
    if isinstance(entry, files.FolderMetadata):
        return Node(entry.name, "dir", entry.id, display=relative)
    return None


def hidden(key: str) -> bool:
    """Whether an entry is the driver's own (TEMP_SUFFIX: a folder moved aside to be
    deleted), or in one: never reported."""
    return any(name.endswith(TEMP_SUFFIX) for name in key.split("/"))


class Tree:
    """Thread-safe: the handlers and the watcher share it."""

    def __init__(self, root: str) -> None:
        self.root = root  # "" or "/Folder"
        self._nodes: dict[str, Node] = {}
        self._lock = threading.Lock()
        self._escaped: set[str] = set()  # mount paths already reported in the log

    # keys and paths

    def relative(self, path_lower: str) -> str:
        """A path Dropbox gives, relative to the root ("" for the root itself)."""
        root = self.root.lower()
        if path_lower.lower() == root:
            return ""
        return path_lower[len(root) + 1:] if path_lower.lower().startswith(root + "/") \
            else path_lower

    def api_path(self, stored: str) -> str:
        """A stored path relative to the root as the API takes it."""
        return f"{self.root}/{stored}" if stored else self.root

    # what the driver learns

    def put(self, relative: str, node: Node) -> None:
        with self._lock:
            self._nodes[fold(relative)] = node

    def remove(self, relative: str) -> None:
        key = fold(relative)
        with self._lock:
            for other in [k for k in self._nodes if k == key or k.startswith(key + "/")]:
                del self._nodes[other]

    def move(self, old_relative: str, new_relative: str, node: Node) -> None:
        old, new = fold(old_relative), fold(new_relative)
        with self._lock:
            moved = {k: n for k, n in self._nodes.items() if k.startswith(old + "/")}
            for k in [old, *moved]:
                self._nodes.pop(k, None)
            self._nodes[new] = node
            for k, n in moved.items():
                self._nodes[new + k[len(old):]] = n

    def clear(self) -> None:
        with self._lock:
            self._nodes.clear()

    # mount paths

    def mount_path(self, key: str) -> str:
        with self._lock:
            return self._mount_path(key)

    def _mount_path(self, key: str) -> str:
        parts = key.split("/")
        node = self._nodes[key]
        shown = node.display.split("/") if node.display.count("/") == key.count("/") else parts
        names = []
        for depth in range(1, len(parts) + 1):
            found = self._nodes.get("/".join(parts[:depth]))
            names.append(mount_name(found.name if found is not None else shown[depth - 1]))
        return "/".join(names)

    def stored_path(self, path: str, moving: str | None = None) -> str:
        """The Dropbox path (relative to the root) that holds, or is to hold, `path` of the
        mount. `moving` is a mount path whose entry does not count as taking a name: a
        rename in case only keeps the plain name."""
        with self._lock:
            freed = fold(self._stored(moving, None)) if moving is not None else None
            return self._stored(path, freed)

    def _stored(self, path: str, freed: str | None) -> str:
        key, stored = "", []
        for name in path.split("/"):
            child = self._child(key, name)
            stored_name = child if child is not None else self._new_name(key, name, path, freed)
            stored.append(stored_name)
            key = f"{key}/{fold(stored_name)}" if key else fold(stored_name)
        return "/".join(stored)

    def _child(self, key: str, name: str) -> str | None:
        """The stored name of the entry of folder `key` whose mount name is `name`."""
        for candidate in (name, escape(name)):
            found = self._nodes.get(f"{key}/{fold(candidate)}" if key else fold(candidate))
            if found is not None and mount_name(found.name) == name:
                return found.name
        return None

    def _new_name(self, key: str, name: str, path: str, freed: str | None) -> str:
        stored = name
        plain = f"{key}/{fold(name)}" if key else fold(name)
        taken = self._nodes.get(plain) if plain != freed else None
        if needs_escape(name) or taken is not None:
            stored = escape(name)
            if units(stored) > MAX_UNITS:
                raise DriverError(f"{path}: Dropbox cannot hold this name, nor its escape "
                                  f"(over {MAX_UNITS} UTF-16 units)")
            if self._nodes.get(f"{key}/{fold(stored)}" if key else fold(stored)) is not None:
                raise DriverError(f"{path}: both this name and its escape {stored!r} are "
                                  "taken on Dropbox")
            if path not in self._escaped:
                self._escaped.add(path)
                why = f"Dropbox holds {taken.name!r} there, the same name to it" \
                    if taken is not None else "Dropbox refuses the name as it is"
                log.warning("%r: stored on Dropbox as %r: %s", path, stored, why)
        return stored

    # reports

    def describe(self, key: str) -> Metadata:
        with self._lock:
            return self._describe(key)

    def _describe(self, key: str) -> Metadata:
        return node_metadata(self._mount_path(key), self._nodes[key])

    def listing(self) -> list[Metadata]:
        """What is reported: all but the hidden entries."""
        with self._lock:
            return [self._describe(key) for key in sorted(self._nodes) if not hidden(key)]

    def hidden_folders(self) -> list[str]:
        """The paths relative to the root, as Dropbox shows them, of the hidden folders
        that are not in another (a folder moved aside to be deleted)."""
        with self._lock:
            return [node.display or key for key, node in sorted(self._nodes.items())
                    if node.kind == "dir" and key.rpartition("/")[2].endswith(TEMP_SUFFIX)
                    and not hidden(key.rpartition("/")[0])]

    def shown_at(self, relative: str) -> str | None:
        """The mount path of the entry at `relative` (a path Dropbox gives), None if there
        is none or it is hidden: what a change there makes part of the next report."""
        key = fold(relative)
        with self._lock:
            return self._mount_path(key) if key in self._nodes and not hidden(key) else None

    def part(self, scope: Iterable[str]) -> tuple[list[Metadata], list[str]]:
        """What is reported at and below the mount paths of `scope`, and those of its paths
        that are not below another: a part of the listing for plug.report_part. Found by
        their keys, not by describing the whole tree."""
        tops = outermost(scope)
        with self._lock:
            keys, folders, unknown = set(), set(), []
            for top in tops:
                key = self._key_of(top)
                if key is None:
                    unknown.append(top)  # gone (its entries too, unless orphans below)
                else:
                    keys.add(key)
                    if self._nodes[key].kind == "dir":
                        folders.add(key)
            if folders or unknown:
                for key in self._nodes:
                    above = ancestors(key)
                    if any(up in folders for up in above):
                        keys.add(key)
                    elif unknown and not all(up in self._nodes for up in above):
                        # An entry whose folder the driver has not learnt yet is shown under
                        # the name Dropbox gave the folder: as in the whole listing.
                        shown = self._mount_path(key)
                        if any(at_or_below(shown, top) for top in unknown):
                            keys.add(key)
            return [self._describe(key) for key in sorted(keys) if not hidden(key)], tops

    def _key_of(self, path: str) -> str | None:
        """The key of the entry shown at mount path `path`, None if there is none."""
        key = ""
        for name in path.split("/"):
            stored = self._child(key, name)
            if stored is None:
                return None
            key = f"{key}/{fold(stored)}" if key else fold(stored)
        return key

    def find(self, relative: str) -> Node | None:
        with self._lock:
            return self._nodes.get(fold(relative))

    # saved between mounts

    def dump(self) -> list[dict[str, Any]]:
        with self._lock:
            return [{"key": key, **vars(node)} for key, node in self._nodes.items()]

    def load(self, saved: list[dict[str, Any]]) -> None:
        with self._lock:
            self._nodes = {item.pop("key"): Node(**item) for item in map(dict, saved)}
