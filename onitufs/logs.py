"""Where a mount's log goes: standard error in the foreground, a size-bound file for the
daemon that `onitufs mount` starts, and the systemd journal wherever one runs.

The journal gets each line once: under a systemd unit standard error already is the
journal (JOURNAL_STREAM says so), and there the lines carry their priority as a "<N>"
prefix instead of going to the journal a second way.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import sys
from io import TextIOWrapper
from pathlib import Path

LEVELS = ("debug", "info", "warning", "error")
MAX_BYTES = 10 * 1024**2  # the log file is rotated at this size...
BACKUPS = 3  # ...keeping this many old ones: onitufs.log.1 (the newest) to .3
JOURNAL_SOCKET = Path("/run/systemd/journal/socket")
# sd-daemon(3): a line that starts with <N> goes to the journal at syslog priority N.
_PRIORITIES = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3,
               logging.CRITICAL: 2}


def setup(level: str, log_file: Path | None, line_format: str) -> None:
    """Log at `level` to `log_file` when given (the background daemon), otherwise to
    standard error, in `line_format`; and to the journal where there is one and it gets
    nothing yet."""
    handlers: list[logging.Handler] = []
    if log_file is not None:
        handlers.append(DaemonLog(log_file))
    elif stderr_is_journal():
        stream = logging.StreamHandler(sys.stderr)
        stream.setFormatter(PriorityPrefix())
        handlers.append(stream)
    else:
        handlers.append(logging.StreamHandler(sys.stderr))
    if not stderr_is_journal() and (journal := journal_handler()) is not None:
        handlers.append(journal)
    logging.basicConfig(level=level.upper(), format=line_format, handlers=handlers)


class DaemonLog(logging.handlers.RotatingFileHandler):
    """The daemon's log file, rotated at MAX_BYTES. Standard output and error follow the
    current file, so that what is printed rather than logged (a traceback, libfuse's own
    messages) lands in it, never in a rotated file that would go on growing unseen."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, maxBytes=MAX_BYTES, backupCount=BACKUPS, encoding="utf-8")

    def _open(self) -> TextIOWrapper:
        stream = super()._open()
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(stream.fileno(), sys.stdout.fileno())
        os.dup2(stream.fileno(), sys.stderr.fileno())
        return stream


class PriorityPrefix(logging.Formatter):
    """A line for the journal through standard error: its priority, no time (the journal
    keeps its own)."""

    def __init__(self) -> None:
        super().__init__("%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        return f"<{_PRIORITIES.get(record.levelno, 6)}>{super().format(record)}"


def stderr_is_journal() -> bool:
    """True when standard error is a stream to journald (systemd.exec(5), JOURNAL_STREAM)."""
    device, _, inode = os.environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(sys.stderr.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError):
        return False


def journal_handler() -> logging.Handler | None:
    """systemd's own handler (the `journal` extra, systemd-python) when it is installed and
    journald runs here; None otherwise."""
    if not JOURNAL_SOCKET.exists():
        return None
    try:
        from systemd.journal import (  # type: ignore[import-untyped,import-not-found,unused-ignore]
            JournalHandler,
        )
    except ImportError:
        return None
    handler: logging.Handler = JournalHandler(SYSLOG_IDENTIFIER="onitufs")
    handler.setFormatter(logging.Formatter("%(message)s"))  # the journal has the rest as fields
    return handler
