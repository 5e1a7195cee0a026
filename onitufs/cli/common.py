"""What the subcommands share: their error, the status a mount gives (and what is said
where its daemon does not answer), a driver's hook for one remote, and sizes in words."""

from __future__ import annotations

import errno
import json
import os
import re
import select
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..config import ConfigError, Options, load
from ..plug import check_keys, load_driver

STATUS_XATTR = "user.onitufs.status"
FLUSH_XATTR = "user.onitufs.flush"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# How long a daemon that is not stopped may take to answer before it is taken for hung: its
# thread that serves the mount waits on no remote, but may on its own disk (an fsync).
ANSWER_WAIT = 30.0
STOPPED = ("T", "t")  # /proc/PID/stat states: SIGSTOP or Ctrl-Z, and a debugger's stop


class CommandError(Exception):
    """Ends the command with this message and an exit status (1 unless said)."""

    def __init__(self, message: str, status: int = 1) -> None:
        super().__init__(message)
        self.status = status


def quiet_stdout() -> None:
    """Send what is still to be printed to /dev/null: the reader of the output is gone."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def remote_hook(config_path: Path, name: str, hook_name: str,
                lacking: str) -> tuple[Any, Options]:
    """The driver's hook `hook_name` for the remote `name` of the config, and the remote's
    options; `lacking` ends the command where its driver has none (say "needs no ...",
    after "remote R (driver D)")."""
    config = load(config_path)
    remote = next((r for r in config.remotes if r.name == name), None)
    if remote is None:
        names = ", ".join(r.name for r in config.remotes)
        raise CommandError(f"{config.source}: no remote named '{name}' (remotes: {names})")
    driver = load_driver(remote.driver, remote.options.where)
    # a misspelt key must not send a secret or a host key to a default place
    check_keys(driver, remote.options, remote.driver)
    hook = getattr(driver, hook_name, None)
    if hook is None:
        raise CommandError(f"remote {remote.name} (driver {remote.driver}) {lacking}")
    return hook, remote.options


class DeadMount(CommandError):
    """An onitufs mount whose daemon is gone (killed): the kernel answers ENOTCONN."""


class HungMount(CommandError):
    """An onitufs mount whose daemon is there but does not answer: stopped, or hung."""


def read_status(mountpoint: Path) -> dict[str, Any]:
    try:
        raw = ask_daemon(mountpoint, lambda: os.getxattr(mountpoint, STATUS_XATTR))
    except OSError as error:
        raise no_status(mountpoint, error) from None
    status: dict[str, Any] = json.loads(raw)
    return status


def ask_daemon(mountpoint: Path, request: Callable[[], bytes | None]) -> bytes:
    """What request() (an xattr of the mount) gives (b"" for None), or a HungMount where the
    daemon does not answer it: at once where it is stopped, after ANSWER_WAIT where it is
    hung; a command would otherwise wait for it for ever. A child process makes the
    request: one that a daemon has taken and does not answer holds whoever made it until
    it does (no signal ends that wait), and a command must be able to end."""
    refuse_stopped(mountpoint)  # said at once, where the kernel could answer for it
    answers, answer_end = os.pipe()
    child = os.fork()
    if child == 0:
        try:
            # Left waiting, it must hold nothing of the command's: a reader of its output
            # or a program talking to it on a pipe waits for the pipe's end.
            quiet = os.open(os.devnull, os.O_RDWR)
            for fd in (0, 1, 2):
                os.dup2(quiet, fd)
            os.closerange(3, answer_end)
            os.closerange(answer_end + 1, os.sysconf("SC_OPEN_MAX"))
            try:
                answer = b"=" + (request() or b"")
            except OSError as error:
                answer = b"!%d" % (error.errno or errno.EIO)
            with os.fdopen(answer_end, "wb") as pipe:
                pipe.write(answer)
        finally:
            os._exit(0)
    os.close(answer_end)
    with os.fdopen(answers, "rb") as pipe:
        deadline = time.monotonic() + ANSWER_WAIT
        while not select.select([pipe], [], [], 0.5)[0]:
            pid = refuse_stopped(mountpoint)
            if time.monotonic() > deadline:
                named = f" (pid {pid})" if pid is not None else ""
                raise HungMount(f"{mountpoint}: the daemon of this mount{named} has not "
                                f"answered for {ANSWER_WAIT:.0f} s")
        answer = pipe.read()
    os.waitpid(child, 0)
    if answer[:1] == b"=":
        return answer[1:]
    code = int(answer[1:]) if answer[:1] == b"!" else errno.EIO
    raise OSError(code, os.strerror(code), str(mountpoint))


def refuse_stopped(mountpoint: Path) -> int | None:
    """Raise HungMount where the daemon of `mountpoint` is stopped; its pid where known."""
    pid = daemon_pid(mountpoint)
    if pid is not None and process_state(pid) in STOPPED:
        raise HungMount(f"{mountpoint}: the daemon of this mount (pid {pid}) is "
                        f"stopped: `kill -CONT {pid}` lets it go on")
    return pid


def daemon_pid(mountpoint: Path) -> int | None:
    """The pid of the daemon serving `mountpoint`, found without asking it: the mount's
    source is its config, whose cache folder's lock file names the process holding it.
    None where that cannot be told (a config changed since, a cache set by -o)."""
    mounted = mount_entry(mountpoint)
    if mounted is None or mounted[0] != "fuse.onitufs":
        return None
    try:
        pid = int((load(Path(mounted[1])).cache_path / "lock").read_text())
        command = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (ConfigError, OSError, ValueError):
        return None
    return pid if b"onitufs" in command else None


def process_state(pid: int) -> str | None:
    """The state letter of process `pid` (R, S, D, T, Z...), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


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
    mounted = mount_entry(path)
    return mounted[0] if mounted is not None else None


def mount_entry(path: Path) -> tuple[str, str] | None:
    """The type and the source of the file system mounted at `path` (the last one mounted
    there), or None when nothing is."""
    with open("/proc/self/mountinfo") as mounts:
        table = [line.partition(" - ") for line in mounts]
    # Where the mount's daemon does not answer, a stat of the mount point waits for it: the
    # folders above it are resolved first, and the whole path only where that names no
    # mount (the path a link to one).
    folder, name = os.path.split(os.path.abspath(path))
    return last_mounted(table, os.path.join(os.path.realpath(folder), name)) \
        or last_mounted(table, os.path.realpath(path))


def last_mounted(table: list[tuple[str, str, str]], target: str) -> tuple[str, str] | None:
    """The type and source of what was mounted last at `target`, of mountinfo's lines
    (split at their " - ")."""
    found = None
    for fields, _, rest in table:
        if unescape(fields.split(" ")[4]) == target:
            kind, source = rest.split(" ")[:2]
            found = kind, unescape(source)
    return found


def unescape(field: str) -> str:
    """A field of /proc/self/mountinfo as it is: octal escapes of space, tab, newline and
    backslash undone."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)
