"""The remote's tree as this machine knows it, kept on disk between mounts.

Besides the tree itself (what the handlers made of the remote, and what
came from other machines' manifests), it keeps the manifest it last took
from the remote or wrote there, its base for the next merge, and the keys
no path uses any more, with when they stopped being used, until they are
removed from the remote, and (exporting) the uploads exported aside and not
yet put in place or removed, so that what a failure or a crash left there
is removed later (content.py). Every change is on disk before the handler that
made it returns, so a crash before the manifest reached the remote loses
nothing: the next mount sends it.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from onitufs.durable import write_atomically

from .manifest import Tree, referenced, tree_from_json, tree_to_json
from .state import read_json


@dataclass
class Base:
    """The manifest the tree was last merged with or written as."""

    id: str | None = None
    history: list[str] = field(default_factory=list)
    entries: Tree = field(default_factory=dict)


class Journal:
    def __init__(self, path: Path) -> None:
        self._path = path
        self.lock = threading.RLock()
        saved = read_json(path)
        self.tree: Tree = tree_from_json(saved.get("tree", {}))
        base = saved.get("base", {})
        self.base = Base(base.get("id"), base.get("history", []),
                         tree_from_json(base.get("entries", {})))
        self.garbage: dict[str, float] = saved.get("garbage", {})
        self.generation = int(saved.get("generation", 0))  # changes made so far
        self.sent = int(saved.get("sent", 0))  # changes that reached the remote's manifest
        self.asides: dict[str, str] = saved.get("asides", {})  # exported name -> its key

    def changed(self) -> None:
        """Record a change of the tree (the caller holds the lock): on disk now, and unsent
        until the remote's manifest holds it."""
        self.generation += 1
        self.save()

    def drop(self, key: str | None) -> None:
        """A key the tree may no longer use: garbage once no path does (lock held)."""
        if key is not None and key not in referenced(self.tree):
            self.garbage.setdefault(key, time.time())

    def save(self) -> None:
        with self.lock:
            data = {"tree": tree_to_json(self.tree), "garbage": self.garbage,
                    "base": {"id": self.base.id, "history": self.base.history,
                             "entries": tree_to_json(self.base.entries)},
                    "generation": self.generation, "sent": self.sent, "asides": self.asides}
            write_atomically(self._path, json.dumps(data).encode())
