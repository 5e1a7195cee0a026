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
from .progress import Display


def add_to(commands: Any) -> None:
    for name, text in (("fsck", "check and repair the index and the cache (not while mounted)"),
                       ("verify", "read back every remote's copies; re-upload damaged ones")):
        check = commands.add_parser(name, help=text)
        check.add_argument("config", type=Path)
        check.set_defaults(run=cmd_check, command=name)

def cmd_check(args: argparse.Namespace) -> int:
    import trio

    from ..check import Report, fsck, verify
    from ..daemon import Mount

    logging.basicConfig(level=logging.WARNING, format=LOG_FORMAT)
    try:
        # fsck checks the index file's structure even after a clean stop
        mount = Mount(load(args.config), None, always_check=args.command == "fsck")
    except (ConfigError, CacheError) as error:
        raise CommandError(str(error), status=8) from None  # fsck(8): an operational error

    def show(line: str) -> None:
        try:
            print(line, flush=True)
        except BrokenPipeError:  # the reader went away (`| head`): the check goes on
            quiet_stdout()

    with Display() as display:

        async def follow_uploads() -> None:
            while True:
                display.uploads(mount.status())
                await trio.sleep(0.2)

        async def job() -> Report:
            if display.shown:
                # the uploads, beside the check and through the flush that ends the run
                trio.lowlevel.spawn_system_task(follow_uploads)
            if args.command == "fsck":
                task = display.activity("fsck", "checking the index and every cached block")
                check = fsck(mount, show)
            else:
                task = display.activity("verify", "waiting for the remotes")
                check = verify(mount, show, lambda line: display.describe(task, line))
            try:
                return await check
            finally:
                display.finished(task)

        report, complete = mount.run_job(job)
    if args.command == "fsck":
        summary = (f"fsck: {report.checked} inodes checked, {len(report.problems)} problems, "
                   f"{report.repaired} repaired, {report.left} left")
    else:
        summary = (f"verify: {report.checked} copies read back, {len(report.problems)} damaged, "
                   f"{report.repaired} repaired, {report.unverified} with nothing to compare with")
    show(summary)
    if not complete:
        print("onitufs: some remotes could not be brought up to date; what they need stays "
              "queued for the next mount", file=sys.stderr)
    return report.exit_status(complete)
