"""Progress of long operations (umount's flush, fsck, verify, a mount's first listings),
drawn with rich on standard error while that is a terminal, and nothing at all when it is
not: a log, a pipe or a script sees only what the command prints anyway."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TextColumn
from rich.table import Column

from .common import human, read_status

LISTING_POLL = 0.2  # seconds between two looks at a mount's status while it lists


def rate(bytes_per_second: int) -> str:
    return f"{human(bytes_per_second)}/s" if bytes_per_second else "-"


def duration(seconds: int | None) -> str:
    """An ETA in words: H:MM:SS or M:SS, "?" when it cannot be told (nothing moves)."""
    if seconds is None:
        return "?"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02}:{rest % 60:02}" if hours else f"{rest // 60}:{rest % 60:02}"


class Display:
    """One live display: a line per activity (a spinner and what is being done) and a bar
    per writable remote for the uploads."""

    def __init__(self) -> None:
        self.shown = sys.stderr.isatty()
        # The detail takes the width left and is cut short; the other columns are never
        # squeezed (rich would squeeze the bar away first).
        self.progress = Progress(
            SpinnerColumn(table_column=Column(no_wrap=True)),
            TextColumn("{task.description}", markup=False, table_column=Column(no_wrap=True)),
            BarColumn(bar_width=20, table_column=Column(no_wrap=True)),
            TextColumn("{task.fields[detail]}", markup=False,
                       table_column=Column(no_wrap=True, overflow="ellipsis", ratio=1)),
            console=Console(stderr=True, highlight=False), transient=True, expand=True,
            # Lines printed meanwhile go above the display, where both go to the terminal.
            redirect_stdout=sys.stdout.isatty(), disable=not self.shown)
        self._remotes: dict[str, TaskID] = {}
        self._sent_before: dict[str, int] = {}  # bytes each remote had sent when shown first

    def __enter__(self) -> Display:
        self.progress.start()
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        self.progress.stop()

    def activity(self, description: str, detail: str = "") -> TaskID:
        """A line for something of unknown length: a spinner and a pulsing bar."""
        return self.progress.add_task(description, total=None, detail=detail)

    def describe(self, task: TaskID, detail: str) -> None:
        self.progress.update(task, detail=detail)

    def finished(self, task: TaskID) -> None:
        self.progress.remove_task(task)

    def uploads(self, status: dict[str, Any]) -> None:
        """Show a status (see onitufs(1), status): per writable remote that had work queued
        while shown, the bytes sent since the display began, of those and the bytes still
        queued, with the files left, the rate, the ETA, and why it gets nowhere when it
        does not."""
        for remote in status["remotes"]:
            name = remote["name"]
            if "w" not in remote["mode"] or not (remote["pending"] or name in self._remotes):
                continue
            sent = remote["bytes_sent"] - self._sent_before.setdefault(name, remote["bytes_sent"])
            queued = remote["pending_bytes"]
            if not remote["pending"]:
                detail = f"{human(sent)} sent, up to date"
            elif remote["state"] in ("online", "listing"):
                detail = (f"{human(sent)} of {human(sent + queued)}, {files(remote['pending'])} "
                          f"left  {rate(remote['bytes_per_second'])}  "
                          f"ETA {duration(remote['eta_seconds'])}")
            else:
                detail = f"{files(remote['pending'])} left; {remote['state']}: {remote['reason']}"
            total: int | None
            if not remote["pending"]:
                total = completed = 1  # a full bar
            elif not queued:
                total, completed = None, 0  # only changes without bytes (moves, deletes): a pulse
            else:
                total, completed = sent + queued, sent
            task = self._remotes.get(name)
            if task is None:
                self._remotes[name] = self.progress.add_task(
                    name, total=total, completed=completed, detail=detail)
            else:
                self.progress.update(task, total=total, completed=completed, detail=detail)


def files(count: int) -> str:
    return f"{count} file" if count == 1 else f"{count} files"


def follow_listing(mountpoint: Path) -> None:
    """After a mount, on a terminal: a line per remote whose first listing has not come
    yet, until each has come or the remote is found unreachable. Ctrl-C stops waiting
    (the mount stays, and listing goes on)."""
    with Display() as display:
        if not display.shown:
            return
        tasks: dict[str, TaskID] = {}
        began = time.monotonic()
        try:
            while True:
                listing = {remote["name"] for remote in read_status(mountpoint)["remotes"]
                           if remote["state"] == "listing"}
                if not listing:
                    return
                for name in listing - tasks.keys():
                    tasks[name] = display.activity(name)
                for name in tasks.keys() - listing:
                    display.finished(tasks.pop(name))
                for task in tasks.values():
                    display.describe(task, f"listing, for {time.monotonic() - began:.0f} s")
                time.sleep(LISTING_POLL)
        except KeyboardInterrupt:
            return
