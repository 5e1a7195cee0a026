"""Content in an onitufs mount, for git-annex: stored durably, read back, checked, removed.

A file is stored under a temporary name, fsynced and renamed into place, then the mount is
asked to upload at once (user.onitufs.flush) and the file's user.onitufs.replicas is
polled until the remotes hold its revision as `durable` asks: every writable remote (None)
or that many. The status of the mount (user.onitufs.status) says whether a remote still
waited for cannot get it (offline, or stalled): then the store fails with the reason, it
is never reported stored before it is.

A store killed while it writes (kill -9, a power loss, Ctrl-C) leaves its temporary file in
the mount, and the mount copies it to every remote. So each machine writes its temporary
files in a folder of its own, each held under flock(2) by its writer while it lives, and
each store first removes from that folder the files of writers gone (and those an older
onitufs left in the folder of all machines, once a day old).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import filecmp
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..cli.common import FLUSH_XATTR, CommandError, read_status
from ..renames import rename_noreplace
from .keys import Key, parse_key

REPLICAS_XATTR = "user.onitufs.replicas"
SHA256_XATTR = "user.onitufs.sha256"
KEYS_FOLDER = ".git-annex"
TEMP_FOLDER = ".git-annex/tmp"
MACHINE_ID = Path("/etc/machine-id")
OLD_TEMP = re.compile(r".+\.[0-9]+\.[0-9]+")  # KEY.PID.NS, as an older onitufs named them
STALE = 24 * 3600  # seconds
# Seconds between two looks at the replicas of a file being stored: the first soon (a
# small file on a local remote is there in about 10 ms), then less often, up to POLL.
FIRST_POLL = 0.005
POLL = 0.1
CHUNK = 1 << 20


class Unavailable(Exception):
    """The mount cannot answer: not mounted, not onitufs, another config, or its daemon
    stopped. The message says which, of the path."""


class Failed(Exception):
    """An operation that failed, with why in one line."""


@dataclass(frozen=True)
class Settings:
    mount: Path
    prefix: Path  # relative to the mount; Path(".") for its root
    durable: int | None  # how many remotes must hold a file; None: every writable one
    config: str | None  # the config file of the mount this remote was set up on


def parse_settings(mount: str, prefix: str, durable: str, config: str | None) -> Settings:
    """Settings from git-annex's config values; ValueError naming what is wrong."""
    if not mount:
        raise ValueError("mount= is needed: the mount point of an onitufs mount")
    relative = Path(prefix.strip("/") or ".")
    if ".." in relative.parts:
        raise ValueError(f"prefix={prefix}: must not go above the mount (no ..)")
    if durable in ("", "all"):
        count = None
    elif durable.isdigit() and int(durable) > 0:
        count = int(durable)
    else:
        raise ValueError(f"durable={durable}: expected all or a number of remotes from 1")
    return Settings(Path(mount).expanduser().absolute(), relative, count, config or None)


@dataclass
class Replicas:
    """Who holds a file's current revision, of the remotes that count."""

    held: list[str] = field(default_factory=list)
    waiting: list[str] = field(default_factory=list)  # writable, and can still get it
    blocked: dict[str, str] = field(default_factory=dict)  # writable, cannot now: why


class MountStore:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.mount / settings.prefix
        self.temp_folder = self.root / TEMP_FOLDER / machine()
        # Held from a temporary file's revision to its rename, and by each flush: a flush
        # asked by another job must not upload a file under its temporary name, for the
        # replicas of a revision count it held wherever the remote has it.
        self._naming = threading.Lock()

    # the mount

    def status(self) -> dict[str, Any]:
        """The mount's status, once it is known to be the mount this remote was set up on."""
        try:
            status = read_status(self.settings.mount)
        except CommandError as error:
            raise Unavailable(str(error)) from None
        if self.settings.config is not None and status["config"] != self.settings.config:
            raise Unavailable(f"{self.settings.mount}: an onitufs mount of {status['config']}, "
                              f"not of {self.settings.config} as when this remote was set up")
        if self.needed(status) > len(writable(status)):
            raise Unavailable(f"durable={self.settings.durable}, but the mount at "
                              f"{self.settings.mount} has {len(writable(status))} writable remotes")
        return status

    def needed(self, status: dict[str, Any]) -> int:
        return len(writable(status)) if self.settings.durable is None else self.settings.durable

    def replicas(self, path: Path, status: dict[str, Any]) -> Replicas:
        lines = os.getxattr(path, REPLICAS_XATTR).decode().splitlines()
        states = dict(entry.split(": ", 1) for entry in lines if ": " in entry)
        remotes = {remote["name"]: remote for remote in status["remotes"]}
        found = Replicas()
        for name, state in states.items():
            remote = remotes.get(name, {})
            if state == "held":
                found.held.append(name)
            elif "w" in remote.get("mode", ""):
                if remote.get("state") in ("offline", "stalled"):
                    found.blocked[name] = f"{remote['state']}: {remote.get('reason') or 'no reason given'}"
                else:
                    found.waiting.append(name)
        return found

    def durable(self, replicas: Replicas, status: dict[str, Any]) -> bool:
        if self.settings.durable is None:
            return set(writable(status)) <= set(replicas.held)
        return len(replicas.held) >= self.settings.durable

    def _hopeless(self, replicas: Replicas, status: dict[str, Any]) -> str | None:
        """Why the file cannot become durable now, or None while it still can."""
        if self.settings.durable is None:
            can = not replicas.blocked
        else:
            can = len(replicas.held) + len(replicas.waiting) >= self.settings.durable
        if can:
            return None
        why = "; ".join(f"{name} is {reason}" for name, reason in sorted(replicas.blocked.items()))
        return (f"held by {len(replicas.held)} of the {self.needed(status)} remotes it must be on "
                f"({', '.join(replicas.held) or 'none'}): {why}")

    # paths

    def key_path(self, key: str, dirhash_lower: str) -> Path:
        return self.root / KEYS_FOLDER / dirhash_lower / key

    def export_path(self, name: bytes) -> Path:
        """Where the export keeps `name`. Failed when a folder on the way is a symbolic
        link (made in the mount, or brought by a remote): an export follows none, where
        a store or a remove would reach past the mount."""
        relative = Path(os.fsdecode(name).strip("/"))
        if ".." in relative.parts or not relative.parts:
            raise Failed(f"{os.fsdecode(name)!r}: not a name below the export")
        folder = self.settings.mount
        for part in (*self.settings.prefix.parts, *relative.parts[:-1]):
            folder /= part
            if folder.is_symlink():
                raise Failed(f"{folder}: a symbolic link; an export does not follow one")
        return self.root / relative

    # operations

    def store(self, source: Path, target: Path, key: str, progress: Callable[[int], None]) -> None:
        """Copy `source` to `target` in the mount and return once it is durable. A file
        already at `target` is never replaced: the same content is kept as it is, another
        (made or edited through the mount, or by another machine) fails the store."""
        share = len(writable(self.status())) + 1  # the copy into the mount, then each replica
        temp = self.temp_folder / f"{key}.{os.getpid()}.{time.monotonic_ns()}"
        size = 0
        try:
            size = source.stat().st_size
            if not self._holds(target, source):
                self._write(source, target, temp, share, progress)
            self.flush()
        except OSError as error:
            with contextlib.suppress(OSError):
                temp.unlink()
            raise Failed(self._why(error, f"cannot write {target}")) from None
        self._wait_durable(target, size, share, progress)

    def _write(self, source: Path, target: Path, temp: Path, share: int,
               progress: Callable[[int], None]) -> None:
        self.temp_folder.mkdir(parents=True, exist_ok=True)
        sweep_dead_stores(self.temp_folder)
        sweep_old_stores(self.temp_folder.parent)
        with source.open("rb") as reader, temp.open("xb") as writer:
            fcntl.flock(writer, fcntl.LOCK_EX)
            done = 0
            while chunk := reader.read(CHUNK):
                writer.write(chunk)
                done += len(chunk)
                progress(done // share)
            writer.flush()
            with self._naming:
                os.fsync(writer.fileno())
                writer.close()
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    rename_noreplace(str(temp), str(target))
                except FileExistsError:
                    if not self._holds(target, source):  # (made while this one wrote)
                        raise
                    temp.unlink()

    @staticmethod
    def _holds(target: Path, content: Path) -> bool:
        """Whether `target` holds what `content` holds (False: nothing there); OSError
        (EEXIST) if it holds something else, which is not git-annex's to replace."""
        if not os.path.lexists(target):
            return False
        # (filecmp keeps outcomes by size and time, which two contents can share)
        filecmp.clear_cache()
        if target.is_file() and not target.is_symlink() \
                and filecmp.cmp(target, content, shallow=False):
            return True
        raise FileExistsError(errno.EEXIST, "holds other content, made or changed through "
                              "the mount; not replaced (move it away, then try again)",
                              str(target))

    def _wait_durable(self, target: Path, size: int, share: int,
                      progress: Callable[[int], None]) -> None:
        first = self.status()
        sent_before = {remote["name"]: remote["bytes_sent"] for remote in first["remotes"]}
        wait = FIRST_POLL
        while True:
            status = self.status()
            try:
                replicas = self.replicas(target, status)
            except OSError as error:
                raise Failed(self._why(error, f"cannot read the replicas of {target}")) from None
            if self.durable(replicas, status):
                progress(size)
                return
            why = self._hopeless(replicas, status)
            if why is not None:
                raise Failed(f"not durable: {why}")
            # the bytes each remote sent since, bounded by the file: a rough share of them
            # may be other files', but they move while this one does
            sent = {remote["name"]: min(size, remote["bytes_sent"] - sent_before.get(remote["name"], 0))
                    for remote in status["remotes"] if remote["name"] in replicas.waiting}
            progress((size + size * len(replicas.held) + sum(sent.values())) // share)
            time.sleep(wait)
            wait = min(POLL, wait * 2)

    def retrieve(self, source: Path, target: Path, progress: Callable[[int], None]) -> None:
        self.status()
        try:
            with source.open("rb") as reader, target.open("wb") as writer:
                done = 0
                while chunk := reader.read(CHUNK):
                    writer.write(chunk)
                    done += len(chunk)
                    progress(done)
        except OSError as error:
            raise Failed(self._why(error, f"cannot read {source}")) from None

    def present(self, path: Path, key: str) -> bool:
        """Whether `path` holds the content of `key`, durably. Unavailable when the mount
        cannot tell."""
        status = self.status()
        try:
            replicas = self.replicas(path, status)
            size = path.stat().st_size
        except OSError as error:
            if error.errno == errno.ENOENT:
                return False
            raise Unavailable(self._why(error, f"cannot look at {path}")) from None
        return self.durable(replicas, status) and _matches(path, key, size)

    def where(self, path: Path) -> list[str]:
        return self.replicas(path, self.status()).held

    def remove(self, path: Path, key: str) -> None:
        """Delete `path` in the mount, so on every remote, if it holds the content of `key`:
        another content there (the file edited through the mount since) is someone's
        work, not git-annex's to delete, and the key's content is gone from there already."""
        self.status()
        try:
            if not _matches(path, key, path.stat().st_size):
                return
            path.unlink()
        except FileNotFoundError:
            return
        except OSError as error:
            raise Failed(self._why(error, f"cannot remove {path}")) from None
        # the empty hash folders of a key go too; ones that hold others stay
        for folder in (path.parent, path.parent.parent):
            try:
                folder.rmdir()
            except OSError:
                break
        with contextlib.suppress(OSError):
            self.flush()

    def rename(self, source: Path, target: Path, key: str) -> None:
        """Rename `source` to `target` if it holds the content of `key`, and `target` is
        free or holds the same."""
        self.status()
        try:
            if not _matches(source, key, source.stat().st_size):
                raise Failed(f"{source} no longer holds {key}")
            target.parent.mkdir(parents=True, exist_ok=True)
            if self._holds(target, source):
                source.unlink()
                return
            rename_noreplace(str(source), str(target))
        except OSError as error:
            raise Failed(self._why(error, f"cannot rename {source} to {target}")) from None

    def remove_folder(self, path: Path) -> None:
        """Remove the folders below `path` and `path` itself, those left empty: a file the
        export did not put there (one made through the mount) stays, with its folders."""
        self.status()
        try:
            for folder, _, _ in os.walk(path, topdown=False, onerror=unless_gone):
                with contextlib.suppress(OSError):  # not empty
                    os.rmdir(folder)
        except OSError as error:
            raise Failed(self._why(error, f"cannot remove {path}")) from None

    def flush(self) -> None:
        """Ask the mount to upload what is queued now, not after its upload_delay."""
        with self._naming:
            os.setxattr(self.settings.mount, FLUSH_XATTR, b"1")

    def _why(self, error: OSError, doing: str) -> str:
        if error.errno == errno.ENOSPC:
            return f"{doing}: the mount at {self.settings.mount} is full ({error.strerror})"
        if error.errno == errno.ENOTCONN:
            return f"{doing}: the daemon of the mount at {self.settings.mount} has stopped"
        return f"{doing}: {error.strerror or error}"


def machine() -> str:
    """This machine's name among the machines that store into one tree: its systemd
    machine id, unique where host names often are not (raspberrypi, debian)."""
    try:
        return MACHINE_ID.read_text().strip() or socket.gethostname()
    except OSError:
        return socket.gethostname()


def sweep_dead_stores(folder: Path) -> None:
    """Remove the temporary files in `folder` whose writers are gone: neither their
    process (named in the file's name) lives nor does anyone hold their lock. A writer
    between its file's creation and its flock is alive, so its file stays."""
    for entry in os.scandir(folder):
        pid = entry.name.rsplit(".", 2)[-2] if entry.name.count(".") >= 2 else ""
        if not pid.isdigit() or alive(int(pid)):
            continue
        try:
            with open(entry.path, "rb") as held:
                fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
                os.unlink(entry.path)
        except OSError:
            continue  # still held (a writer of another pid namespace), or gone already


def sweep_old_stores(folder: Path) -> None:
    """Remove the temporary files an older onitufs left in `folder` itself, of no
    machine's folder and under no lock, once untouched for STALE: a store's writes keep
    its file's time moving, and its rename follows them at once."""
    for entry in os.scandir(folder):
        with contextlib.suppress(OSError):  # (gone already)
            if OLD_TEMP.fullmatch(entry.name) and entry.is_file(follow_symlinks=False) \
                    and time.time() - entry.stat(follow_symlinks=False).st_mtime > STALE:
                os.unlink(entry.path)


def unless_gone(error: OSError) -> None:
    """os.walk's onerror: a folder gone meanwhile (or never there) is nothing to remove;
    any other error is raised (os.walk would pass over it)."""
    if not isinstance(error, FileNotFoundError):
        raise error


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's
    return True


def writable(status: dict[str, Any]) -> list[str]:
    return [remote["name"] for remote in status["remotes"] if "w" in remote["mode"]]


def _matches(path: Path, key: str, size: int) -> bool:
    """What the key says of its content (its size, its SHA-256) holds of the file."""
    parsed = parse_key(key)
    if parsed.size is not None and _size_of(parsed) != size:
        return False
    if parsed.backend in ("SHA256", "SHA256E") and parsed.chunk_number is None:
        try:
            digest = os.getxattr(path, SHA256_XATTR).decode()
        except OSError:
            return True  # not known yet (written out of order): the size has to do
        return parsed.name.startswith(digest)
    return True


def _size_of(key: Key) -> int | None:
    """The size of what `key` names: a chunk key's size field is the whole key's, of which
    it holds chunk_size bytes (the last one, what is left)."""
    if key.size is None or key.chunk_size is None or key.chunk_number is None:
        return key.size
    return min(key.chunk_size, key.size - key.chunk_size * (key.chunk_number - 1))
