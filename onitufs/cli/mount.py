"""`onitufs mount`: check what can be checked, then start the daemon and wait until the
mount is ready, or run it in the foreground (-f), which is what the daemon is."""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import logging
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from .. import overlaps
from ..config import ConfigError, load
from ..index import CacheError
from ..plug import load_drivers
from .common import LOG_FORMAT, CommandError
from .progress import follow_listing


def add_to(commands: Any) -> None:
    mount = commands.add_parser("mount", help="mount the remotes of CONFIG at MOUNTPOINT")
    mount.add_argument("mountpoint", type=Path)
    mount.add_argument("config", type=Path)
    mount.add_argument("-f", "--foreground", action="store_true",
                       help="stay in the foreground and log to standard error")
    mount.add_argument("-o", dest="options", action="append", default=[], metavar="OPTION",
                       help="mount option: allow_other, default_permissions, nonempty, ... "
                            "(repeatable)")
    mount.add_argument("--log", type=Path, help="log file (default: onitufs.log in the cache)")
    mount.add_argument("--debug", action="store_true", help="log every remote operation")
    mount.add_argument("--ready-fd", type=int, help=argparse.SUPPRESS)
    mount.set_defaults(run=cmd_mount)


def cmd_mount(args: argparse.Namespace) -> int:
    from ..daemon import Mount, MountError, check_mountpoint, describe_error

    config = load(args.config)
    mountpoint = args.mountpoint.expanduser().absolute()
    log_path = args.log or config.cache_path / "onitufs.log"
    given = {option for value in args.options for option in value.split(",") if option}
    # nonempty is onitufs's own, as sshfs's: libfuse3 has no such option and would refuse it.
    nonempty = "nonempty" in given
    options = {"fsname=onitufs", "subtype=onitufs", "default_permissions", *given} - {"nonempty"}

    def check() -> None:
        """What needs neither the cache nor a remote (Mount checks keys and folders again)."""
        overlaps.check(config, mountpoint, load_drivers(config))
        check_mountpoint(mountpoint, nonempty)

    if not args.foreground:
        try:
            check()  # before the daemon's log makes the cache folder
        except MountError as error:
            raise CommandError(str(error)) from None
        return spawn_daemon(args, mountpoint, log_path, NewPaths(config.cache_path, log_path))

    logging.basicConfig(level=logging.DEBUG if args.debug else logging.INFO, format=LOG_FORMAT)
    ready_pipe = os.fdopen(args.ready_fd, "w") if args.ready_fd is not None else None
    # What a failed mount made goes again; for a daemon, `onitufs mount` takes it away.
    made = NewPaths(config.cache_path, None) if ready_pipe is None else None

    def ready() -> None:
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
        check()
        mount = Mount(config, mountpoint)
    except (ConfigError, MountError, CacheError) as error:
        raise failed(describe_error(error)) from None
    try:
        complete = mount.run(options, ready)
    except MountError as error:
        raise failed(str(error)) from None
    return 0 if complete else 2


# What Index makes in the cache folder (see index.py), besides the log.
CACHE_FILES = ("data.mdb", "lock.mdb", "lock")


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


def spawn_daemon(args: argparse.Namespace, mountpoint: Path, log_path: Path,
                 made: NewPaths) -> int:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    read_end, write_end = os.pipe()
    command = [sys.executable, "-m", "onitufs", "mount", "-f", "--ready-fd", str(write_end),
               str(mountpoint), str(args.config.expanduser().absolute())]
    for option in args.options:
        command += ["-o", option]
    if args.debug:
        command.append("--debug")
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log_file,
                                   stderr=log_file, pass_fds=(write_end,),
                                   start_new_session=True)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        answer = pipe.readline().strip()
    if answer == "ready":
        follow_listing(mountpoint)  # on a terminal: each remote's first listing, until it came
        return 0
    code = process.wait()
    if answer.startswith("error: "):
        made.remove()  # the daemon said why, in the line printed: its log has nothing more
        raise CommandError(answer[len("error: "):])
    raise CommandError(f"the daemon stopped before mounting (exit {code}); see {log_path}")
