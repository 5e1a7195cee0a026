"""The programs a mount is used with, run through the kernel as a user runs them: git
(loose objects, packs, lock files renamed over, objects deleted by gc) and vim (its
write through a backup and a rename), each checked in the mount and then on every
remote, where the copies must be whole, not only present."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from .conftest import Cloud, snapshot


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "GIT_AUTHOR_NAME": "T",
                                              "GIT_AUTHOR_EMAIL": "t@example.com",
                                              "GIT_COMMITTER_NAME": "T",
                                              "GIT_COMMITTER_EMAIL": "t@example.com"})
    assert result.returncode == 0, f"git {' '.join(args)}: {result.stderr}"
    return result.stdout


def test_a_git_repository_worked_in_the_mount_is_whole_on_every_remote(cloud: Cloud) -> None:
    repo = cloud.mountpoint / "repo"
    git(cloud.mountpoint, "init", "-q", "-b", "main", "repo")
    for number in range(120):
        folder = repo / f"d{number % 7}"
        folder.mkdir(exist_ok=True)
        (folder / f"f{number}.txt").write_bytes(os.urandom(200 + 97 * number).hex().encode())
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "first")
    git(repo, "checkout", "-q", "-b", "side")
    for number in range(0, 120, 5):
        (repo / f"d{number % 7}" / f"f{number}.txt").write_text(f"side {number}\n")
    git(repo, "rm", "-q", "-r", "-f", "d3")
    git(repo, "commit", "-q", "-a", "-m", "side")
    git(repo, "checkout", "-q", "main")
    (repo / "d0" / "new.txt").write_text("on main\n")
    git(repo, "add", ".")
    git(repo, "commit", "-q", "-m", "main")
    git(repo, "merge", "-q", "--no-edit", "side")
    git(repo, "gc", "-q", "--aggressive", "--prune=now")  # loose objects packed, then deleted
    git(repo, "fsck", "--full", "--strict")
    head = git(repo, "rev-parse", "HEAD")
    shown = snapshot(repo)
    cloud.umount()  # every remote has everything
    for remote in cloud.remotes.values():
        copy = remote / "repo"
        assert snapshot(copy) == shown, remote
        git(copy, "fsck", "--full", "--strict")
        assert git(copy, "rev-parse", "HEAD") == head
        assert git(copy, "status", "--porcelain") == "", remote


def test_a_file_vim_writes_is_the_one_on_every_remote(cloud: Cloud) -> None:
    """vim writes through a backup (`backupcopy=no`: the old file renamed to `name~`, the
    new one written in its place) or over the file itself (`backupcopy=yes`)."""
    notes = cloud.mountpoint / "notes.txt"
    notes.write_text("first line\n")
    for backupcopy in ("no", "yes", "no"):
        subprocess.run(["vim", "-Nu", "NONE", "-es", "-c",
                        f"set backup backupskip= backupcopy={backupcopy}",
                        "-c", f"$put ='{backupcopy}'", "-c", "wq", str(notes)],
                       check=True, timeout=60, stdin=subprocess.DEVNULL)
    expected = "first line\nno\nyes\nno\n"
    assert notes.read_text() == expected
    assert (cloud.mountpoint / "notes.txt~").read_text() == "first line\nno\nyes\n"
    shown = snapshot(cloud.mountpoint)
    cloud.umount()
    for remote in cloud.remotes.values():
        assert snapshot(remote) == shown, remote
