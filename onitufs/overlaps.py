"""Refusing a configuration whose folders overlap.

The mount point, the cache folder and the folder of every remote that keeps
its files on this machine (what its driver's ``folder(options)`` names) must
each be apart from the others: none the same as another, none inside another.
A remote at the mount point holds the mount's own files, so what is written
there reaches no remote; a mount point inside a remote makes the remote hold
the mount; two remotes in one folder are one copy counted as two; a cache in
the mount or in a remote is stored in itself or copied as content. The only
pair left alone is a mount point inside the cache folder, which harms neither.

Paths are compared as os.path.realpath gives them, so that neither a symbolic
link nor a '..' hides an overlap. The check runs at every mount, since the
mount point can change from one mount to the next, and before anything is
mounted or the cache folder is made.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from .config import Config, ConfigError
from .plug import remote_folder


@dataclass(frozen=True)
class Place:
    """A folder of the configuration: what to call it, as given, and its real path."""

    name: str
    given: str
    real: str

    @classmethod
    def of(cls, name: str, path: Path) -> Place:
        given = str(path)
        return cls(name, given, os.path.realpath(given))

    def __str__(self) -> str:
        if self.real == self.given:
            return f"{self.name} ({self.given})"
        return f"{self.name} ({self.given}, that is {self.real})"

    def is_inside(self, other: Place) -> bool:
        """Strictly below `other` (the same folder is not inside itself)."""
        return self.real != other.real and Path(self.real).is_relative_to(other.real)


def check(config: Config, mountpoint: Path | None, drivers: Mapping[str, ModuleType]) -> None:
    """Raise ConfigError, naming both folders and why in one line, if any two overlap.

    `drivers` maps each remote's name to its driver module; `mountpoint` is None
    for the commands that mount nothing (fsck, verify).
    """
    remotes = []
    for remote in config.remotes:
        folder = remote_folder(drivers[remote.name], remote.options)
        if folder is not None:
            remotes.append(Place.of(f"remotes.{remote.name}", folder))
    cache = Place.of("cache.path", config.cache_path)
    mount = Place.of("the mount point", mountpoint) if mountpoint is not None else None
    problem = _first_problem(remotes, cache, mount)
    if problem is not None:
        raise ConfigError(f"{config.source}: {problem}")


def _first_problem(remotes: list[Place], cache: Place, mount: Place | None) -> str | None:
    if mount is not None:
        for remote in remotes:
            if remote.real == mount.real:
                return (f"{remote} is the mount point itself: its files would be the mount's "
                        "own, and what is written to the mount would reach no remote")
            if remote.is_inside(mount):
                return (f"{remote} is inside {mount}: the remote would keep its files in "
                        "the mount, and what is written to the mount would reach no remote")
            if mount.is_inside(remote):
                return (f"{mount} is inside {remote}: the remote would hold the mount, "
                        "and so itself")
    for index, remote in enumerate(remotes):
        for earlier in remotes[:index]:
            if remote.real == earlier.real:
                return (f"{remote} is the folder of {earlier} too: one folder is one copy, "
                        "not two, and each remote would take the other's uploads for changes")
            inner, outer = (remote, earlier) if remote.is_inside(earlier) else (earlier, remote)
            if inner.is_inside(outer):
                return (f"{inner} is inside {outer}: {outer.name} would hold "
                        f"{inner.name}'s files as files of its own")
    if mount is not None:
        if cache.real == mount.real:
            return f"{cache} is the mount point itself: the cache would be stored in itself"
        if cache.is_inside(mount):
            return f"{cache} is inside {mount}: the cache would be stored in itself"
    for remote in remotes:
        if cache.real == remote.real:
            return (f"{cache} is the folder of {remote} too: the cache's files would be "
                    "the remote's content")
        if cache.is_inside(remote):
            return (f"{cache} is inside {remote}: the cache's files would be the "
                    "remote's content")
        if remote.is_inside(cache):
            return (f"{remote} is inside {cache}: the cache folder is the cache's alone, "
                    "and the remote's files would be mixed with it")
    return None
