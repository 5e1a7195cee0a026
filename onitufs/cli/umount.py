"""`onitufs umount`: wait until every queued upload is done (or stuck), with a bar per
remote on a terminal, then unmount and say what is still queued; a mount whose daemon is
gone is detached; one whose daemon does not answer is left as it is, and said so, as is a
daemon stopped after the unmount."""

from __future__ import annotations

import argparse
import errno
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from ..index import Index
from .common import (
    FLUSH_XATTR,
    STOPPED,
    CommandError,
    DeadMount,
    ask_daemon,
    process_state,
    read_status,
)
from .progress import Display


def add_to(commands: Any) -> None:
    umount = commands.add_parser(
        "umount", help="upload everything queued, then unmount; returns when all is done")
    umount.add_argument("mountpoint", type=Path)
    umount.set_defaults(run=cmd_umount)


def cmd_umount(args: argparse.Namespace) -> int:
    mountpoint = args.mountpoint.expanduser().absolute()
    try:
        status = read_status(mountpoint)
    except DeadMount:
        return detach(mountpoint)
    try:
        ask_daemon(mountpoint, lambda: os.setxattr(mountpoint, FLUSH_XATTR, b"1"))
    except OSError as error:
        # A read-only mount (-o ro) takes no xattr: nothing was written through it, and
        # what remotes changed goes out with the daemon's last flush at the unmount.
        if error.errno != errno.EROFS:
            raise
    with Display() as display:
        while pending_of(status):
            display.uploads(status)
            if all_stuck(status):
                break
            time.sleep(0.2)
            try:
                status = read_status(mountpoint)
            except DeadMount:  # killed while this waited
                return detach(mountpoint)
    result = subprocess.run(["fusermount3", "-u", str(mountpoint)], capture_output=True, text=True)
    if result.returncode != 0:
        raise CommandError(f"{mountpoint}: cannot unmount: "
                           f"{result.stderr.strip() or 'fusermount3 failed'}")
    wait_for_exit(mountpoint, status["pid"])
    cache = Path(status["cache"])
    if not (cache / "data.mdb").is_file():  # its disk gone: opening would make a new index
        print(f"onitufs: {cache}: the cache cannot be read any more; whether changes are still "
              "queued is unknown", file=sys.stderr)
        return 2
    index = Index(cache, 2**40, 0)
    try:
        configured = {remote["name"] for remote in status["remotes"] if "w" in remote["mode"]}
        queued = {name: n for name, n in index.queued().items() if name in configured}
    finally:
        index.close()
    if queued:
        # An offline remote's outage (its marker gone, say) before the last change's failure,
        # and that before the last call's (a read's).
        reasons = {remote["name"]: remote["reason"] if remote["state"] == "offline"
                   and remote["reason"] else remote.get("change_error") or remote["last_error"]
                   for remote in status["remotes"]}
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


def wait_for_exit(mountpoint: Path, pid: int) -> None:
    """Wait while the daemon finishes after the unmount (its last commits, the index closed
    and maybe compacted); one stopped meanwhile (Ctrl-Z, SIGSTOP) would finish only once
    continued, so that is said instead of waiting for ever."""
    while (state := process_state(pid)) not in (None, "Z"):
        if state in STOPPED:
            raise CommandError(f"{mountpoint}: unmounted, but its daemon (pid {pid}) is stopped "
                               f"before closing its cache: `kill -CONT {pid}` lets it finish")
        time.sleep(0.1)
