"""What the subcommands share: their error, the status a mount gives, a driver's hook for
one remote, and sizes in words."""

from __future__ import annotations

import errno
import json
import os
import re
import sys
from pathlib import Path
from typing import Any

from ..config import Options, load
from ..plug import check_keys, load_driver

STATUS_XATTR = "user.onitufs.status"
FLUSH_XATTR = "user.onitufs.flush"
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


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


def human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(size)
