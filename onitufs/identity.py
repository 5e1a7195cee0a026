"""A remote's identity: knowing that a listing comes from the folder onitufs synced with.

An unplugged disk leaves its empty mount point behind, an SSH folder can be
swapped for another, a service can reset a folder: each looks like a remote
on which everything was deleted. Applying such a listing would delete every
file from the mount and from every other remote, so a listing is judged
before it is applied:

- Each writable remote carries a marker file at its root, MARKER, written
  once with a random id and never changed; the index keeps the id and the
  marker's revision token. A listing that holds the marker with that id
  comes from the right folder, even an empty one: a person emptied it, and
  those deletes travel. A marker with another id is another onitufs
  remote's folder.
- A listing without the marker (a remote where onitufs cannot write, or
  one whose marker was lost) is trusted only while it still holds part of
  what the remote held: a whole tree gone in one listing is an outage.

- A listing whose marker carries the id but is another version than the
  one recorded (another revision; or another change time, which no one can
  set back, where the remote keeps one: `cp -a` and `rsync -a` keep the
  rest) comes from a copy of the folder: one put back from a backup, say,
  which lacks what onitufs put there since. It is trusted, but what it
  lacks was not deleted there: it is sent again (a copy made of the folder
  while nothing changed lacks nothing). So does a listing without the
  marker where onitufs can write it again (a copy made without it: `cp -r
  backup/*`). Until such a listing has been applied whole, no part of one
  is.

A remote judged so goes offline with the reason, every call to it fails
at once, and nothing it reports is applied until a listing passes again.
Before changing a remote, the marker is read again if the last look is
older than RECHECK, so an unplug between two listings is caught before
anything is written into the empty folder left behind.
"""

from __future__ import annotations

import json
import logging
import os
import time
from dataclasses import dataclass

import trio

from .index import Index, MirrorEntry
from .plug import MARKER, MARKER_MAX, Conflict, Metadata
from .remotes import CallFailed, Remote, backoff

log = logging.getLogger(__name__)
RECHECK = 1.0  # seconds: how old a look at the marker may be before a change is made


@dataclass
class Judgement:
    trusted: bool
    outage: str | None = None  # why the remote is treated as unavailable
    put_back: bool = False  # a copy of the folder: what it lacks goes to it again


def marker_content(remote_id: str) -> bytes:
    return json.dumps({"onitufs-remote": remote_id,
                       "note": "onitufs recognises this folder by this file: keep it"}).encode()


def marker_id(content: bytes) -> str | None:
    try:
        value = json.loads(content).get("onitufs-remote")
    except (ValueError, AttributeError):
        return None
    return value if isinstance(value, str) and value else None


def copied(marker: Metadata, recorded: tuple[str, str | None, int | None]) -> bool:
    """Whether the marker is another version than the one recorded: onitufs writes it
    once, so another was copied there (with its time kept, a copy still has another change
    time where the remote keeps them)."""
    return marker.revision != recorded[1] or (
        None not in (marker.changed_ns, recorded[2]) and marker.changed_ns != recorded[2])


def count(entries: list[MirrorEntry]) -> str:
    folders = sum(1 for entry in entries if entry.kind == "dir")
    files = len(entries) - folders
    parts = [f"{files} file{'s' * (files != 1)}" if files else "",
             f"{folders} folder{'s' * (folders != 1)}" if folders else ""]
    return " and ".join(part for part in parts if part)


class Identity:
    """The judge of one remote's listings, and the keeper of its marker."""

    def __init__(self, remote: Remote, index: Index) -> None:
        self.remote = remote
        self.index = index
        self._checked = 0.0  # when the marker was last found as it should be
        self._lock = trio.Lock()
        self._unkept: Judgement | None = None  # the marker could not be read or written
        self._failures = 0  # times in a row it could not
        self._retry_at = 0.0  # time.monotonic() before which it is not tried again
        # A folder found put back from a copy: its listings are applied without deletes
        # until one is applied whole; and the copy's marker, recorded then.
        self.put_back = False
        self._copy: Metadata | None = None

    async def judge(self, marker: Metadata | None, listed: set[str],
                    known: dict[str, MirrorEntry]) -> Judgement:
        """Whether a listing (without the marker, which is `marker`) may be applied. A
        marker that cannot be read or written (a full disk, a lost connection) makes the
        remote unavailable until it can, tried again with backoff, not at each listing."""
        if self._unkept is not None and time.monotonic() < self._retry_at:
            return self._unkept
        try:
            judgement = await self._judge(marker, listed, known)
        except CallFailed as error:
            self._failures += 1
            self._retry_at = time.monotonic() + backoff(self._failures)
            self._unkept = Judgement(False, f"cannot keep its marker {MARKER} ({error}); "
                                     "treated as unavailable")
            return self._unkept
        self._unkept, self._failures = None, 0
        return judgement

    def retry_now(self) -> bool:
        """The remote may take the marker now (Plug.retry_now): it is tried with the next
        listing, not after its backoff. Whether it waited for one."""
        self._retry_at = 0.0
        return self._unkept is not None

    async def _judge(self, marker: Metadata | None, listed: set[str],
                     known: dict[str, MirrorEntry]) -> Judgement:
        recorded = self.index.identity(self.remote.name)
        if recorded is not None and self.remote.plug is not None:
            self.remote.plug.marked = True
        if marker is not None:
            if recorded is not None and marker.revision is not None \
                    and not copied(marker, recorded):
                self._checked = time.monotonic()
                if recorded[2] is None and marker.changed_ns is not None:  # (an older index)
                    self.index.set_identity(self.remote.name, recorded[0], recorded[1],
                                            marker.changed_ns)
                return Judgement(True, put_back=self.put_back)
            found = marker_id(await self._read(marker))
            if found is None:
                return Judgement(False, f"its marker {MARKER} is not one onitufs wrote; "
                                 "treated as unavailable")
            if recorded is not None and found != recorded[0]:
                return Judgement(False, f"its folder belongs to another onitufs remote (marker "
                                 f"{found}, expected {recorded[0]}); treated as unavailable")
            self._checked = time.monotonic()
            if recorded is not None and copied(marker, recorded):
                if not self.put_back:
                    log.warning("remote %s: its marker %s is a copy (its folder put back from "
                                "a backup?): what the folder lacks is sent to it again, not "
                                "deleted", self.remote.name, MARKER)
                self.put_back, self._copy = True, marker
                return Judgement(True, put_back=True)
            self.index.set_identity(self.remote.name, found, marker.revision, marker.changed_ns)
            return Judgement(True, put_back=self.put_back)
        held = list(known.values())
        if held and not listed.intersection(known):
            what = count(held)
            return Judgement(False, f"its folder is empty but held {what}; treated as "
                             "unavailable (unmounted disk?)" if not listed else
                             f"its folder holds none of the {what} it held, nor its marker; "
                             "treated as unavailable (another folder?)")
        if recorded is not None and not held:
            # Marked, and nothing held yet to know the folder by (its uploads failed, say):
            # an empty mount point looks the same, and a marker written there would take it
            # for the remote, whose files would then read as deleted once the disk is back.
            return Judgement(False, f"its marker {MARKER} is gone, and it held nothing yet to "
                             "know its folder by; treated as unavailable (unmounted disk?)")
        if self.remote.config.writable:
            if recorded is not None:
                # Deleted by hand, or a copy of the folder made without it (`cp -r
                # backup/*`, a file manager's copy of what it shows): what the folder
                # lacks is no delete either way.
                log.warning("remote %s: its marker %s is gone (its folder put back from a "
                            "backup without it?): writing it again; what the folder lacks is "
                            "sent to it again, not deleted", self.remote.name, MARKER)
                self.put_back = True
            if not await self._write(recorded[0] if recorded else os.urandom(16).hex()):
                return Judgement(False)
        return Judgement(True, put_back=self.put_back)

    def put_back_taken(self) -> None:
        """A listing of the folder found put back was applied whole: its marker is the
        remote's from now on."""
        marker, self.put_back, self._copy = self._copy, False, None
        recorded = self.index.identity(self.remote.name)
        if marker is not None and recorded is not None:
            self.index.set_identity(self.remote.name, recorded[0], marker.revision,
                                    marker.changed_ns)

    async def before_change(self) -> None:
        """Make sure the remote is still the folder onitufs synced with before it is
        changed; raises CallFailed (and sets the outage) if it is not."""
        if time.monotonic() - self._checked < RECHECK:
            return  # every chunk of an upload asks: most see a fresh look, and no index read
        recorded = self.index.identity(self.remote.name)
        if recorded is None:
            return  # a remote onitufs cannot mark: its listings alone are judged
        async with self._lock:
            if time.monotonic() - self._checked < RECHECK:
                return  # another caller looked while this one waited
            try:
                content = await self._read(Metadata(path=MARKER, size=MARKER_MAX))
            except CallFailed as error:
                if self.remote.health.online:  # it is there, and the marker is not
                    self.remote.set_outage(f"its marker {MARKER} is gone; treated as "
                                           "unavailable (unmounted disk?)")
                raise error
            if marker_id(content) != recorded[0]:
                self.remote.set_outage(f"its marker {MARKER} changed; treated as unavailable")
                raise self.remote.refused("write")
            self._checked = time.monotonic()

    async def _read(self, marker: Metadata) -> bytes:
        md = marker.copy(revision=None)  # whatever version is there
        size = min(md.size or MARKER_MAX, MARKER_MAX)
        content: bytes = await self.remote.call_unguarded("get_chunk", md, 0, size)
        return content

    async def _write(self, remote_id: str) -> bool:
        """Put the marker on the remote; False if another one got there first (the next
        listing shows it)."""
        content = marker_content(remote_id)
        md = Metadata(path=MARKER, size=len(content), mtime_ns=time.time_ns(), mode=0o644,
                      extra={"upload": f"{self.index.cache_id}-marker"})
        await self.remote.call_unguarded("start_upload", md)
        await self.remote.call_unguarded("upload_chunk", md, 0, content)
        try:
            await self.remote.call_unguarded("end_upload", md)
        except CallFailed as error:
            await self.remote.call_unguarded("abort_upload", md)
            if isinstance(error.__cause__, Conflict):
                return False
            raise
        self.index.set_identity(self.remote.name, remote_id, md.revision, md.changed_ns)
        if self.remote.plug is not None:
            self.remote.plug.marked = True
        self._checked = time.monotonic()
        log.info("remote %s: marked as onitufs remote %s (%s)", self.remote.name, remote_id,
                 MARKER)
        return True
