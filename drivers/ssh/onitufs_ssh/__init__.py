"""onitufs driver for a folder on an SSH server, through SFTP.

Config keys: ``host`` (required), ``port`` (22), ``user`` (the local user),
``path`` (required: relative to the login folder, or absolute),
``identity`` (a key file; default: the keys of the running ssh-agent),
``known_hosts`` ("~/.ssh/known_hosts"), ``poll_interval`` ("30s"),
``connections`` (4: SSH connections for reads; each running upload opens
its own) and ``upload_connections`` (1 to 4 per upload of 8 MiB or more;
default: 2 on a link with a round trip of 10 ms or more, else 1).

The server's host key must be in known_hosts (see connect.py); `onitufs
trust` shows it and adds it there once the user says yes (trust.py). Uploads go
to a hidden temporary file beside the target, written in the background
(uploads.py) and renamed into place when complete; the version it replaces
is first moved aside and checked, as SFTP cannot replace on a condition.
A name the server's disk refuses (exFAT's `at 10:30`) is stored under its
escape (names.py). A change that makes or deletes an entry is taken back where
the path no longer leads to the file system that held the marker (pin.py: a
disk on the server unplugged). A server's disk that refused a change while
full or read-only is looked at until it has room or is writable again
(onitufs.room).
Reads pipeline their requests and read ahead on several connections
(reading.py). Changes made
on the server are found by listing it (listing.py): every 2 s after a change,
backing off to poll_interval while nothing changes, and at once after a read
found a file gone or changed (poll).
While the server cannot be reached, handlers raise RemoteUnavailable and the
poll reports the remote offline, retrying with backoff.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import posixpath
import stat
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, cast

from onitufs.config import ConfigError, Options
from onitufs.plug import (
    MARKER,
    TEMP_SUFFIX,
    Changed,
    Conflict,
    DriverError,
    Metadata,
    Plug,
    RemoteUnavailable,
    Reports,
    at_or_below,
    left_aside_by_another,
    upload_path,
)
from onitufs.room import DiskState, RoomWatch, short
from onitufs.storednames import disk_name, refuse_clash, refused, renames_in_case

from .asides import Asides
from .connect import LANES_ON_LONG_LINKS, ConnectError, Connection, connect
from .listing import Tree, decode, describe, encode, kind_of, token
from .names import ServerNames, asks_server
from .pin import Pin
from .pool import Pool, lost
from .reading import NotThere, OtherVersion, Reads
from .settings import OPTIONS as OPTIONS  # the table's keys, for the core to check
from .settings import Settings, read
from .sftp import (
    ATTRS,
    FSTAT,
    O_READ,
    REALPATH,
    REMOVE,
    STATUS,
    Attrs,
    Call,
    FileSystem,
    Reader,
    SftpError,
    found,
    pack_string,
    succeeded,
)
from .trust import trust as trust  # the hook of `onitufs trust`
from .uploads import Upload

log = logging.getLogger(__name__)
UPLOAD_CONNECTIONS = 8
READ_STREAMS = 2  # files read ahead at once, each on connections of its own
MAX_POLL_BACKOFF = 30.0
FASTEST_POLL = 2.0  # seconds between listings while changes come
F = TypeVar("F", bound=Callable[..., Any])


def _located(settings: Settings, message: str) -> str:
    return message if message.startswith(settings.where) else f"{settings.where}: {message}"


def check(options: Options) -> None:
    settings = read(options)
    try:
        conn = connect(settings)
    except ConnectError as error:
        raise ConfigError(_located(settings, str(error))) from None
    try:
        root = conn.sftp.realpath(encode(settings.path))
        attrs = conn.sftp.stat(root)
        if not stat.S_ISDIR(attrs.mode or 0):
            raise SftpError(f"{settings.path}: not a folder")
    except SftpError:
        raise ConfigError(f"{settings.where}.path: {settings.path} is not a folder on "
                          f"{settings.host} (create it, or fix the path)") from None
    except Exception as error:
        raise ConfigError(_located(settings, f"{settings.host}: {error}")) from None
    finally:
        conn.close()


def guarded(function: F) -> F:
    """Server refusals become DriverError, a lost connection RemoteUnavailable."""

    @functools.wraps(function)
    def wrapper(*args: Any) -> Any:
        try:
            return function(*args)
        except DriverError:
            raise
        except SftpError as error:
            raise DriverError(str(error)) from None
        except Exception as error:
            if lost(error):
                raise RemoteUnavailable(f"connection lost: {error}") from None
            raise

    return wrapper  # type: ignore[return-value]


def start(plug: Plug) -> None:
    settings = read(plug.options)
    pool = Pool(settings, settings.connections)
    upload_pool = Pool(settings, UPLOAD_CONNECTIONS)
    reads = Reads(pool, Pool(settings, READ_STREAMS * LANES_ON_LONG_LINKS), token, READ_STREAMS)
    uploads: dict[str, Upload] = {}
    uploads_lock = threading.Lock()
    roots: list[bytes] = []  # the remote folder's absolute path, once known
    names = ServerNames()
    asides = Asides(plug)

    def root(conn: Connection) -> bytes:
        if not roots:
            roots.append(conn.sftp.realpath(encode(settings.path)))
        return roots[0]

    pin = Pin(root, lambda: plug.marked)

    def server_state() -> DiskState | None:
        """The state of the file system the root leads to, for RoomWatch; None where the
        server does not say (no statvfs@openssh.com)."""
        with pool.use() as conn:
            answers = conn.sftp.in_one_flight(pin.look(conn))
        if not answers or isinstance(answers[0], SftpError):
            return None
        found = FileSystem.read(answers[0])
        return DiskState(found.blocks_available * found.fragment_size,
                         found.inodes_available, found.read_only)

    # SFTP says "Failure" for a full disk and a read-only one alike, and for much else:
    # what the disk's state says after it decides. (Not for a conflict: the server answered
    # what it holds, and no look is owed.)
    room_refused = RoomWatch(plug, server_state).watching(
        lambda error: not isinstance(error, (Conflict, Changed)), short)

    def confirmed(handler: F) -> F:
        """A change that failed where the root path no longer leads to the pinned file
        system is the remote being away, not a refusal there. (A change that succeeded
        looks itself: see confirm_made.)"""
        @functools.wraps(handler)
        def change(md: Metadata, *args: Any) -> Any:
            try:
                return handler(md, *args)
            except RemoteUnavailable:
                raise  # (no look: the connection is gone, or the look said so already)
            except Exception:
                try:
                    with pool.use() as conn:
                        pin.confirm(conn, for_marker=md.path == MARKER)
                except RemoteUnavailable:
                    raise
                except Exception:  # the look failed too: the change's own error says more
                    pass
                raise
        return cast(F, change)

    def confirm_made(conn: Connection, remove: Callable[[], object],
                     answers: list[Reader | SftpError] | None = None,
                     for_marker: bool = False) -> None:
        """What was just made, or deleted, went to the pinned file system; or `remove`
        takes what was made from where the path led instead (the mount point's folder).
        `for_marker`: the marker's own upload (Pin.confirm)."""
        try:
            pin.confirm(conn, answers, for_marker)
        except RemoteUnavailable:
            with contextlib.suppress(Exception):  # (an abort looks again)
                remove()
            raise

    def durable(conn: Connection, what: str, *paths: bytes) -> None:
        """Make what a change did at `paths` (a folder's entries, a file's or a folder's own
        attributes) outlive a power loss of the server before onitufs records the change:
        one lost would read as a change made there, a folder made here as deleted there
        (and deleted everywhere), a version replaced as an edit made there. SFTP has no
        fsync of a folder's entries but that of the folder opened as a file."""
        said_not_durable(what, conn.sftp.sync_paths(list(dict.fromkeys(paths))))

    def said_not_durable(what: str, answers: Iterable[Reader | SftpError]) -> None:
        for answer in answers:
            # (a folder gone since, as a delete may find it: nothing there to keep)
            if isinstance(answer, SftpError) and answer.errno != errno.ENOENT:
                log.warning("remote %s: %s: the server could not make the change durable "
                            "(%s)", plug.name, what, answer)

    def stored(conn: Connection, path: str, making: bool = True) -> str:
        """Where the mount's `path` is stored, relative to the root (ServerNames.path)."""
        return names.path(conn, root(conn), path, making)

    def temp_of(conn: Connection, md: Metadata) -> str:
        """The stored path of md's upload's temporary file (upload_path)."""
        return upload_path(md, stored(conn, md.path))

    def aside_of(md: Metadata, path: bytes) -> bytes:
        """The aside name (plug.aside_path) of md's version, stored at `path`."""
        return encode(plug.aside_path(md, decode(path)))

    # full, inside and inside_lstat take paths as stored (see stored)
    def full(conn: Connection, path: str) -> bytes:
        return root(conn) + b"/" + encode(path)

    def inside(conn: Connection, path: str) -> bytes:
        """The full path, refusing one whose folder leads outside the root (a symlink there)."""
        folder = path.rpartition("/")[0]
        if folder:
            refuse_outside(conn, path, conn.sftp.realpath(full(conn, folder)))
        return full(conn, path)

    def refuse_outside(conn: Connection, path: str, folder_at: bytes) -> None:
        """DriverError unless the path's folder, resolved as `folder_at`, is in the root."""
        if not at_or_below(folder_at, root(conn)):
            raise DriverError(f"{path}: leads outside {settings.path}")

    def inside_lstat(conn: Connection, path: str) -> tuple[bytes, Attrs | None]:
        """inside() and lstat() of the full path (None: nothing there), in one round trip."""
        folder = path.rpartition("/")[0]
        sftp = conn.sftp
        resolving = sftp.request(REALPATH, pack_string(full(conn, folder)), later=True) \
            if folder else None
        try:
            target = full(conn, path)
            there = lstat(conn, target)
            if resolving is not None:
                try:
                    folder_at = sftp.named(resolving, path)
                except SftpError:
                    if there is None:
                        return target, None  # its folder is not there either
                    raise
                refuse_outside(conn, path, folder_at)
        finally:
            if resolving is not None:
                sftp.discard(resolving)
        return target, there

    def lstat(conn: Connection, path: bytes) -> Attrs | None:
        try:
            return conn.sftp.lstat(path)
        except SftpError as error:
            if error.errno == 2:
                return None
            raise

    def record(conn: Connection, path: bytes, md: Metadata) -> None:
        """md is now what the remote holds at path (SFTP gives no file ids)."""
        read_back(md, conn.sftp.lstat(path))

    def read_back(md: Metadata, after: Attrs) -> None:
        """md is what a handler left there: its token, and the permission bits read back
        (a server's disk may keep others than it is given)."""
        md.revision, md.file_id, md.mode = token(after), None, stat.S_IMODE(after.mode or 0)

    def upload_of(md: Metadata) -> Upload:
        with uploads_lock:
            found = uploads.get(upload_path(md))
        if found is None:
            raise DriverError(f"{md.path}: no upload in progress (resume it first)")
        return found

    @plug.handler()
    @guarded
    def get_chunk(md: Metadata, offset: int, size: int) -> bytes:
        if roots and not asks_server(md.path):
            where = names.path(None, roots[0], md.path)
        else:
            with pool.use() as conn:
                where = stored(conn, md.path, making=False)
        try:
            return reads.get(roots[0], roots[0] + b"/" + encode(where), md.revision, offset,
                             size)
        except OtherVersion as error:
            plug.look_again()  # changes come in bursts: the rest of it is listed now
            with pool.use() as conn:
                if not holds_exactly(conn, full(conn, where)):
                    raise NotThere(f"{md.path}: no longer on the remote") from None
            raise Changed(str(error), describe(md.path, error.attrs)) from None
        except NotThere:
            plug.look_again()  # reads of it fail until a listing reports what is there
            raise

    @plug.handler()
    @room_refused
    @confirmed
    @guarded
    def start_upload(md: Metadata) -> None:
        temp = upload_path(md)  # (the key of `uploads`)
        with pool.use() as conn:
            target = inside(conn, temp_of(conn, md))
            look = pin.look(conn)
        upload = Upload(upload_pool, target, md.size, settings.upload_connections)
        try:
            looked = upload.create(look)
        except SftpError as error:
            with pool.use() as conn:
                refuse_name(conn, md.path, target, error)
            raise
        with uploads_lock:
            uploads[temp] = upload
        if look and upload.conn is not None:
            confirm_made(upload.conn, lambda: abort_upload(md), looked, md.path == MARKER)
        md.extra.update(upload.saved_state())

    @plug.handler()
    @room_refused
    @guarded
    def restart_upload(md: Metadata, offset: int) -> int:
        temp = upload_path(md)
        with uploads_lock:
            upload = uploads.get(temp)
        in_memory = upload is not None
        if upload is None:
            with pool.use() as conn:
                upload = Upload(upload_pool, inside(conn, temp_of(conn, md)),
                                md.size, settings.upload_connections)
            with uploads_lock:
                uploads[temp] = upload
        resumed = upload.resume(offset, md.extra, in_memory)
        md.extra.update(upload.saved_state())
        return resumed

    # SFTP (v3 and on) writes zeros from the end of the file to the offset of a write
    # past it, which a POSIX server keeps as a hole, and end_upload sets the size: chunks
    # of zeros need not be sent.
    plug.keeps_holes = True

    @plug.handler()
    @room_refused
    @guarded
    def upload_chunk(md: Metadata, offset: int, chunk: bytes) -> None:
        upload = upload_of(md)
        upload.send(offset, bytes(chunk))
        md.extra.update(upload.saved_state())

    @plug.handler()
    @room_refused
    @guarded
    def end_upload(md: Metadata) -> None:
        upload = upload_of(md)
        upload.flush()
        conn, handle = upload.conn, upload.handle
        if conn is None or handle is None:
            raise DriverError(f"{md.path}: the upload is not open (resume it first)")
        seconds = md.mtime_ns // 10**9
        sftp = conn.sftp
        syncing: list[Call] = []  # the fsync and the close of the target's folder
        with contextlib.ExitStack() as using_aside:
            try:
                temp = upload.temp
                # (the upload's last steps before its rename go with the look)
                target, there, left, closed = look_at(conn, md, [*sftp.closing(
                    handle, temp, Attrs(size=md.size, mtime=seconds), md.mode & 0o7777),
                    (FSTAT, pack_string(handle), ATTRS, md.path), sftp.looking(temp, md.path)])
                named = found(closed.pop())
                written = succeeded(closed)[-1].attrs()
                # The rename goes by name: the file there must be the one written, which
                # shows the size and time just set through the handle (SFTP shows no
                # inode). A server's disk that lost power and came back in its place holds
                # there what it kept of the upload (the open file keeps the old disk alive).
                if named is None or (named.size, named.mtime) != (written.size, written.mtime):
                    raise DriverError(f"{md.path}: the upload's temporary file on the remote "
                                      "is not the one written (the disk was replaced under it?)")
                if there is not None and token(there) != md.revision:
                    refuse_clash(md.path, names_beside(conn, target))
                    raise Conflict(f"{md.path}: changed on the remote since onitufs last saw it",
                                   describe(md.path, there))
                # SFTP cannot replace on a condition: the version replaced is moved aside and
                # checked first, so one another machine saves after the look is never the
                # one replaced; the name is then free, and the upload takes it only if it
                # still is.
                if md.revision is not None:  # (the sweep leaves it to this upload)
                    using_aside.enter_context(asides.used(aside_of(md, target)))
                    reads.release(conn, target)  # the version replaced is removed below
                try:
                    moved = None if md.revision is None else \
                        set_aside(conn, md, target, there, left, "upload")
                except Changed as changed:
                    raise Conflict(str(changed), changed.current) from None
                # (the file put in place, whatever has the name by the time it is recorded)
                renamed, now, *opened = sftp.in_one_flight([
                    sftp.renaming(temp, target, replace=False),
                    (FSTAT, pack_string(handle), ATTRS, md.path),
                    *sftp.opening_to_sync(posixpath.dirname(target))])
                syncing = sftp.syncing(opened)
                if isinstance(renamed, SftpError):  # SFTP's RENAME never replaces
                    made = lstat(conn, target)
                    if made is None:
                        if moved is not None:
                            sftp.rename(moved, target)  # as it was
                        raise renamed
                    if moved is None:
                        refuse_clash(md.path, names_beside(conn, target))
                    else:
                        sftp.remove(moved)  # the version the upload replaces
                    raise Conflict(f"{md.path}: made on the remote during the upload",
                                   describe(md.path, made)) from None
                put = succeeded([now])[0].attrs()
            except BaseException as error:
                if lost(error):
                    upload.drop_connection()
                else:
                    with contextlib.suppress(Exception):  # (a lost connection closes it too)
                        sftp.in_one_flight(syncing[-1:])  # the folder's close
                    if isinstance(error, Conflict):  # while it waits, its connection is free
                        upload.abandon()  # (its file stays: the next try goes on from it)
                raise
            # The version replaced goes with the temporary file's close, and the folder's
            # fsync then makes the new name durable (see `durable`).
            removing = [(REMOVE, pack_string(moved), STATUS, md.path)] if moved else []
            answers = upload.close([*removing, *syncing])
            for answer in answers[:len(removing)]:
                if isinstance(answer, SftpError) and answer.errno != errno.ENOENT:
                    log.warning("remote %s: %s: the version replaced is left at %s (%s)",
                                plug.name, md.path, decode(moved or b""), answer)
            said_not_durable(md.path, [*opened, *answers[len(removing):]])
        with uploads_lock:
            uploads.pop(upload_path(md), None)
        read_back(md, put)
        if md.path == MARKER:
            with pool.use() as conn:
                pin.marker_written(conn)

    @plug.handler()
    @room_refused
    @confirmed
    @guarded
    def abort_upload(md: Metadata) -> None:
        temp = upload_path(md)
        with uploads_lock:
            upload = uploads.pop(temp, None)
        if upload is not None:
            upload.abandon()
        with pool.use() as conn:
            try:
                conn.sftp.remove(inside(conn, temp_of(conn, md)))
            except SftpError as error:
                if error.errno != 2:
                    raise
            # finding nothing there, it would leave the disk's file
            pin.confirm(conn, for_marker=md.path == MARKER)

    def names_in(conn: Connection, folder: bytes) -> list[tuple[bytes, Attrs]]:
        """The entries of one folder on the server."""
        return [entry for batch in conn.sftp.batches(folder) for entry in batch]

    def names_beside(conn: Connection, path: bytes) -> list[str]:
        """The names in the folder of `path` on the server as the mount names them (none
        where it is not there)."""
        try:
            return [disk_name(decode(name))
                    for name, _ in names_in(conn, path.rpartition(b"/")[0])]
        except SftpError as error:
            if error.errno == errno.ENOENT:
                return []
            raise

    def holds_exactly(conn: Connection, path: bytes) -> bool:
        """Whether the folder of `path` holds an entry of exactly its name: one that
        ignores case answers to a name with another entry's (onitufs.storednames)."""
        return disk_name(decode(path.rpartition(b"/")[2])) in names_beside(conn, path)

    def refuse_name(conn: Connection, shown: str, path: bytes, error: SftpError) -> None:
        """storednames.refused, where making `path` failed as if its folder were not there
        (exFAT refuses some characters so), though it is."""
        if error.errno == errno.ENOENT:
            folder = lstat(conn, path.rpartition(b"/")[0])
            if folder is not None and stat.S_ISDIR(folder.mode or 0):
                raise refused(shown, os.strerror(error.errno)) from None

    def remove_folder(conn: Connection, md: Metadata, path: bytes) -> None:
        """rmdir, never recursive: only the temp files of uploads cut short in the folder
        go with it; anything else in it was not ours to delete."""
        try:
            conn.sftp.rmdir(path)
            return
        except SftpError as error:
            if error.errno == 2:
                return
            inside = names_in(conn, path)
            ours = [(name, attrs) for name, attrs in inside
                    if stat.S_ISREG(attrs.mode or 0) and name.endswith(encode(TEMP_SUFFIX))]
            if not inside or len(ours) != len(inside):
                raise
        for name, attrs in ours:
            own = left_aside_by_another(decode(name), token(attrs), None)
            if own is not None:  # back in view, which keeps the folder; a name taken since
                with contextlib.suppress(SftpError):  # stays taken (SFTP's plain rename)
                    conn.sftp.rename(path + b"/" + name, path + b"/" + encode(own))
                continue
            with uploads_lock:
                cut = next((key for key, upload in uploads.items()
                            if upload.temp == path + b"/" + name), None)
                upload = uploads.pop(cut) if cut is not None else None
            if upload is not None:
                upload.abandon()
            try:
                conn.sftp.remove(path + b"/" + name)
            except SftpError as error:
                if error.errno != 2:
                    raise
        conn.sftp.rmdir(path)

    @plug.handler()
    @room_refused
    @confirmed
    @guarded
    def delete_file(md: Metadata) -> None:
        with pool.use() as conn:
            path, there, left, _ = look_at(conn, md, [])
            if there is not None and not (kind_of(there) == "file" and token(there) ==
                                          md.revision) and not holds_exactly(conn, path):
                there = None  # another name's entry, in a folder that ignores case
            reads.release(conn, path)
            if there is not None and stat.S_ISDIR(there.mode or 0):
                remove_folder(conn, md, path)
            elif there is not None and (md.revision is None or stat.S_ISLNK(there.mode or 0)):
                conn.sftp.remove(path)
            elif md.revision is not None:
                with asides.used(aside_of(md, path)):
                    delete_version(conn, md, path, there, left)
            durable(conn, md.path, posixpath.dirname(path))  # (else the file would be back)
            pin.confirm(conn)  # finding nothing there, it would leave the disk's file

    def look_at(conn: Connection, md: Metadata, ahead: list[Call]) -> \
            tuple[bytes, Attrs | None, Attrs | None, list[Reader | SftpError]]:
        """In one round trip: `ahead` (its answers are returned last), inside_lstat() of
        md.path, and an lstat of its aside name (where md is a version of a file: what a
        delete or upload cut short after its move left there)."""
        sftp = conn.sftp
        where = stored(conn, md.path)
        aside = [sftp.looking(aside_of(md, full(conn, where)), md.path)] \
            if md.revision is not None else []
        sent = sftp.send_later([*ahead, *aside])
        try:
            path, there = inside_lstat(conn, where)
        finally:
            answers = sftp.answers(sent)
        left = found(answers.pop()) if aside else None
        return path, there, left, answers

    def delete_version(conn: Connection, md: Metadata, path: bytes, there: Attrs | None,
                       left: Attrs | None) -> None:
        """Delete the file at path if it is md's version, moving it aside first, so a
        version another machine saved between the check and the delete is never what
        goes."""
        if there is not None:
            refuse_other_version(md, there, "delete")
        aside = set_aside(conn, md, path, there, left, "delete")
        if aside is not None:
            conn.sftp.remove(aside)

    def set_aside(conn: Connection, md: Metadata, path: bytes, there: Attrs | None,
                  left: Attrs | None, what: str) -> bytes | None:
        """Move md's version from path (`there`: what a look found at it) to its aside
        name, and return that name (None: nothing of md's is there). The rename takes
        exactly one file, which is then checked: a version another machine saved at path
        since the look is what moved, and goes back (keep_other_version raises Changed).
        `left`: what is at the aside name already (a delete or upload cut short after its
        move leaves md's version there)."""
        aside = aside_of(md, path)  # in path's folder, which inside_lstat checked
        kept_at = decode(aside)
        if left is not None and there is not None:  # and md's version is at path again
            keep_other_version(conn, md, left, aside, path, what, kept_at)
            conn.sftp.remove(aside)
        if there is None:
            moved = left
        else:
            # rename(2) on the server where it has posix-rename: SFTP's own RENAME is, in
            # OpenSSH's server, a link and an unlink of the name, which would take a
            # version saved at it in between. What it moved is looked at in the same flight.
            moving, looking = conn.sftp.in_one_flight([
                conn.sftp.renaming(path, aside, replace=True),
                conn.sftp.looking(aside, kept_at)])
            if isinstance(moving, SftpError) and moving.errno != errno.ENOENT:
                raise moving  # (ENOENT: deleted there meanwhile)
            moved = found(looking)
        if moved is None:
            return None
        keep_other_version(conn, md, moved, aside, path, what, kept_at)
        return aside

    def refuse_other_version(md: Metadata, there: Attrs, what: str) -> None:
        """Changed, before a delete or a move, where the file is not md's version."""
        if kind_of(there) != "file" or token(there) != md.revision:
            raise Changed(f"{md.path}: changed on the remote since it was listed: not "
                          f"{what}d", describe(md.path, there))

    def keep_other_version(conn: Connection, md: Metadata, attrs: Attrs, moved: bytes,
                           name: bytes, what: str, kept_at: str) -> None:
        """After md's file was renamed from `name` to `moved` (now `attrs`): a version
        saved there between the check and the rename went instead, and goes back to its
        name if that is still free; Changed says what is there."""
        if kind_of(attrs) == "file" and token(attrs) == md.revision:
            return
        try:  # SFTP's plain rename never replaces: a name taken since stays taken
            conn.sftp.rename(moved, name)
        except SftpError:
            raise DriverError(f"{md.path}: changed on the remote during the {what}, and "
                              f"another file took its name: that version is at {kept_at}") \
                from None
        raise Changed(f"{md.path}: changed on the remote during the {what}; left in place",
                      describe(md.path, attrs))

    @plug.handler()
    @room_refused
    @guarded
    def move_file(old: Metadata, new: Metadata) -> None:
        checked = old.kind == "file" and old.revision is not None
        with pool.use() as conn:
            target = inside(conn, stored(conn, new.path))
            source, there = inside_lstat(conn, stored(conn, old.path, making=False))
            in_case = False  # the target answers for the source, renamed in case only
            if lstat(conn, target) is not None:
                names = names_beside(conn, target)
                in_case = renames_in_case(names, old.path, new.path)
                if not in_case:
                    refuse_clash(new.path, names)
                    raise DriverError(f"{new.path}: already exists on the remote")
            if checked and there is not None:
                if token(there) != old.revision and not holds_exactly(conn, source):
                    raise DriverError(f"{old.path}: no longer on the remote")
                refuse_other_version(old, there, "move")
            if in_case:  # the folder ignores case: the same entry, renamed (SFTP's own
                # RENAME fails where the new name answers)
                succeeded(conn.sftp.in_one_flight([conn.sftp.renaming(source, target,
                                                                      replace=True)]))
            else:
                try:
                    conn.sftp.rename(source, target)
                except SftpError as error:
                    if there is not None:
                        refuse_name(conn, new.path, target, error)
                    raise
            moved = conn.sftp.lstat(target)
            if checked:
                keep_other_version(conn, old, moved, target, source, "move", new.path)
            durable(conn, new.path, posixpath.dirname(source), posixpath.dirname(target))
            new.revision, new.file_id = token(moved), None

    @plug.handler()
    @room_refused
    @confirmed
    @guarded
    def make_dir(md: Metadata) -> None:
        with pool.use() as conn:
            path = inside(conn, stored(conn, md.path))
            mode = md.mode & 0o7777
            made = False
            try:
                conn.sftp.mkdir(path, mode)
                made = True
            except SftpError as error:
                there = lstat(conn, path)
                if there is None:
                    refuse_name(conn, md.path, path, error)
                if there is None or not stat.S_ISDIR(there.mode or 0):
                    raise DriverError(f"{md.path}: cannot create the folder on the remote, "
                                      "or something else is there") from None
                refuse_clash(md.path, names_beside(conn, path))
            confirm_made(conn, (lambda: conn.sftp.rmdir(path)) if made else lambda: None)
            # the exact mode, zero included: the server applied its umask to mkdir's
            conn.sftp.setstat(path, Attrs(mode=mode))
            durable(conn, md.path, posixpath.dirname(path), path)
            record(conn, path, md)

    @plug.handler()
    @room_refused
    @guarded
    def set_attrs(md: Metadata) -> None:
        # SFTP keeps the mode and whole-second times; extended attributes stay in the mount
        attrs = Attrs(mode=md.mode & 0o7777)
        if md.kind == "file":
            attrs.mtime = md.mtime_ns // 10**9
        with pool.use() as conn:
            path = inside(conn, stored(conn, md.path, making=False))
            there = lstat(conn, path)
            if there is None:
                raise DriverError(f"{md.path}: no longer on the remote")
            refuse_attrs(md, there)  # (so the file opened below is no pipe, which would wait)
            if md.kind == "file":
                handle = open_to_set(conn, path)
                if handle is not None:
                    set_attrs_through(conn, md, handle, attrs)
                    return
            conn.sftp.setstat(path, attrs)
            durable(conn, md.path, path)
            record(conn, path, md)

    def refuse_attrs(md: Metadata, there: Attrs) -> None:
        """DriverError unless `there` is md's version of a file, or a folder for a folder
        (SETSTAT follows a link: it would reach what the link points to)."""
        mode = there.mode or 0
        same = stat.S_ISREG(mode) and token(there) == md.revision if md.kind == "file" \
            else stat.S_ISDIR(mode)
        if not same:
            raise DriverError(f"{md.path}: changed on the remote; its attributes are left "
                              "alone")

    def open_to_set(conn: Connection, path: bytes) -> bytes | None:
        """A handle of the file, None where it cannot be read (then it goes by path)."""
        try:
            return conn.sftp.open(path, O_READ)
        except SftpError as error:
            if error.errno != errno.EACCES:
                raise
            return None

    def set_attrs_through(conn: Connection, md: Metadata, handle: bytes, attrs: Attrs) -> None:
        """Check and change the file the handle holds: a version saved by rename since the
        look is another file, which keeps its attributes and is not recorded as ours."""
        try:
            refuse_attrs(md, conn.sftp.fstat(handle))
            read_back(md, conn.sftp.fsetstat_then_fstat(handle, attrs))
            said_not_durable(md.path, conn.sftp.in_one_flight(conn.sftp.fsyncing(handle, md.path)))
        finally:
            conn.sftp.close_handle(handle)

    @plug.handler()
    @room_refused
    @confirmed
    @guarded
    def make_symlink(md: Metadata) -> None:
        target = encode(md.target or "")
        with pool.use() as conn:
            path = inside(conn, stored(conn, md.path))
            there = lstat(conn, path)
            if there is not None:
                refuse_clash(md.path, names_beside(conn, path))
            if there is None or not stat.S_ISLNK(there.mode or 0) \
                    or conn.sftp.readlink(path) != target:
                try:
                    conn.sftp.symlink(target, path)
                except SftpError as error:
                    if error.errno != errno.EOPNOTSUPP:
                        raise
                    plug.withdraw("make_symlink")  # a server's disk on FAT or exFAT
                    raise DriverError(f"{md.path}: the server's disk holds no symbolic "
                                      "links: they stay off it") from None
                confirm_made(conn, lambda: conn.sftp.remove(path))
                durable(conn, md.path, posixpath.dirname(path))
            else:
                pin.confirm(conn)  # the link found there is the remote's
            record(conn, path, md)

    pool.warm(1)
    with contextlib.suppress(Exception), pool.use() as conn:  # else at the first change
        pin.confirm(conn)
    upload_pool.warm(1)
    reads.stream_pool.warm(Connection.lanes)  # one read's lanes
    plug.mtime_granularity = 1.0  # SFTP's times are whole seconds
    plug.ready()
    try:
        poll(plug, settings, root, reads.close_idle, asides.sweep)
    finally:
        reads.close()
        reads.stream_pool.close()
        with uploads_lock:
            for upload in uploads.values():
                upload.drop()
            uploads.clear()
        pool.close()
        upload_pool.close()


def poll(plug: Plug, settings: Settings, root: Callable[[Connection], bytes],
         tidy: Callable[[], None],
         sweep: Callable[[Connection, list[tuple[bytes, Attrs]]], None]) -> None:
    """List the remote and report what changed, until the mount ends: every FASTEST_POLL
    seconds right after a change was seen, twice as long after each listing that found
    none, up to poll_interval (see wait). After each listing, `sweep` finishes what was
    cut short after a move aside (Asides.sweep), and `tidy` closes the files reads no
    longer use.

    The first listing, one after the server could not be listed, one the core did not
    take or asked for (plug.look_again, ListingNeeded) go whole; otherwise what the walk
    found different, with the paths onitufs changed since the last poll
    (plug.written_paths), goes as a part (Reports), so that the core's work follows the
    change, not the size of the tree."""
    conn: Connection | None = None
    tree = Tree(plug.aside_owner)
    reports = Reports(plug)
    asked = False  # plug.look_again asked for a whole listing
    backoff = 0.5
    interval = settings.poll_interval
    reported_error: str | None = None
    try:
        while not plug.stopping.is_set():
            started, written = time.monotonic(), plug.written_paths()
            try:
                if conn is None or not conn.alive():
                    if conn is not None:
                        conn.close()
                    conn = None
                    conn = connect(settings)
                walked = tree.walk(conn.sftp, root(conn))
            except Exception as error:
                if isinstance(error, ConnectError):
                    reason = _located(settings, str(error))
                elif isinstance(error, SftpError):
                    reason = f"cannot list {settings.path} on {settings.host}: {error}"
                elif lost(error):
                    reason = f"{settings.host}: connection lost: {error}"
                    if conn is not None:
                        conn.close()
                    conn = None
                else:
                    raise
                if reason != reported_error:
                    log.error("remote %s: %s", plug.name, reason)
                    reported_error = reason
                plug.offline(reason)
                reports.taken = False  # (then the whole listing holds what onitufs wrote)
                plug.stopping.wait(backoff)
                backoff = min(MAX_POLL_BACKOFF, backoff * 2)
                continue
            backoff = 0.5
            if reported_error is not None or not reports.taken:
                plug.online()
            reported_error = None
            changed = bool(walked.changed)
            reports.send(started, None if asked else walked.changed | written, walked.listing,
                         walked.part)
            asked = False
            del walked  # its answers, and what was decoded of them, not kept through the wait
            try:
                sweep(conn, tree.asides())
            except Exception as error:
                if not lost(error):
                    raise
                conn.close()  # (the next listing says so, if the server is gone)
                conn = None
            tidy()
            interval = wait(settings.poll_interval, interval, changed)
            log.debug("remote %s: listed in %.2fs, %s; next listing in %gs", plug.name,
                      time.monotonic() - started, "changes reported" if changed else "no change",
                      interval)
            if plug.wait_to_list(interval):  # a read found the server changed
                interval = min(FASTEST_POLL, settings.poll_interval)
                asked = True
    finally:
        if conn is not None:
            conn.close()


def wait(poll_interval: float, last: float, changed: bool) -> float:
    """Seconds until the next listing: FASTEST_POLL (or poll_interval, if shorter) after a
    listing that found a change, since changes come in bursts; twice the last wait after
    one that found none, never more than poll_interval, so that a change made on the
    server at any time is still found within poll_interval."""
    fastest = min(FASTEST_POLL, poll_interval)
    return fastest if changed else min(poll_interval, max(fastest, last * 2))
