"""`onitufs auth CONFIG REMOTE`: authorize onitufs at a remote's service, and keep the token.

The command is the same for every driver: it finds the remote and calls its
driver's auth(options, ask), which starts the service's authorization (for
Dropbox: shows the URL to open), asks through ask() for what the user got
there (the code), and stores the token where the remote's table says. The
answer is read from standard input, terminal or not, so `echo CODE | onitufs
auth ...` works; end of input is an empty answer.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .common import remote_hook


def add_to(commands: Any) -> None:
    auth = commands.add_parser(
        "auth", help="authorize onitufs at a remote's service (Dropbox) and store its token")
    auth.add_argument("config", type=Path)
    auth.add_argument("remote")
    auth.set_defaults(run=cmd_auth)


def cmd_auth(args: argparse.Namespace) -> int:
    hook, options = remote_hook(args.config, args.remote, "auth", "needs no authorization")
    print(hook(options, ask))
    return 0


def ask(question: str) -> str:
    """Show the question on standard error and read one line of standard input."""
    print(question, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not sys.stdin.isatty():
        print(file=sys.stderr)  # end the question's line, as the terminal's Enter would
    return answer.strip()
