"""onitufs driver for a directory on a local or mounted disk.

Uploads go to a hidden temporary file beside the target and are renamed
into place when complete, so the directory never shows a half-written
file; a name the disk refuses (exFAT's `at 10:30`), or takes for another
entry's (`a.txt` beside `A.txt`), is stored under its escape (disknames.py).
Changes made directly in the directory are found by the kernel's change
notices (watch.py), with a full listing at the start and every
``poll_interval`` as a safety net; where the folder cannot be watched, it is
listed every POLL seconds (or poll_interval, if shorter). Each report is a
full listing, and the core works out what was created, changed, deleted or
renamed. A disk that refused a change for want of room or write access is
looked at until it has them again (onitufs.room).

Config keys: ``path`` (the directory, required), ``poll_interval``
(default "10m").
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from onitufs import durable
from onitufs.config import ConfigError, Options
from onitufs.plug import (
    CHEAP,
    MARKER,
    TEMP_SUFFIX,
    Changed,
    Conflict,
    DriverError,
    F,
    Metadata,
    Plug,
    RemoteUnavailable,
    UploadFiles,
    at_or_below,
    left_aside_by_another,
    resume_at,
    upload_path,
    write_chunk,
)
from onitufs.renames import exchange, rename_noreplace
from onitufs.room import RoomWatch, local_state, refused_locally
from onitufs.storednames import renames_in_case

from .asides import Asides
from .disknames import (
    NO_LINKS,
    Disk,
    clash_escape,
    holds_exactly,
    holds_links,
    made_at,
    refusal,
    shown_beside,
)
from .listing import (
    changed_ns,
    describe,
    file_id,
    require_root,
    stamp,
    steady_listing,
    token,
)
from .pin import Pin
from .watch import OutOfWatches, follow

# The keys of the table besides the core's driver and mode: the core refuses any other.
OPTIONS = ("path", "poll_interval")
POLL_INTERVAL = "10m"  # the full listing of a watched folder: a safety net
POLL = 2.0  # how often a folder that cannot be watched is listed, at most

# How long a read waits for another program to let go of a lease on the file: a moment (a
# Samba server asks its client to let go, which takes it a round trip), as the wait holds
# one of the few threads the remote's calls run on, and the program reading in the mount.
# The kernel takes a lease back only after lease-break-time (45 s by default); a read that
# gives up before fails as it did, and the next one waits again.
LEASE_WAIT = 2.0
LEASE_STEP = 0.05  # how often the open is tried again meanwhile

log = logging.getLogger(__name__)


def open_to_read(path: str, stopping: threading.Event) -> int:
    """The file at `path`, opened to read. O_NONBLOCK: a named pipe put in its place would
    keep the open, and the thread, waiting for a writer. The same flag fails the open with
    EAGAIN where another program holds a write lease on the file (Samba's oplocks), and
    asks it to let go: the open is tried again until it has (LEASE_WAIT at most), as a
    blocking open would wait."""
    deadline = time.monotonic() + LEASE_WAIT
    while True:
        try:
            return os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except BlockingIOError:
            if time.monotonic() >= deadline or stopping.wait(LEASE_STEP):
                raise


def check(options: Options) -> None:
    root = options.path("path")
    if not root.is_dir():
        raise ConfigError(f"{options.where}.path: {root} is not a directory "
                          "(create it, or fix the path)")
    options.duration("poll_interval", POLL_INTERVAL)


def folder(options: Options) -> Path:
    """The directory, for the core to check against the mount point, the cache and the
    other remotes (it resolves symbolic links itself)."""
    return options.path("path")


def is_version(st: os.stat_result, md: Metadata) -> bool:
    """Whether the file is the version md describes: the same time and size (the kernel's
    clock ticks in milliseconds, so two saves can share them) and the same inode (a file
    put in place by rename, as every upload is, is another inode), and no change since
    (its ctime: content rewritten in place keeps the inode, and can keep the time too)."""
    return token(st) == md.revision and (md.file_id is None or file_id(st) == md.file_id) \
        and (md.changed_ns is None or changed_ns(st) == md.changed_ns)


def is_moved_version(st: os.stat_result, md: Metadata) -> bool:
    """is_version of a file renamed since it was stamped: the rename moved its ctime, and
    the rest of the version says which file it is."""
    return stat.S_ISREG(st.st_mode) \
        and (token(st), file_id(st)) == (md.revision, md.file_id or file_id(st))


def lstat_or_none(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def move_back(moved: str, name: str) -> bool:
    """Rename a file back to the name it had, unless something took that name since."""
    try:
        rename_noreplace(moved, name)
    except FileExistsError:
        return False
    return True


def in_hole(fd: int, offset: int, size: int, file_size: int) -> bool:
    """Whether bytes offset to offset + size of the file are all a hole: read as zeros
    without reading them (the kernel zeroes a page for every page of a hole it reads)."""
    if offset >= file_size:
        return False
    try:
        data = os.lseek(fd, offset, os.SEEK_DATA)
    except OSError as error:
        # ENXIO: no data from there to the end; anything else: no SEEK_DATA here, so read
        return error.errno == errno.ENXIO
    return data >= offset + size


def apply_xattrs(target: int | str, wanted: dict[str, bytes]) -> None:
    """Make the user xattrs of an entry what onitufs holds, where the disk keeps xattrs
    at all: `target` is a descriptor, or the /proc/self/fd path of one (followed)."""
    try:
        present = [name for name in os.listxattr(target) if name.startswith("user.")]
        for name in present:
            if name not in wanted:
                os.removexattr(target, name)
        for name, value in wanted.items():
            os.setxattr(target, name, value)
    except OSError as error:
        if error.errno not in (errno.ENOTSUP, errno.EPERM):
            raise


def resolved(folder: str) -> str:
    """Where a folder really is, every symlink on the way followed, as the kernel found
    it: three system calls, where os.path.realpath's lstat of each part, in Python, took
    a fifth of the time of the driver's calls, holding the GIL the mount wants. A folder
    that is not there (or not a folder) is left to realpath."""
    try:
        fd = os.open(folder, os.O_PATH | os.O_DIRECTORY)
    except OSError:
        return os.path.realpath(folder)
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def start(plug: Plug) -> None:
    root = str(plug.options.path("path"))
    interval = plug.options.duration("poll_interval", POLL_INTERVAL)

    open_uploads = UploadFiles()  # by temp_name()
    plug.cost = CHEAP
    root_at = resolved(root)
    disk = Disk(root)
    pin = Pin(root, lambda: plug.marked)
    room_refused = RoomWatch(plug, lambda: local_state(root)).watching(refused_locally)
    with contextlib.suppress(RemoteUnavailable):  # pinned at the first change instead
        pin.confirm()

    def real(path: str) -> str:
        """The local path of a path of the mount."""
        return inside(disk.path(path))

    def inside(stored: str) -> str:
        """The local path of a stored path, refusing any that leads outside the root, and
        every one while the root is missing: the remote is away, so nothing is "not there"
        (a delete would pass) and nothing can be made in it."""
        nonlocal root_at
        require_root(root)
        full = os.path.join(root, stored)
        parent = resolved(os.path.dirname(full))
        if not at_or_below(parent, root_at):
            root_at = resolved(root)  # a symlink on the way to the root may have changed
            if not at_or_below(parent, root_at):
                raise DriverError(f"{stored}: leads outside {root}")
        return full

    began = threading.local()  # .folder: where this thread's change began (pin.confirm)

    def confirmed(handler: F) -> F:
        """A change between two of the pin's looks: one that began, or ended, where the
        path led out of the pinned folder is the remote being away, neither made nor
        refused there. (A move or a chmod needs none: what it changes is not there. A
        delete or an abort finding nothing there succeeds, and would leave the disk's file
        for good.) The marker's own upload too: a remote never marked (its disk read-only
        or full) and then unplugged looks new and empty to the core, which would mark the
        mount point's folder and send everything there."""
        @functools.wraps(handler)
        def change(md: Metadata, *args: Any) -> Any:
            began.folder = pin.confirm(md.path == MARKER)
            try:
                result = handler(md, *args)
            except Exception:
                pin.unchanged(began.folder)
                raise
            pin.unchanged(began.folder)
            return result
        return cast(F, change)

    def durable_entries(*paths: str) -> None:
        """Make the entries at `paths` as they are now (made, renamed, removed) outlive a
        power loss of the remote's disk before onitufs records the change: one lost would
        read as a change made there (a file or folder made here as deleted there, and
        deleted everywhere; a version replaced as an edit made there)."""
        for folder in dict.fromkeys(os.path.dirname(path) for path in paths):
            durable.sync_folder(folder)

    def temp_name(md: Metadata) -> str:
        return upload_path(md, disk.path(md.path))

    def upload_fd(md: Metadata, flags: int = os.O_WRONLY) -> int:
        """The descriptor of this upload's temp file, opened once per upload."""
        name = temp_name(md)
        return open_uploads.fd(name, lambda: os.open(inside(name), flags | os.O_NOFOLLOW,
                                                      0o600))

    def the_version(fd: int, md: Metadata, path: str) -> os.stat_result:
        """The open file's stat, if it is still the version md describes; else Changed
        (or DriverError where the name no longer holds a file)."""
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            plug.look_again()
            raise DriverError(f"{md.path}: no longer a file on the remote")
        if md.revision is not None and not is_version(st, md):
            plug.look_again()
            if not holds_exactly(path):
                raise DriverError(f"{md.path}: no longer on the remote")
            raise Changed(f"{md.path}: changed on the remote since it was indexed",
                          describe(md.path, st))
        return st

    @plug.handler()
    def get_chunk(md: Metadata, offset: int, size: int) -> bytes:
        path = real(md.path)
        try:
            fd = open_to_read(path, plug.stopping)
        except FileNotFoundError:
            plug.look_again()  # where no event said so, the next listing does
            raise DriverError(f"{md.path}: no longer on the remote") from None
        try:
            st = the_version(fd, md, path)
            if in_hole(fd, offset, size, st.st_size):
                return bytes(min(size, max(0, st.st_size - offset)))
            data = os.pread(fd, size, offset)
            # Another program may have written over it since the look: a write moves the
            # change time before it changes a byte, so a look after the read proves the
            # bytes (but for a write within the clock's tick of the version's own time,
            # the racy case the core settles, remote_changes.py).
            the_version(fd, md, path)
            return data
        finally:
            os.close(fd)

    @plug.handler()
    @room_refused
    @confirmed
    def start_upload(md: Metadata) -> None:
        require_root(root)
        try:
            upload_fd(md, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)  # the name is this upload's
        except OSError as error:
            raise refusal(md.path, inside(temp_name(md)), error) from None
        confirm_upload(md)

    @plug.handler()
    @room_refused
    @confirmed
    def restart_upload(md: Metadata, offset: int) -> None:
        resume_at(upload_fd(md), offset, md)
        confirm_upload(md)

    def confirm_upload(md: Metadata) -> None:
        """The temp file is in the pinned folder, or goes."""
        confirm_made(lambda: abort_upload(md))

    # A chunk written past a gap leaves a hole, and end_upload's ftruncate makes one of a
    # gap at the end: onitufs need not send chunks of zeros, and copies stay sparse.
    plug.keeps_holes = True

    @plug.handler()
    @room_refused
    def upload_chunk(md: Metadata, offset: int, chunk: bytes) -> None:
        fd = upload_fd(md)
        write_chunk(fd, offset, chunk)
        # The disk starts on the chunk now, while the next ones come, and end_upload's fsync
        # waits for less: DONTNEED starts the writeback of a range without waiting for it
        # (os has no sync_file_range).
        os.posix_fadvise(fd, offset, len(chunk), os.POSIX_FADV_DONTNEED)

    @plug.handler()
    @room_refused
    def end_upload(md: Metadata) -> None:
        name = temp_name(md)
        path = inside(name)
        fd = upload_fd(md)
        try:
            os.ftruncate(fd, md.size)
            os.fchmod(fd, md.mode)
            apply_xattrs(fd, md.xattrs)
            os.utime(fd, ns=(md.mtime_ns, md.mtime_ns))
            os.fsync(fd)  # the remote copy must outlive a power loss: the cache may evict ours
            # The rename goes by name: the file there must be the one written. A disk that
            # lost power and came back in the same place holds what it kept of the upload
            # (a file system kept alive by the open file takes the writes meanwhile).
            written, named = os.fstat(fd), lstat_or_none(path)
            if named is None or (named.st_dev, named.st_ino) != (written.st_dev, written.st_ino):
                raise DriverError(f"{md.path}: the upload's temporary file on the remote is not "
                                  "the one written (the disk was replaced under it?)")
            target = real(md.path)
            there = lstat_or_none(target)
            if there is not None and not is_version(there, md):
                instead = clash_escape(md.path, target)
                if instead is not None:  # another name's entry answered
                    target, there = instead, lstat_or_none(instead)
            if there is not None and not is_version(there, md):
                raise Conflict(f"{md.path}: changed on the remote since onitufs last saw it",
                               describe(md.path, there))
            try:
                exchanged = there is not None and exchange(path, target)
            except FileNotFoundError:  # deleted since the look: the upload puts it back
                there, exchanged = None, False
            if exchanged:
                # What the upload replaced is now at the temp name: the version looked
                # at, unless another program saved one since, which goes back.
                if not is_moved_version(os.lstat(path), md):
                    exchange(path, target)
                    raise Conflict(f"{md.path}: saved on the remote during the upload",
                                   describe(md.path, os.lstat(target)))
                os.unlink(path)
            elif there is None:
                try:  # a file another program made there since the look stays
                    target = made_at(md.path, target, lambda at: rename_noreplace(path, at))
                except FileExistsError as error:
                    raise Conflict(f"{md.path}: made on the remote during the upload",
                                   describe(md.path, os.lstat(error.filename))) from None
            else:  # a disk that cannot exchange: the look above must do
                os.rename(path, target)
            durable_entries(target)
            stamp(md, os.fstat(fd))  # after the rename, which moved its ctime
        finally:
            open_uploads.close(name)
        if md.path == MARKER:
            pin.marker_written()

    @plug.handler()
    @room_refused
    @confirmed
    def abort_upload(md: Metadata) -> None:
        name = temp_name(md)
        fd = open_uploads.take(name)
        if fd is not None:
            try:
                # where the temp file is now: a folder above it may have been renamed since
                moved: tuple[str, os.stat_result] | None = (
                    os.readlink(f"/proc/self/fd/{fd}"), os.fstat(fd))
            except OSError:
                moved = None
            finally:
                os.close(fd)  # before the remove: see onitufs-drivers(7), delete_file
            if moved is not None and moved[0] != inside(name):
                with contextlib.suppress(OSError):
                    remove_temp(*moved)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            os.unlink(inside(name))

    def remove_temp(path: str, st: os.stat_result | None = None) -> None:
        """Delete an upload's temp file inside the root (the file `st` if given), and
        nothing else: the name is one of onitufs's temp files, and it is a file."""
        inside = resolved(root) + "/"
        if not path.startswith(inside) or not path.endswith(TEMP_SUFFIX):
            return
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            there = os.lstat(path)
            if stat.S_ISREG(there.st_mode) and (st is None or (there.st_dev, there.st_ino)
                                                == (st.st_dev, st.st_ino)):
                os.unlink(path)

    @plug.handler()
    @room_refused
    @confirmed
    def delete_file(md: Metadata) -> None:
        path = real(md.path)
        try:
            st: os.stat_result | None = os.lstat(path)
        except (FileNotFoundError, NotADirectoryError):  # (a file where its folder was)
            st = None
        if st is not None and not (stat.S_ISREG(st.st_mode) and md.revision is not None
                                   and is_version(st, md)) and not holds_exactly(path):
            st = None  # another name's entry, in a folder that ignores case: this one is gone
        if st is None or (stat.S_ISREG(st.st_mode) and md.revision is not None):
            delete_version(md, path, st)
        elif stat.S_ISDIR(st.st_mode):
            remove_folder(md, path)
        elif stat.S_ISLNK(st.st_mode) or md.revision is None:
            os.unlink(path)
        else:
            raise DriverError(f"{md.path}: no longer a file on the remote; not deleting it")
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):  # (its folder gone too)
            durable_entries(path)

    def remove_folder(md: Metadata, path: str) -> None:
        try:
            os.rmdir(path)
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            # Never recursive: only the temp files of uploads cut short in it go with
            # the folder; anything else in it was not ours to delete.
            with os.scandir(path) as scan:
                inside = [(item.name, item.is_file(follow_symlinks=False)) for item in scan]
            if not all(is_file and name.endswith(TEMP_SUFFIX) for name, is_file in inside):
                raise
            for name, _ in inside:
                hidden = os.path.join(resolved(path), name)
                with contextlib.suppress(FileNotFoundError):
                    st = os.lstat(hidden)
                    own = left_aside_by_another(name, token(st), file_id(st))
                    if own is not None:  # back in view, which keeps the folder
                        move_back(hidden, os.path.join(resolved(path), own))
                        continue
                open_uploads.close(f"{disk.path(md.path)}/{name}")
                remove_temp(hidden)
            os.rmdir(path)

    def refuse_other_version(md: Metadata, st: os.stat_result, what: str) -> None:
        """Changed, before a delete or a move, where the file is not md's version."""
        if not stat.S_ISREG(st.st_mode) or not is_version(st, md):
            plug.look_again()
            raise Changed(f"{md.path}: changed on the remote since it was listed: not "
                          f"{what}d", describe(md.path, st))

    def keep_other_version(md: Metadata, st: os.stat_result, moved: str, name: str,
                           what: str, kept_at: str) -> None:
        """After md's file was renamed from `name` to `moved` (now `st`): a version
        another program saved between the check and the rename went instead, and goes
        back to its name if that is still free; Changed says what is there."""
        if is_moved_version(st, md):
            return
        plug.look_again()
        if not move_back(moved, name):
            raise DriverError(f"{md.path}: changed on the remote during the {what}, and "
                              f"another file took its name: that version is at {kept_at}")
        raise Changed(f"{md.path}: changed on the remote during the {what}; left in place",
                      describe(md.path, os.lstat(name)))

    def delete_version(md: Metadata, path: str, st: os.stat_result | None) -> None:
        """Delete the file at path if it is md's version, moving it aside first: the
        rename takes one file, which is then checked, so a version another program saved
        between the check and the delete is never what goes."""
        if md.revision is None:
            return
        aside = inside(plug.aside_path(md, disk.path(md.path)))
        if st is not None:
            refuse_other_version(md, st, "delete")
            try:
                os.rename(path, aside)
            except (FileNotFoundError, NotADirectoryError):
                return  # deleted there meanwhile
        try:  # (or left aside by a delete cut short)
            moved = os.lstat(aside)
        except (FileNotFoundError, NotADirectoryError):
            return
        keep_other_version(md, moved, aside, path, "delete", aside)
        os.unlink(aside)

    @plug.handler()
    @room_refused
    def move_file(old: Metadata, new: Metadata) -> None:
        source, target = real(old.path), real(new.path)
        checked = old.kind == "file" and old.revision is not None
        if checked:
            st = os.lstat(source)
            if not is_version(st, old) and not holds_exactly(source):
                raise DriverError(f"{old.path}: no longer on the remote")
            refuse_other_version(old, st, "move")
        try:
            try:
                rename_noreplace(source, target)
            except FileExistsError:
                if renames_in_case(shown_beside(target), old.path, new.path):
                    os.rename(source, target)  # the folder ignores case: the same entry renamed
                else:
                    target = made_at(new.path, target, lambda at: rename_noreplace(source, at))
        except FileExistsError:
            raise DriverError(f"{new.path}: already exists on the remote") from None
        except OSError as error:
            if not os.path.lexists(source):
                raise
            raise refusal(new.path, target, error) from None
        st = os.lstat(target)
        if checked:
            keep_other_version(old, st, target, source, "move", new.path)
        durable_entries(source, target)
        stamp(new, st)

    @plug.handler()
    @room_refused
    @confirmed
    def make_dir(md: Metadata) -> None:
        path = real(md.path)
        mode = md.mode & 0o7777
        try:
            path = made_at(md.path, path, lambda at: os.mkdir(at, mode))
        except FileExistsError as error:
            path = error.filename
            if not os.path.isdir(path) or os.path.islink(path):
                raise DriverError(f"{md.path}: exists on the remote and is not a folder") from None
        except OSError as error:
            raise refusal(md.path, path, error) from None
        else:
            confirm_made(lambda: os.rmdir(path))
        # The exact mode, zero included: mkdir applied the daemon's umask, and on Linux
        # leaves out the setuid and setgid bits (or inherits setgid from the parent).
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            if stat.S_IMODE(os.fstat(fd).st_mode) != mode:
                os.fchmod(fd, mode)
            apply_xattrs(fd, md.xattrs)
            os.fsync(fd)
            durable_entries(path)
            stamp(md, os.fstat(fd))
        finally:
            os.close(fd)

    @plug.handler()
    @room_refused
    def set_attrs(md: Metadata) -> None:
        # Through a descriptor of the entry checked: a version another program saves by
        # rename meanwhile is another inode, which keeps its attributes, and is not
        # recorded as ours. (O_PATH: no read permission needed, and a pipe put there
        # does not wait; /proc/self/fd/N reaches the inode it holds.)
        fd = os.open(real(md.path), os.O_PATH | os.O_NOFOLLOW)
        try:
            st = os.fstat(fd)
            same = stat.S_ISREG(st.st_mode) and is_version(st, md) if md.kind == "file" \
                else stat.S_ISDIR(st.st_mode)  # (O_PATH opens a link itself, or a pipe)
            if not same:
                raise DriverError(f"{md.path}: changed on the remote; its attributes are "
                                  "left alone")
            pinned = f"/proc/self/fd/{fd}"
            os.chmod(pinned, md.mode)
            apply_xattrs(pinned, md.xattrs)
            if md.kind == "file":
                os.utime(pinned, ns=(md.mtime_ns, md.mtime_ns))
            # (a file the daemon may not read, or one another program holds a lease on)
            with contextlib.suppress(PermissionError, BlockingIOError):
                durable.sync_file(pinned)
            stamp(md, os.fstat(fd))
        finally:
            os.close(fd)

    @plug.handler()
    @room_refused
    @confirmed
    def make_symlink(md: Metadata) -> None:
        path = real(md.path)
        try:
            path = made_at(md.path, path, lambda at: os.symlink(md.target or "", at))
        except FileExistsError as error:
            path = error.filename
            if not (os.path.islink(path) and os.readlink(path) == md.target):
                raise
        except OSError as error:
            # One folder's refusal (chattr +i) keeps that link back; a disk's, every link.
            if error.errno in NO_LINKS and holds_links(os.path.dirname(path)) is False:
                plug.withdraw("make_symlink")
                raise DriverError(f"{md.path}: the remote's disk holds no symbolic links "
                                  f"({error.strerror}): they stay off it") from None
            raise refusal(md.path, path, error) from None
        else:
            confirm_made(lambda: os.unlink(path))
            durable_entries(path)
        st = os.lstat(path)
        stamp(md, st)

    def confirm_made(remove: Callable[[], object]) -> None:
        """What was just made is in the pinned folder, or `remove` takes it from where the
        path led instead (the mount point's own folder)."""
        try:
            pin.unchanged(began.folder)
        except RemoteUnavailable:
            with contextlib.suppress(OSError, RemoteUnavailable):  # (an abort looks again)
                remove()
            raise

    asides = Asides(plug, inside)
    plug.ready()
    try:
        follow(plug, disk, interval, asides.sweep)
    except OutOfWatches as error:
        log.warning("remote %s: %s; listing %s every %gs instead (raise the limit: "
                    "sysctl fs.inotify.max_user_watches, max_user_instances)",
                    plug.name, error, root, min(interval, POLL))
        poll(plug, disk, min(interval, POLL), asides.sweep)


def poll(plug: Plug, disk: Disk, interval: float, sweep: Callable[[list[str]], None]) -> None:
    """List the root folder every interval and report it, for a folder that cannot be
    watched; `sweep` as in follow."""
    # What the last listing reported held, and how many changes onitufs had made by then.
    last: tuple[dict[str, tuple[str | None, str | None, int | None]], int] | None = None
    while not plug.stopping.is_set():
        started, writes = time.monotonic(), plug.writes
        try:
            hidden: list[str] = []
            entries = steady_listing(disk, plug.give_way, hidden)
        except (OSError, RemoteUnavailable) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else error
            plug.offline(f"cannot list {disk.root}: {reason}")
            last = None
        else:
            if entries is None:
                plug.wait_to_list(interval)
                continue
            sweep(hidden)
            seen = {md.path: (md.revision, md.file_id, md.changed_ns) for md in entries}
            if (seen, writes) != last:
                if last is None:
                    plug.online()
                last = (seen, writes) if plug.report_tree(entries, started) else None
        plug.wait_to_list(interval)  # sooner if a handler found a file gone or changed
