"""The driver API's handlers, on a special remote and the tree the driver keeps of it.

An upload is spooled to a file of its own in the driver's folder (named
after the transfer, so that a resume after a crash finds it), and stored
whole at end_upload, under its content key (content that the remote holds
already is not sent again) or exported under its path (content.py). Every
change of the tree (an upload in place, a
delete, a move, a folder, a link, attributes) is made to the tree as the
remote holds it right then (its manifest read again first, so that what
another machine changed meanwhile is a conflict, or a change left alone,
as for any remote), and is on disk and in the remote's manifest when the
handler returns (sync.py): the core counts a change as the remote's only
then. A read retrieves the revision's key once and is served from the
local copy (fetched.py).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from onitufs.gitannex.keys import content_key
from onitufs.plug import (
    Changed,
    Conflict,
    DriverError,
    Metadata,
    Plug,
    RemoteUnavailable,
    UploadFiles,
    resume_at,
    write_chunk,
)

from .content import Content
from .fetched import Fetched
from .journal import Journal
from .manifest import Entry, new_id
from .sync import Sync


def register(plug: Plug, journal: Journal, sync: Sync, content: Content, fetched: Fetched,
             spool: Path) -> None:
    special = content.special
    label = special.label
    uploads = UploadFiles()  # by spool file

    def reached() -> None:
        """RemoteUnavailable until the remote's tree was read, and while it cannot be: what
        the driver holds of it here (spools, content read before) is not the remote, and a
        program may well make a store anew where it went missing. After a failed look, the
        remote is looked at again (it may have been a program's hiccup)."""
        if not sync.reached:
            raise RemoteUnavailable(f"{label}: its tree has not been read yet"
                                    + (f" ({special.pool.last_words})"
                                       if special.pool.last_words else ""))
        if sync.unreachable is not None:
            sync.look()

    def spooled(md: Metadata) -> Path:
        name = str(md.extra["upload"])
        digest = hashlib.sha256(name.encode()).hexdigest()[:12]
        return spool / f"{re.sub(r'[^A-Za-z0-9._-]', '_', name)[:80]}-{digest}"

    def upload_fd(md: Metadata, flags: int = os.O_RDWR) -> int:
        path = spooled(md)
        try:
            return uploads.fd(str(path), lambda: os.open(path, flags | os.O_NOFOLLOW, 0o600))
        except FileNotFoundError:
            raise DriverError(f"{md.path}: nothing spooled of this upload") from None

    def close_upload(md: Metadata) -> None:
        uploads.close(str(spooled(md)))

    @plug.handler()
    def get_chunk(md: Metadata, offset: int, size: int) -> bytes:
        reached()
        if md.revision is None:  # whatever is there now (the core's look at its marker)
            sync.look()
        with journal.lock:
            entry = journal.tree.get(md.path)
        if entry is None or entry.kind != "file" or entry.key is None:
            raise DriverError(f"{md.path}: no longer on the remote")
        if md.revision is not None and (entry.revision() != md.revision
                                        or md.file_id not in (None, entry.id)):
            raise Changed(f"{md.path}: changed on the remote since it was indexed",
                          entry.describe(md.path))
        return fetched.read(entry.key, offset, size, md.path)

    @plug.handler()
    def start_upload(md: Metadata) -> None:
        reached()
        upload_fd(md, os.O_RDWR | os.O_CREAT | os.O_TRUNC)  # the name is this upload's alone

    @plug.handler()
    def restart_upload(md: Metadata, offset: int) -> None:
        reached()
        resume_at(upload_fd(md), offset, md)

    # A chunk written past a gap leaves a hole in the spool, and end_upload's ftruncate one
    # at the end: chunks of zeros need not come.
    plug.keeps_holes = True

    @plug.handler()
    def upload_chunk(md: Metadata, offset: int, chunk: bytes) -> None:
        write_chunk(upload_fd(md), offset, chunk)

    def in_conflict(there: Entry | None, md: Metadata, key: str) -> bool:
        """Whether the remote holds, at md.path, something that is not what the upload
        replaces (nor this very upload, put in place by an earlier try)."""
        if there is None or (there.key == key and there.mtime_ns == md.mtime_ns):
            return False
        return md.revision is None or there.revision() != md.revision \
            or md.file_id not in (None, there.id)

    @plug.handler()
    def end_upload(md: Metadata) -> None:
        reached()
        path, fd = spooled(md), upload_fd(md)
        try:
            os.ftruncate(fd, md.size)
            digest = hashlib.sha256()
            for offset in range(0, md.size, 1 << 20):
                digest.update(os.pread(fd, 1 << 20, offset))
        finally:
            close_upload(md)
        key = content_key(digest.digest(), md.size)
        with journal.lock:
            there = journal.tree.get(md.path)
        if in_conflict(there, md, key):  # as last seen: no need to send anything
            assert there is not None
            raise Conflict(f"{md.path}: changed on the remote since onitufs last saw it",
                           there.describe(md.path))

        def put_in_place() -> Entry:
            there = journal.tree.get(md.path)
            if in_conflict(there, md, key):
                assert there is not None
                content.unsent(key, path)
                raise Conflict(f"{md.path}: changed on the remote while it was uploaded",
                               there.describe(md.path))
            entry = Entry(kind="file", id=there.id if there is not None else new_id(),
                          mode=md.mode & 0o7777, mtime_ns=md.mtime_ns, key=key, size=md.size,
                          xattrs=dict(md.xattrs))
            if there is None or there.key != key:
                content.place(md.path, key, path, md.size)
            else:  # the same content: written again, or put in place by an earlier try
                content.unsent(key, path)
            if there != entry:
                journal.tree[md.path] = entry
                if there is not None:
                    content.release(there.key)
                journal.changed()
            return entry

        try:
            content.send(key, path, md.size)
            entry = sync.change(put_in_place)  # a failure keeps the spool: a resume uses it
        finally:
            content.sent(path)
        fetched.adopt(key, path)
        recorded(md, entry)

    @plug.handler()
    def abort_upload(md: Metadata) -> None:
        close_upload(md)
        with contextlib.suppress(FileNotFoundError):
            spooled(md).unlink()

    @plug.handler()
    def delete_file(md: Metadata) -> None:
        reached()

        def delete() -> None:
            there = journal.tree.get(md.path)
            if there is None:
                return  # nothing there is success
            if there.kind == "dir" and any(path.startswith(md.path + "/")
                                           for path in journal.tree):
                raise DriverError(f"{md.path}: not empty on the remote")
            if there.kind == "file" and md.revision is not None \
                    and (there.revision() != md.revision or md.file_id not in (None, there.id)):
                raise Changed(f"{md.path}: changed on the remote since it was listed; not "
                              "deleting it", there.describe(md.path))
            content.gone(md.path, there)
            del journal.tree[md.path]
            content.release(there.key)
            journal.changed()

        sync.change(delete)

    @plug.handler()
    def move_file(old: Metadata, new: Metadata) -> None:
        reached()

        def move() -> Entry:
            entry = journal.tree.get(old.path)
            if entry is None:
                raise DriverError(f"{old.path}: not on the remote")
            if old.kind == "file" and old.revision is not None and (
                    entry.revision() != old.revision or old.file_id not in (None, entry.id)):
                raise Changed(f"{old.path}: changed on the remote since it was listed; not "
                              "moving it", entry.describe(old.path))
            if new.path in journal.tree:
                raise DriverError(f"{new.path}: already exists on the remote")
            below = old.path + "/"
            moving = {path: there for path, there in journal.tree.items()
                      if path == old.path or path.startswith(below)}
            content.moved(old.path, new.path, moving)
            for path in moving:
                journal.tree[new.path + path[len(old.path):]] = journal.tree.pop(path)
            journal.changed()
            return entry

        entry = sync.change(move)
        new.revision, new.file_id = entry.revision(), entry.id

    def put(md: Metadata, make: Callable[[Entry | None], Entry]) -> None:
        """Put at md.path the entry `make` makes of what is there (it raises DriverError
        when that cannot be), and tell its token back."""
        def apply() -> Entry:
            there = journal.tree.get(md.path)
            entry = make(there)
            if there != entry:
                journal.tree[md.path] = entry
                journal.changed()
            return entry

        recorded(md, sync.change(apply))

    def recorded(md: Metadata, entry: Entry) -> None:
        """md is what a handler left on the remote: `entry`, as its listing reports it."""
        md.revision, md.file_id, md.mode = entry.revision(), entry.id, entry.mode

    @plug.handler()
    def make_dir(md: Metadata) -> None:
        reached()

        def folder(there: Entry | None) -> Entry:
            if there is not None and there.kind != "dir":
                raise DriverError(f"{md.path}: exists on the remote and is not a folder")
            return Entry(kind="dir", id=there.id if there is not None else new_id(),
                         mode=md.mode & 0o7777, xattrs=dict(md.xattrs))

        put(md, folder)

    @plug.handler()
    def make_symlink(md: Metadata) -> None:
        reached()

        def link(there: Entry | None) -> Entry:
            if there is None:
                return Entry(kind="symlink", id=new_id(), mode=0o777, mtime_ns=md.mtime_ns,
                             target=md.target or "")
            if (there.kind, there.target) != ("symlink", md.target or ""):
                raise DriverError(f"{md.path}: already exists on the remote")
            return there

        put(md, link)

    @plug.handler()
    def set_attrs(md: Metadata) -> None:
        reached()

        def attributes(there: Entry | None) -> Entry:
            if there is None:
                raise DriverError(f"{md.path}: not on the remote")
            if there.kind == "file" and (there.revision() != md.revision
                                         or md.file_id not in (None, there.id)):
                raise DriverError(f"{md.path}: changed on the remote; its attributes are "
                                  "left alone")
            return replace(there, mode=md.mode & 0o7777, xattrs=dict(md.xattrs),
                           mtime_ns=md.mtime_ns if there.kind == "file" else there.mtime_ns)

        put(md, attributes)
