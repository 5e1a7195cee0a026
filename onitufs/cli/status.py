"""`onitufs status`: what each remote of a mount is doing, as a table or as JSON, once or
redrawn live (--watch)."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table
from rich.text import Text

from .common import CommandError, DeadMount, HungMount, human, read_status
from .progress import duration, rate

WATCH_INTERVAL = 1.0  # seconds between two redraws of --watch
STATE_STYLES = {"online": "green", "listing": "cyan", "failing": "yellow", "stalled": "red",
                "offline": "red"}


def add_to(commands: Any) -> None:
    status = commands.add_parser(
        "status", help="per remote: state, queued files and bytes, throughput, ETA")
    status.add_argument("mountpoint", type=Path)
    status.add_argument("--json", action="store_true",
                        help="print the status as JSON (schema in onitufs(1))")
    status.add_argument("-w", "--watch", action="store_true",
                        help="redraw it every second until Ctrl-C or the unmount "
                             "(with --json: one JSON object a line)")
    status.set_defaults(run=cmd_status)


class Stdout(Console):
    """Standard output, whose reader going away ends the command as it does elsewhere
    (see main), not with rich's exit status 1."""

    def on_broken_pipe(self) -> None:
        raise BrokenPipeError


def cmd_status(args: argparse.Namespace) -> int:
    status = read_status(args.mountpoint)
    terminal = sys.stdout.isatty()
    # Not on a terminal, lines are never cut nor wrapped: scripts read them whole.
    console = Stdout(highlight=False, width=None if terminal else 2**16)
    if not args.watch:
        show(console, status, args.json, one_line=False)
        return 0
    try:
        if terminal and not args.json:
            with Live(render(status), console=console, auto_refresh=False) as live:
                while True:
                    time.sleep(WATCH_INTERVAL)
                    live.update(render(still_mounted(args.mountpoint)), refresh=True)
        else:  # a snapshot after another: JSON Lines with --json
            while True:
                show(console, status, args.json, one_line=True)
                time.sleep(WATCH_INTERVAL)
                status = still_mounted(args.mountpoint)
    except KeyboardInterrupt:
        return 0
    except Unmounted:
        print(f"onitufs: {args.mountpoint}: unmounted", file=sys.stderr)
        return 0


class Unmounted(Exception):
    """The mount being watched went away, and not because its daemon died: unmounted."""


def still_mounted(mountpoint: Path) -> dict[str, Any]:
    try:
        return read_status(mountpoint)
    except (DeadMount, HungMount):
        raise
    except CommandError:
        raise Unmounted() from None


def show(console: Console, status: dict[str, Any], as_json: bool, one_line: bool) -> None:
    if as_json:
        print(json.dumps(status, indent=None if one_line else 2), flush=True)
    else:
        console.print(render(status))
        console.file.flush()


def render(status: dict[str, Any]) -> Group:
    """The status in lines: the mount, a row per remote (what fits in 80 columns), and
    for each remote that is not online or listing, a line that says why."""
    header = Text(f"{status['mountpoint']}  (pid {status['pid']}, cache "
                  f"{human(status['cache_bytes'])} of {human(status['cache_limit'])}, unsaved "
                  f"{human(status['unsaved_bytes'])})")
    table = Table(box=None, pad_edge=False, header_style="bold")
    for column in ("REMOTE", "DRIVER", "MODE", "STATE"):
        table.add_column(column, no_wrap=True)
    for column in ("QUEUED", "BYTES", "RATE", "ETA", "SENT"):
        table.add_column(column, justify="right", no_wrap=True)
    reasons = []
    for remote in status["remotes"]:
        state = remote["state"] + (f" x{remote['failures']}" if remote["state"] == "failing"
                                   else "")
        transfer = remote.get("transfer")
        if transfer and transfer["size"]:  # the driver's own transfer, past the last chunk
            state += f", {100 * transfer['done'] // transfer['size']}% sent"
        table.add_row(
            Text(remote["name"]), Text(remote["driver"]), remote["mode"],
            Text(state, style=STATE_STYLES.get(remote["state"], "")),
            str(remote["pending"]), human(remote["pending_bytes"]),
            rate(remote["bytes_per_second"]),
            duration(remote["eta_seconds"]) if remote["pending"] else "-",
            human(remote["bytes_sent"]))
        if remote["reason"]:
            reasons.append(Text(f"{remote['name']}: {remote['reason']}"))
    return Group(header, table, *reasons)
