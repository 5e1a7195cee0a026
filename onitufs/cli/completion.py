"""`onitufs completion bash|zsh`: the shell's completion script, made by shtab from the
command's own argument parser, so that it knows every subcommand and option there is.

What an argument completes to follows from its name, for every subcommand alike: a
MOUNTPOINT to the running onitufs mounts (`onitufs mount` takes any folder), a CONFIG to
*.toml files, any other path to files.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import shtab

# The mount points of running onitufs mounts (type fuse.onitufs in /proc/self/mountinfo,
# whose fields escape a space, a tab and a backslash in octal) that start with the word
# being completed: relative to the current folder for those below it, unless the word is
# an absolute path. shtab quotes the results as file names for a function named *_dirs.
BASH_MOUNTS = r"""
# $1: the word being completed
_onitufs_mounted_dirs() {
  local line point
  local -a fields
  while IFS= read -r line; do
    [[ ${line#* - } == 'fuse.onitufs '* ]] || continue
    read -ra fields <<< "${line%% - *}"
    point=${fields[4]//\\040/ }
    point=${point//\\011/$'\t'}
    point=${point//\\134/\\}
    if [[ $1 != /* && $point == "$PWD"/* ]]; then
      point=${point#"$PWD"/}
    elif [[ -n $1 && $1 != /* ]]; then
      continue
    fi
    [[ $point == "$1"* ]] && printf '%s\n' "$point"
  done < /proc/self/mountinfo
}
"""
ZSH_MOUNTS = r"""
_onitufs_mounted_dirs() {
  local line point expl
  local -a fields points
  while IFS= read -r line; do
    [[ ${line#* - } == 'fuse.onitufs '* ]] || continue
    fields=(${=${line%% - *}})
    point=${fields[5]//\\040/ }
    point=${point//\\011/$'\t'}
    point=${point//\\134/\\}
    points+=("$point")
    [[ $point == $PWD/* ]] && points+=("${point#$PWD/}")
  done < /proc/self/mountinfo
  _wanted directories expl 'onitufs mount point' compadd -f -a points
}
"""
MOUNTS: shtab.CompleteType = {"bash": "_onitufs_mounted_dirs", "zsh": "_onitufs_mounted_dirs",
          "preamble": {"bash": BASH_MOUNTS, "zsh": ZSH_MOUNTS}}
SHELLS = ("bash", "zsh")


def add_to(commands: Any) -> None:
    completion = commands.add_parser(
        "completion", help="print the completion script of bash or zsh for onitufs")
    completion.add_argument("shell", choices=SHELLS)
    completion.set_defaults(run=cmd_completion)


def cmd_completion(args: argparse.Namespace) -> int:
    from . import build_parser

    print(script(build_parser(), args.shell), end="")
    return 0


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    for command, subparser in subcommands(parser).items():
        for action in subparser._actions:
            complete = completes_to(command, action)
            if complete is not None:
                setattr(action, "complete", complete)  # noqa: B010 (what shtab reads)
    return shtab.complete(parser, shell)


def completes_to(command: str, action: argparse.Action) -> shtab.CompleteType | None:
    if action.dest == "mountpoint":
        return shtab.DIRECTORY if command == "mount" else MOUNTS
    if action.dest == "config":
        return shtab.glob("*.toml")
    if action.type is Path:
        return shtab.FILE
    return None


def subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return {name: subparser for action in parser._actions
            if isinstance(action, argparse._SubParsersAction)
            for name, subparser in action.choices.items()}
