"""The `onitufs` command: mount, umount, status, fsck and verify.

`onitufs mount` starts the daemon in the background and returns once the
mount is ready, or prints the one line that says why it is not. The daemon
is this same program run with -f and a pipe to report readiness on.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from . import __version__, overlaps
from .config import ConfigError, load
from .index import CacheError, Index
from .plug import load_drivers

STATUS_XATTR = "user.onitufs.status"
FLUSH_XATTR = "user.onitufs.flush"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class CommandError(Exception):
    """Ends the command with this message and an exit status (1 unless said)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def main(argv: list[str] | None = None) -> None:
    try:
        try:
            status = run_command(argv)
        finally:
            sys.stdout.flush()  # a reader that went away shows here, not as Python exits
    except BrokenPipeError:
        # `onitufs status MNT | head -1`: the reader has what it wanted. End as a command
        # that SIGPIPE kills does, without a traceback.
        quiet_stdout()
        sys.exit(128 + signal.SIGPIPE)
    sys.exit(status)


def run_command(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
    except (CommandError, ConfigError, CacheError) as error:
        print(f"onitufs: {error}", file=sys.stderr)
        return error.status if isinstance(error, CommandError) else 1
    except KeyboardInterrupt:
        return 130
    return status


def quiet_stdout() -> None:
    """Send what is still to be printed to /dev/null: the reader of the output is gone."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onitufs", description="Keep one folder on many storage services at once.")
    parser.add_argument("--version", action="version", version=f"onitufs {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

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

    umount = commands.add_parser(
        "umount", help="upload everything queued, then unmount; returns when all is done")
    umount.add_argument("mountpoint", type=Path)
    umount.set_defaults(run=cmd_umount)

    status = commands.add_parser("status", help="per remote: pending, in flight, done, failing")
    status.add_argument("mountpoint", type=Path)
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.set_defaults(run=cmd_status)
    for name, text in (("fsck", "check and repair the index and the cache (not while mounted)"),
                       ("verify", "read back every remote's copies; re-upload damaged ones")):
        check = commands.add_parser(name, help=text)
        check.add_argument("config", type=Path)
        check.set_defaults(run=cmd_check, command=name)
    return parser


# mount

def cmd_mount(args: argparse.Namespace) -> int:
    from .daemon import Mount, MountError, check_mountpoint, describe_error

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
        return 0
    code = process.wait()
    if answer.startswith("error: "):
        made.remove()  # the daemon said why, in the line printed: its log has nothing more
        raise CommandError(answer[len("error: "):])
    raise CommandError(f"the daemon stopped before mounting (exit {code}); see {log_path}")


# fsck and verify

def cmd_check(args: argparse.Namespace) -> int:
    from .check import fsck, verify
    from .daemon import Mount

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    try:
        mount = Mount(load(args.config), None)
    except (ConfigError, CacheError) as error:
        raise CommandError(str(error), status=8) from None  # fsck(8): an operational error
    tty = sys.stderr.isatty()

    def progress(line: str) -> None:
        if tty:
            print(f"\r\033[K{line[:100]}", end="", file=sys.stderr, flush=True)

    def show(line: str) -> None:
        progress("")
        try:
            print(line, flush=True)
        except BrokenPipeError:  # the reader went away (`| head`): the check goes on
            quiet_stdout()

    if args.command == "fsck":
        report, complete = mount.run_job(lambda: fsck(mount, show))
        summary = (f"fsck: {report.checked} inodes checked, {len(report.problems)} problems, "
                   f"{report.repaired} repaired, {report.left} left")
    else:
        report, complete = mount.run_job(lambda: verify(mount, show, progress))
        summary = (f"verify: {report.checked} copies read back, {len(report.problems)} damaged, "
                   f"{report.repaired} repaired, {report.unverified} with nothing to compare with")
    show(summary)
    if not complete:
        print("onitufs: some remotes could not be brought up to date; what they need stays "
              "queued for the next mount", file=sys.stderr)
    return report.exit_status(complete)


# status and umount

class DeadMount(CommandError):
    """An onitufs mount whose daemon is gone (killed): the kernel answers ENOTCONN."""


def read_status(mountpoint: Path) -> dict[str, Any]:
    try:
        raw = os.getxattr(mountpoint, STATUS_XATTR)
    except OSError as error:
        raise no_status(mountpoint, error) from None
    status: dict[str, Any] = json.loads(raw)
    return status


def no_status(mountpoint: Path, error: OSError) -> CommandError:
    """Why `mountpoint` has no status to give, said of the path."""
    if error.errno == errno.ENOENT:
        return CommandError(f"{mountpoint}: no such folder")
    kind = mount_type(mountpoint)
    if kind is None:
        return CommandError(f"{mountpoint}: not a mount point")
    if kind != "fuse.onitufs":
        stopped = " whose daemon has stopped" if error.errno == errno.ENOTCONN else ""
        return CommandError(f"{mountpoint}: not an onitufs mount (a {kind} mount{stopped})")
    if error.errno == errno.ENOTCONN:
        return DeadMount(f"{mountpoint}: the daemon of this mount has stopped ({error.strerror}); "
                         f"`onitufs umount {mountpoint}` detaches it")
    return CommandError(f"{mountpoint}: cannot read the status of this onitufs mount "
                        f"({error.strerror})")


def mount_type(path: Path) -> str | None:
    """The type of the file system mounted at `path` (the last one mounted there), or None
    when nothing is."""
    target = os.path.realpath(os.path.abspath(path))  # a dead mount point resolves as it is
    kind = None
    with open("/proc/self/mountinfo") as mounts:
        for line in mounts:
            fields, _, rest = line.partition(" - ")
            point = fields.split(" ")[4]
            # octal escapes of space, tab, newline and backslash
            point = re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point)
            if point == target:
                kind = rest.split(" ")[0]
    return kind


def cmd_status(args: argparse.Namespace) -> int:
    status = read_status(args.mountpoint)
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    print(f"{status['mountpoint']}  (pid {status['pid']}, cache {human(status['cache_bytes'])}"
          f" of {human(status['cache_limit'])}, unsaved {human(status['unsaved_bytes'])})")
    rows = [("REMOTE", "DRIVER", "MODE", "STATE", "PENDING", "IN FLIGHT", "DONE", "SENT",
             "LAST ERROR")]
    for remote in status["remotes"]:
        state = "online" if remote["online"] else "offline"
        if remote["failures"]:
            state += f", failing x{remote['failures']}"
        if remote["stalled"]:
            state += ", stalled"
        rows.append((remote["name"], remote["driver"], remote["mode"], state,
                     str(remote["pending"]), str(remote["in_flight"]), str(remote["done"]),
                     human(remote["bytes_sent"]),
                     remote["last_error"] if remote["failures"] or not remote["online"] else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=False))
              + "  " + row[-1])
    return 0


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.expanduser().absolute()
    try:
        status = read_status(mountpoint)
    except DeadMount:
        return detach(mountpoint)
    try:
        os.setxattr(mountpoint, FLUSH_XATTR, b"1")
    except OSError as error:
        # A read-only mount (-o ro) takes no xattr: nothing was written through it, and
        # what remotes changed goes out with the daemon's last flush at the unmount.
        if error.errno != errno.EROFS:
            raise
    show = sys.stderr.isatty()
    total = max(1, pending_of(status))
    while pending_of(status):
        if show:
            left = pending_of(status)
            bar = "#" * int(30 * (total - left) / total)
            print(f"\ruploading: {bar:<30} {left} left ", end="", file=sys.stderr, flush=True)
        if all_stuck(status):
            break
        time.sleep(0.2)
        try:
            status = read_status(mountpoint)
        except DeadMount:  # killed while this waited
            return detach(mountpoint)
        total = max(total, pending_of(status))
    if show:
        print("\r" + " " * 60 + "\r", end="", file=sys.stderr)
    result = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        raise CommandError(f"{mountpoint}: cannot unmount: "
                           f"{result.stderr.strip() or 'fusermount3 failed'}")
    wait_for_exit(status["pid"])
    index = Index(Path(status["cache"]), 2**40, 0)
    try:
        configured = {remote["name"] for remote in status["remotes"] if "w" in remote["mode"]}
        queued = {name: n for name, n in index.queued().items() if name in configured}
    finally:
        index.close()
    if queued:
        reasons = {remote["name"]: remote["last_error"] for remote in status["remotes"]}
        for name, count in sorted(queued.items()):
            why = f"{reasons[name]}; " if reasons.get(name) else ""
            print(f"onitufs: {name}: {why}{count} changes still queued; they resume at the next "
                  "mount", file=sys.stderr)
        return 2
    return 0


def detach(mountpoint: Path) -> int:
    """Take away the mount of a daemon that is gone. What it had queued is in the index,
    which the next mount reads; whether there is any, only the cache can tell."""
    result = subprocess.run(["fusermount3", "-u", "-z", str(mountpoint)], capture_output=True,
                            text=True)
    if result.returncode != 0:
        raise CommandError(f"{mountpoint}: the daemon of this mount has stopped, and it cannot "
                           f"be detached: {result.stderr.strip() or 'fusermount3 failed'}")
    print(f"onitufs: {mountpoint}: the daemon of this mount had stopped; detached it: the "
          "changes it had queued resume at the next mount", file=sys.stderr)
    return 2


def pending_of(status: dict[str, Any]) -> int:
    return sum(remote["pending"] for remote in status["remotes"] if "w" in remote["mode"])


def all_stuck(status: dict[str, Any]) -> bool:
    """Every remote with work left has stalled: waiting longer would not help."""
    waiting = [r for r in status["remotes"] if r["pending"] and "w" in r["mode"]]
    return bool(waiting) and all(r["stalled"] for r in waiting)


def wait_for_exit(pid: int) -> None:
    while Path(f"/proc/{pid}").exists():
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            return
        if state == "Z":
            return
        time.sleep(0.1)


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)
