"""`onitufs mount`: check what can be checked, then fork the daemon and wait until the
mount is ready, or run it in the foreground (-f), which is what the daemon does.

The mount options come from the command line or, through mount(8) and mount.fuse3, from
an fstab line: FUSE's own pass on to FUSE, `TABLE.KEY=VALUE` sets a [cache] or [sync]
key of the config, and those meant for mount(8) or systemd are accepted and left unused.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .. import cleanstop, logs, overlaps, syncpoint
from ..config import ConfigError, load
from ..index import CacheError
from ..notify import notify
from ..plug import load_drivers
from .common import LOG_FORMAT, CommandError, ask_daemon, mount_entry
from .progress import follow_listing

# What an fstab line holds for mount(8) or systemd rather than for the file system.
# mount.fuse3 drops some of them itself, but `onitufs mount -o` may be given any.
# relatime is how the kernel mounts FUSE anyway, and libfuse would refuse the word.
FSTAB_ONLY = {"defaults", "auto", "noauto", "user", "nouser", "users", "_netdev", "nofail",
              "relatime"}
FSTAB_ONLY_PREFIXES = ("x-", "comment=")


def add_to(commands: Any) -> None:
    mount = commands.add_parser(
        "mount", help="mount the remotes of CONFIG at MOUNTPOINT (by default at the "
                      "config's mountpoint key)")
    mount.add_argument("mountpoint", type=Path, nargs="?")
    mount.add_argument("config", type=Path)
    mount.add_argument("-f", "--foreground", action="store_true",
                       help="stay in the foreground and log to standard error")
    mount.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION",
                       help="mount option: allow_other, ro, nonempty, cache.size=8GiB, "
                            "sync.upload_delay=5s, ... (repeatable)")
    mount.add_argument("--log", type=Path,
                       help="the background daemon's log file (default: onitufs.log in the "
                            "cache)")
    mount.add_argument("--log-level", choices=logs.LEVELS, default="info",
                       help="log this and worse (default: info; debug adds every remote "
                            "operation)")
    mount.set_defaults(run=cmd_mount)


def sort_options(values: list[str]) -> tuple[set[str], dict[str, str], bool]:
    """From the -o values: the FUSE options, the config keys they set ("cache.size" to
    "8GiB"), and whether nonempty was given."""
    fuse: set[str] = set()
    keys: dict[str, str] = {}
    for option in (option for value in values for option in value.split(",") if option):
        name, equals, value = option.partition("=")
        if equals and "." in name:
            keys[name] = value
        elif option not in FSTAB_ONLY and not option.startswith(FSTAB_ONLY_PREFIXES):
            fuse.add(option)
    # nonempty is onitufs's own, as sshfs's: libfuse3 has no such option and would refuse it.
    return fuse - {"nonempty"}, keys, "nonempty" in fuse


def cmd_mount(args: argparse.Namespace) -> int:
    from ..daemon import Mount, MountError, check_mountpoint, describe_error

    given, keys, nonempty = sort_options(args.options)
    config = load(args.config, keys)
    mountpoint = args.mountpoint or config.mountpoint
    if mountpoint is None:
        raise CommandError(f"{config.source}: no mount point: name one (onitufs mount "
                           "MOUNTPOINT CONFIG), or set mountpoint = \"~/Cloud\" in the config")
    mountpoint = mountpoint.expanduser().absolute()
    log_path = args.log or config.cache_path / "onitufs.log"
    # The config as the source, as in an fstab line: mount(8) then knows the line is
    # mounted (`mount -a` twice), and df and findmnt show which config is.
    fsname = str(config.source).replace("\\", "\\\\").replace(",", "\\,")
    options = {f"fsname={fsname}", "subtype=onitufs", "default_permissions", *given}

    def check() -> None:
        """What needs neither the cache nor a remote (Mount checks keys and folders again)."""
        refuse_a_mount_there(mountpoint)  # first: the checks below stat the mount point
        overlaps.check(config, mountpoint, load_drivers(config))
        check_mountpoint(mountpoint, nonempty)

    def serve(ready_fd: int | None) -> int:
        """Mount and serve until unmounted: -f, or the daemon `onitufs mount` forked."""
        # The daemon `onitufs mount` started logs to its file; -f run by hand or by
        # systemd, to standard error.
        logs.setup(args.log_level, log_path if ready_fd is not None else None, LOG_FORMAT)
        ready_pipe = os.fdopen(ready_fd, "w") if ready_fd is not None else None
        # What a failed mount made goes again; for a daemon, `onitufs mount` takes it away.
        made = NewPaths(config.cache_path, None) if ready_pipe is None else None

        def ready() -> None:
            notify("READY=1", f"STATUS=mounted at {mountpoint}")
            if ready_pipe is not None:
                ready_pipe.write("ready\n")
                ready_pipe.close()

        def failed(message: str) -> CommandError:
            if ready_pipe is not None and not ready_pipe.closed:
                ready_pipe.write(f"error: {message}\n")
                ready_pipe.close()
            if made is not None:
                made.remove()
            return CommandError(message)

        try:
            mount = Mount(config, mountpoint)
        except (ConfigError, MountError, CacheError) as error:
            raise failed(describe_error(error)) from None
        try:
            complete = mount.run(options, ready)
        except MountError as error:
            raise failed(str(error)) from None
        return 0 if complete else 2

    try:
        check()  # before the daemon's log makes the cache folder
    except MountError as error:
        raise CommandError(str(error)) from None
    if args.foreground:
        return serve(None)
    return spawn_daemon(mountpoint, log_path, NewPaths(config.cache_path, log_path), serve)


def refuse_a_mount_there(mountpoint: Path) -> None:
    """Refuse a mount point something is mounted at. mountinfo tells, and a child process
    asks the mount: a request to a mount whose daemon is stopped or hung would hold this
    command for ever (no signal ends that wait). A mount whose daemon died is left for
    check_mountpoint to clear. The request is a statvfs, which the kernel always passes
    to the daemon: a stat, answered from its cache for a while after the daemon died,
    took that mount for a live one."""
    if mount_entry(mountpoint) is None:
        return

    def statvfs() -> None:
        os.statvfs(mountpoint)

    try:
        ask_daemon(mountpoint, statvfs)
    except OSError as error:
        if error.errno == errno.ENOTCONN:
            return
        raise CommandError(f"{mountpoint}: {error.strerror}") from None
    raise CommandError(f"{mountpoint}: already a mount point (unmount it first)")


# What Index makes in the cache folder (see index.py), besides the log.
CACHE_FILES = ("data.mdb", "lock.mdb", "lock", cleanstop.NAME, syncpoint.NAME)


class NewPaths:
    """The folders and files of a cache (and a log) that a mount is about to make and that
    are not there yet, so that a mount that fails can leave the disk as it found it."""

    def __init__(self, cache: Path, log: Path | None) -> None:
        self.cache = cache
        files = [cache / name for name in CACHE_FILES] + ([log] if log is not None else [])
        self.files = [path for path in files if not os.path.lexists(path)]
        folders = {cache, *cache.parents}
        if log is not None:
            folders |= {log.parent, *log.parent.parents}
        self.folders = sorted((folder for folder in folders if not os.path.lexists(folder)),
                              key=lambda folder: len(folder.parts), reverse=True)

    def remove(self) -> None:
        """Remove them, once nothing of this mount uses them; never a cache that another
        onitufs process has opened meanwhile (it holds the lock)."""
        try:
            lock = (self.cache / "lock").open("rb")
        except OSError:
            lock = None
        with contextlib.ExitStack() as stack:
            if lock is not None:
                stack.enter_context(lock)
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    return
            for path in self.files:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            for folder in self.folders:  # the deepest first; one holding more stays
                with contextlib.suppress(OSError):
                    folder.rmdir()


def spawn_daemon(mountpoint: Path, log_path: Path, made: NewPaths,
                 serve: Callable[[int], int]) -> int:
    """Fork the daemon, which runs serve(fd of a pipe to say "ready" or why not on), and wait
    for its word. A fork, not a new interpreter: what this process imported and checked
    is the daemon's at once, a third of the time a mount takes to be ready."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    # above 0-2, which the daemon points at /dev/null and the log (a command run with one
    # of them closed would get it from os.pipe)
    read_end, write_end = (above_std(fd) for fd in os.pipe())
    sys.stdout.flush()
    sys.stderr.flush()
    log_fd = above_std(os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644))
    pid = os.fork()
    if pid == 0:
        # The daemon returns from here, to end as the command does: its exit handlers
        # (a driver's clean-up) run then, as they would in -f.
        return daemon(read_end, write_end, log_fd, serve)
    os.close(log_fd)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.readline().strip()
    if answer == "ready":
        follow_listing(mountpoint)  # on a terminal: each remote's first listing, until it came
        return 0
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    if answer.startswith("error: "):
        made.remove()  # the daemon said why, in the line printed: its log has nothing more
        raise CommandError(answer[len("error: "):])
    raise CommandError(f"the daemon stopped before mounting (exit {code}); see {log_path}")


def above_std(fd: int) -> int:
    moved = fcntl.fcntl(fd, fcntl.F_DUPFD, 3)
    os.close(fd)
    return moved


def daemon(read_end: int, ready_fd: int, log_fd: int, serve: Callable[[int], int]) -> int:
    """The forked daemon: a session of its own, no terminal, no working folder of the
    caller's, its output to the log (until its logging takes over, a traceback too); then
    serve(ready_fd)."""
    os.close(read_end)
    os.setsid()
    os.chdir("/")  # the folder the command ran in (on a USB stick, say) is not kept busy
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    # nothing else of whoever ran the command (a caller's pipe, make's jobserver) is held
    # open for as long as the mount lasts
    os.closerange(3, ready_fd)
    os.closerange(ready_fd + 1, os.sysconf("SC_OPEN_MAX"))
    return serve(ready_fd)
