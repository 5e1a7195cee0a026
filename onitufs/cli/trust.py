"""`onitufs trust CONFIG REMOTE`: accept a remote's host key, as ssh asks at a first connection.

The command is the same for every driver: it finds the remote and calls its
driver's trust(options, confirm), which connects, shows what it found and
asks through confirm(). Never automatic: only an answer of yes trusts. The
answer is read from standard input, terminal or not, so `echo yes | onitufs
trust ...` works (where ssh would insist on a terminal); end of input is no.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from .common import remote_hook


def add_to(commands: Any) -> None:
    trust = commands.add_parser(
        "trust", help="show a remote's host key and trust it if you answer yes")
    trust.add_argument("config", type=Path)
    trust.add_argument("remote")
    trust.set_defaults(run=cmd_trust)


def cmd_trust(args: argparse.Namespace) -> int:
    hook, options = remote_hook(args.config, args.remote, "trust", "has no host key to trust")
    print(hook(options, confirm))
    return 0


def confirm(question: str) -> bool:
    """Ask on standard error and read one line of standard input: yes (in any case, as ssh
    takes it) is yes; anything else, or the end of input, is no."""
    print(question, end="", file=sys.stderr, flush=True)
    answer = sys.stdin.readline()
    if not sys.stdin.isatty():
        print(answer.rstrip("\n"), file=sys.stderr)  # the answer as a terminal would echo it
    return answer.strip().lower() == "yes"
