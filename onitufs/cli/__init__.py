"""The `onitufs` command: mount, umount, status, fsck and verify, one module each.

`onitufs mount` starts the daemon in the background and returns once the
mount is ready, or prints the one line that says why it is not. The daemon
is a fork of it that goes on as -f would, with a pipe to report readiness on.

For an fstab line of type fuse.onitufs, mount(8) runs mount.fuse3, which runs
`onitufs CONFIG MOUNTPOINT -o OPTIONS`: that is read as `onitufs mount`.
"""

from __future__ import annotations

import argparse
import signal
import sys

from .. import __version__
from ..config import ConfigError
from ..index import CacheError
from . import auth, check, completion, mount, status, trust, umount
from .common import CommandError, quiet_stdout


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
    args = parser.parse_args(as_mount_helper(sys.argv[1:] if argv is None else argv))
    try:
        status: int = args.run(args)
    except (CommandError, ConfigError, CacheError) as error:
        print(f"onitufs: {error}", file=sys.stderr)
        return error.status if isinstance(error, CommandError) else 1
    except KeyboardInterrupt:
        return 130
    return status


def as_mount_helper(argv: list[str]) -> list[str]:
    """`onitufs CONFIG MOUNTPOINT [-o OPTIONS]`, as mount.fuse3 runs it, as the `onitufs
    mount` command line it means. A CONFIG is told from a command by its '/' or '.toml'."""
    if len(argv) >= 2 and ("/" in argv[0] or argv[0].endswith(".toml")):
        return ["mount", *argv[2:], argv[1], argv[0]]
    return argv


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="onitufs", description="Keep one folder on many storage services at once.")
    parser.add_argument("--version", action="version", version=f"onitufs {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")
    for command in (mount, umount, status, check, trust, auth, completion):
        command.add_to(commands)
    return parser
