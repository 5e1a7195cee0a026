"""`onitufs fsck` and `onitufs verify`: the checks of onitufs.check, with progress on a
terminal and an exit status as fsck(8) gives."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Any

from ..config import ConfigError, load
from ..index import CacheError
from .common import LOG_FORMAT, CommandError, quiet_stdout


def add_to(commands: Any) -> None:
    for name, text in (("fsck", "check and repair the index and the cache (not while mounted)"),
                       ("verify", "read back every remote's copies; re-upload damaged ones")):
        check = commands.add_parser(name, help=text)
        check.add_argument("config", type=Path)
        check.set_defaults(run=cmd_check, command=name)

def cmd_check(args: argparse.Namespace) -> int:
    from ..check import fsck, verify
    from ..daemon import Mount

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
