"""`onitufs status`: what each remote of a mount is doing, as a table or as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from .common import human, read_status


def add_to(commands: Any) -> None:
    status = commands.add_parser("status", help="per remote: pending, in flight, done, failing")
    status.add_argument("mountpoint", type=Path)
    status.add_argument("--json", action="store_true", help="print the raw status as JSON")
    status.set_defaults(run=cmd_status)

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
