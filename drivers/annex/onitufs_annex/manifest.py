"""The tree a remote holds, as the driver keeps it: entries, manifests, and their merge.

A special remote stores keys and cannot list, so the driver keeps the tree
itself: each path's kind, content key, size, mode, time, symbolic link
target, user extended attributes, and an id of its own that a rename keeps.
That tree is stored on the remote as a manifest (compressed JSON, an
ordinary key), with the manifests it descends from, so that a machine that
finds another's manifest can tell what both changed since they parted.

merge() is that three-way merge. What one side changed and the other did
not is taken; an edit wins over a delete; where both sides changed a file
or link differently, the later one (by modification time) keeps the path and
the other is kept beside it under onitufs's conflict name: no side is ever
dropped.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from onitufs.plug import Kind, Metadata
from onitufs.remote_changes import conflict_name

FORMAT = 1
HISTORY = 32  # manifests a manifest names as its ancestors


def new_id() -> str:
    return os.urandom(8).hex()


@dataclass(frozen=True)
class Entry:
    kind: Kind
    id: str
    mode: int
    mtime_ns: int = 0
    key: str | None = None  # a file's content
    size: int = 0
    target: str | None = None  # a symbolic link's
    xattrs: dict[str, bytes] = field(default_factory=dict)

    def revision(self) -> str:
        """The token of this version: a file's time and content, a link's target."""
        if self.kind == "file":
            digest = hashlib.sha256((self.key or "").encode()).hexdigest()[:16]
            return f"{self.mtime_ns}:{digest}"
        if self.kind == "symlink":
            target = (self.target or "").encode("utf-8", "surrogateescape")
            return f"link:{hashlib.sha256(target).hexdigest()[:16]}"
        return "dir"

    def describe(self, path: str) -> Metadata:
        return Metadata(path=path, kind=self.kind, size=self.size, mtime_ns=self.mtime_ns,
                        mode=self.mode, revision=self.revision(), file_id=self.id,
                        target=self.target)

    def same_content(self, other: Entry) -> bool:
        return (self.kind, self.key, self.target) == (other.kind, other.key, other.target)

    def to_json(self) -> dict[str, Any]:
        data = {name: value for name, value in asdict(self).items()
                if value is not None and name != "xattrs"}
        if self.xattrs:
            data["xattrs"] = {name: value.hex() for name, value in self.xattrs.items()}
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Entry:
        if data.get("kind") not in ("file", "dir", "symlink"):
            raise ValueError(f"not an entry: {data!r}")
        xattrs = {name: bytes.fromhex(value) for name, value in data.get("xattrs", {}).items()}
        return cls(kind=data["kind"], id=str(data["id"]), mode=int(data["mode"]),
                   mtime_ns=int(data.get("mtime_ns", 0)), key=data.get("key"),
                   size=int(data.get("size", 0)), target=data.get("target"), xattrs=xattrs)


Tree = dict[str, Entry]


def tree_to_json(tree: Tree) -> dict[str, Any]:
    return {path: entry.to_json() for path, entry in tree.items()}


def tree_from_json(data: dict[str, Any]) -> Tree:
    return {path: Entry.from_json(value) for path, value in data.items()}


@dataclass
class Manifest:
    entries: Tree
    history: list[str]  # the manifests it descends from, the latest first
    writer: str  # the host name of the machine that wrote it

    def encode(self) -> bytes:
        text = json.dumps({"onitufs-manifest": FORMAT, "writer": self.writer,
                           "history": self.history[:HISTORY],
                           "entries": tree_to_json(self.entries)}, sort_keys=True)
        return zlib.compress(text.encode(), 6)

    @classmethod
    def decode(cls, data: bytes) -> Manifest:
        """ValueError if it is not a manifest onitufs wrote."""
        try:
            value = json.loads(zlib.decompress(data))
        except (zlib.error, ValueError) as error:
            raise ValueError(f"not an onitufs manifest: {error}") from None
        if not isinstance(value, dict) or value.get("onitufs-manifest") != FORMAT:
            raise ValueError("not an onitufs manifest of a format this onitufs reads")
        try:
            return cls(tree_from_json(value["entries"]), [str(h) for h in value["history"]],
                       str(value.get("writer", "")))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"a damaged onitufs manifest: {error}") from None


def referenced(tree: Tree) -> set[str]:
    return {entry.key for entry in tree.values() if entry.key is not None}


def merge(base: Tree, ours: Tree, theirs: Tree, our_name: str, their_name: str) -> Tree:
    """Both sides' changes since `base`, none dropped (see the module's docstring)."""
    merged: Tree = {}
    asides: list[tuple[str, Entry, str]] = []  # (path, entry, whose) kept beside the winner
    for path in sorted(set(ours) | set(theirs) | set(base)):
        old, mine, other = base.get(path), ours.get(path), theirs.get(path)
        if mine == other or other == old:
            chosen = mine
        elif mine == old:
            chosen = other
        elif mine is None or other is None:
            chosen = mine or other  # an edit wins over a delete
        elif mine.kind == "dir" or other.kind == "dir":
            if mine.kind == other.kind:
                chosen = mine
            else:  # the folder keeps the path, the file or link goes beside it
                chosen, loser, whose = (mine, other, their_name) if mine.kind == "dir" \
                    else (other, mine, our_name)
                asides.append((path, loser, whose))
        elif mine.same_content(other):
            chosen = other if other.mtime_ns > mine.mtime_ns else mine
        else:
            later_theirs = other.mtime_ns > mine.mtime_ns
            chosen = other if later_theirs else mine
            asides.append((path, mine if later_theirs else other,
                           our_name if later_theirs else their_name))
        if chosen is not None:
            merged[path] = chosen
    for path, entry, whose in asides:
        aside = conflict_name(path, whose, time.time(), lambda name: name in merged)
        merged[aside] = replace(entry, id=new_id())
    return with_parents(merged, base, ours, theirs)


def with_parents(tree: Tree, *sources: Tree) -> Tree:
    """Every folder a path of the tree goes through, as a folder: taken from a source
    that had it, or made; a file in the way of a folder is moved beside it."""
    for path in sorted(tree, key=lambda p: p.count("/")):
        folder = path.rpartition("/")[0]
        while folder:
            there = tree.get(folder)
            if there is None or there.kind != "dir":
                if there is not None:
                    tree[conflict_name(folder, "a folder", time.time(),
                                       lambda name: name in tree)] = there
                known = next((source[folder] for source in sources
                              if folder in source and source[folder].kind == "dir"), None)
                tree[folder] = known or Entry(kind="dir", id=new_id(), mode=0o755)
            folder = folder.rpartition("/")[0]
    return tree
