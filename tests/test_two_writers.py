"""Two machines at work on one tree: random writes, appends, chmods, renames and deletes
through the mount while another program does the same straight in one remote's folder (a
second machine syncing there), as another client of a Dropbox remote, or through a second
mount that shares a remote's folder or a git-annex special remote. Each side also puts
folders where its files were, and files where its folders were.

Each side owns some names and both write, chmod, delete and rename a few shared ones.
After each round both stop and the tree must settle: the mount and every remote hold the
same tree with the same permission bits (where the remote keeps them), each side's own
names hold that side's last write, a shared name holds one of the two sides' last writes
(or nothing, where one's last was a delete; anything one side wrote, where a rename put
another shared file there), and every file (conflict copies too) holds content one side
wrote, whole; at the end the index passes `onitufs fsck`. Half way the mount is unmounted
while the other side goes on. The seed is printed; ONITUFS_SEED=N replays a run,
ONITUFS_ROUNDS=N makes it longer.
"""

from __future__ import annotations

import contextlib
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from onitufs.testing.dropbox_api import FakeDropbox

from .annex_programs import on_path
from .conftest import Cloud, MakeCloud, run
from .sshd import MakeSshCloud, Sshd, SshRemote
from .test_annex import rclone_table, with_remotes
from .test_dropbox import with_dropbox
from .trees import DropboxAccount, SyncedFolder, Tree

pytest_plugins = ["tests.sshd"]

OURS = ["m0", "m1", "d0/m2", "d1/m3"]
THEIRS = ["r0", "r1", "d0/r2", "d1/r3"]
SHARED = ["s0", "s1", "d0/s2"]
OPS_PER_ROUND = 25


class Contents:
    """Every content either side wrote, each tagged so that no two are alike; with
    `sized_apart`, no two of the same size either (SFTP tells versions apart by size and
    whole-second time only: a save of the same size in the same second goes unseen)."""

    def __init__(self, sized_apart: bool = False) -> None:
        self.lock = threading.Lock()
        self.count = 0
        self.all: set[bytes] = set()
        self.sized_apart = sized_apart
        self.sizes: set[int] = set()

    def new(self, rng: random.Random, side: str, name: str) -> bytes:
        with self.lock:
            self.count += 1
            content = f"#{self.count} {side} {name}\n".encode() + rng.randbytes(
                rng.choice([0, 100, 5000, 70000, 200000]))
            while self.sized_apart and len(content) in self.sizes:
                content += b"."
            self.add(content)
            return content

    def add(self, content: bytes) -> None:
        """(with the lock held)"""
        self.all.add(content)
        self.sizes.add(len(content))


@dataclass(frozen=True)
class Folder:
    """A folder a side made at one of its names, holding one file, `inner`."""
    inner: bytes


class Side:
    """One writer: its last write (None: deleted; a Folder) of each name it wrote."""

    def __init__(self, tree: Tree, name: str, own: list[str], contents: Contents,
                 rng: random.Random, chmods: bool = True) -> None:
        self.tree, self.name, self.own, self.contents, self.rng = tree, name, own, contents, rng
        # (one on an SSH server goes unseen: SFTP has no change time)
        self.chmods = chmods and tree.keeps_modes
        self.last: dict[str, bytes | Folder | None] = {}
        # This round's shared names: written or deleted (or renamed away), and renamed onto
        self.touched: set[str] = set()
        self.renamed_into: set[str] = set()
        self.error: BaseException | None = None

    def step(self) -> None:
        rng = self.rng
        name = rng.choice(self.own + SHARED)
        kind = rng.choice(["write", "write", "write", "append", "delete", "rename", "folder"]
                          + ["chmod"] * self.chmods)
        if kind == "chmod" and isinstance(self.last.get(name), Folder):
            self.tree.chmod(name, rng.choice([0o700, 0o750, 0o755]))
            kind = "done"
        elif name in self.own and isinstance(self.last.get(name), Folder):
            # A file where the folder was (written), or the folder gone (deleted).
            self.tree.remove_folder(name)
            self.last[name] = None
            kind = "write" if kind != "delete" else "done"
        if kind == "done":
            pass
        elif kind == "folder" and name in self.own:
            with contextlib.suppress(FileNotFoundError):
                self.tree.delete(name)
            content = self.contents.new(rng, self.name, f"{name}/inner")
            self.tree.make_folder(name)
            self.tree.write(f"{name}/inner", content)
            self.last[name] = Folder(content)
        elif kind == "folder":
            pass  # (not on shared names)
        elif kind == "chmod":
            with contextlib.suppress(FileNotFoundError):  # (a shared one the other deleted)
                self.tree.chmod(name, rng.choice([0o600, 0o640, 0o644, 0o755]))
        elif name in SHARED and kind in ("delete", "rename"):
            self.move_shared(name, kind)
        elif kind == "rename" and name in self.own and self.last.get(name) is not None:
            to = rng.choice([other for other in self.own if other != name])
            if isinstance(self.last.get(to), Folder):
                self.tree.remove_folder(to)
            self.tree.rename(name, to)
            self.last[to], self.last[name] = self.last[name], None
        elif name in SHARED or kind in ("write", "rename") or self.last.get(name) is None:
            self.touched.add(name)
            content = self.contents.new(rng, self.name, name)
            self.tree.write(name, content)
            self.last[name] = content
        elif kind == "append":
            old = self.last[name]
            assert isinstance(old, bytes)
            with self.contents.lock:
                extra = rng.randbytes(rng.randrange(1, 90000))
                while self.contents.sized_apart and len(old + extra) in self.contents.sizes:
                    extra += b"."
                self.contents.add(old + extra)
            self.tree.append(name, extra)
            self.last[name] = old + extra
        else:
            self.tree.delete(name)
            self.last[name] = None

    def move_shared(self, name: str, kind: str) -> None:
        """Delete or rename a shared name, which the other side may have just deleted."""
        to = self.rng.choice([other for other in SHARED if other != name])
        try:
            if kind == "delete":
                self.tree.delete(name)
            else:
                # (a Dropbox rename whose file went meanwhile may have deleted `to`)
                self.renamed_into.add(to)
                self.tree.rename(name, to)
        except FileNotFoundError:
            return
        self.touched.add(name)
        self.last[name] = None

    def run(self, steps: int) -> None:
        try:
            for _ in range(steps):
                self.step()
                time.sleep(self.rng.choice([0, 0, 0.01, 0.05, 0.2]))
        except BaseException as error:
            self.error = error


def settled(trees: list[Tree]) -> dict[str, tuple[str, bytes]] | None:
    """The one tree the mount and the remotes hold, with the same permission bits where they
    keep them, if they do. A read through the mount that finds the other side changed the
    file since it was opened fails (EIO) once: tried again."""
    try:
        first = trees[0].snapshot()
        if any(tree.snapshot() != first for tree in trees[1:]):
            return None
        bits = [tree.modes() for tree in trees if tree.keeps_modes]
        return first if all(mine == bits[0] for mine in bits[1:]) else None
    except OSError:
        return None


def differences(trees: list[Tree]) -> str:
    held = [tree.snapshot(errors=True) for tree in trees]
    lines = []
    with contextlib.suppress(OSError):
        bits = [tree.modes() for tree in trees if tree.keeps_modes]
        for name in sorted(set().union(*bits)):
            modes = [mine.get(name) for mine in bits]
            if any(mode != modes[0] for mode in modes):
                lines.append(f"  {name}: modes " + " | ".join(
                    "-" if mode is None else f"{mode:04o}" for mode in modes))
    for name in sorted(set().union(*held)):
        seen = [entries.get(name) for entries in held]
        if any(entry != seen[0] for entry in seen):
            lines.append(f"  {name}: " + " | ".join(
                "-" if entry is None else entry[1][:24 if entry[0] != "error" else None]
                .decode(errors="replace").strip().replace("\n", " ") for entry in seen))
    return "\n".join(lines)


def settle(cloud: Cloud, trees: list[Tree], where: str) -> dict[str, tuple[str, bytes]]:
    deadline = time.monotonic() + 90
    while (tree := settled(trees)) is None:
        if time.monotonic() > deadline:
            problems = [line for line in cloud.log.splitlines()
                        if " WARNING " in line or " ERROR " in line]
            raise AssertionError(f"{where}: the mount and the remotes differ "
                                 f"(mount | {' | '.join(t.root.name for t in trees[1:])}):\n"
                                 + differences(trees) + "\nthe log's warnings and errors:\n"
                                 + "\n".join(problems[-40:]))
        time.sleep(0.5)
    return tree


def test_two_machines_write_one_tree(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, block_size="64 KiB")
    two_machines(cloud, Contents(), SyncedFolder(cloud.remotes["a"]))


def test_two_machines_write_one_tree_through_an_ssh_server(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd) -> None:
    """The other machine saves in an SSH remote's folder on the server, where onitufs
    replaces and deletes files only after moving them aside to check them."""
    cloud = make_ssh_cloud({"b": "rw"}, {"a": SshRemote(sshd)}, block_size="64 KiB")
    two_machines(cloud, Contents(sized_apart=True), SyncedFolder(cloud.remotes["a"]),
                 chmods_there=False)


def test_two_machines_write_one_tree_through_dropbox(make_cloud: MakeCloud,
                                                     fake: FakeDropbox) -> None:
    """The other machine is another Dropbox client: it uploads whole files, and renames
    over a file by deleting it first."""
    cloud = with_dropbox(make_cloud({"b": "rw"}, block_size="64 KiB"), fake)
    two_machines(cloud, Contents(), DropboxAccount(fake))


def test_two_mounts_write_one_tree_through_a_folder_they_share(make_cloud: MakeCloud) -> None:
    """The other machine runs onitufs too: its mount has remote a's folder as a remote
    (and a folder of its own), and the other side writes through that mount."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, block_size="64 KiB")
    other = make_cloud({"a": "rw", "c": "rw"}, block_size="64 KiB")
    other.remotes["a"].rmdir()
    other.remotes["a"].symlink_to(cloud.remotes["a"])  # one folder, two machines
    other.mount()
    two_machines(cloud, Contents(), Tree(other.mountpoint))
    other.umount()


def test_two_mounts_write_one_tree_through_an_ssh_folder_they_share(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd) -> None:
    """Two machines running onitufs with one folder on an SSH server as a remote each."""
    cloud = make_ssh_cloud({"b": "rw"}, {"a": SshRemote(sshd)}, block_size="64 KiB")
    other = make_ssh_cloud({"c": "rw"}, {"a": SshRemote(sshd)}, block_size="64 KiB")
    other.remotes["a"].rmdir()
    other.remotes["a"].symlink_to(cloud.remotes["a"])
    other.mount()
    two_machines(cloud, Contents(sized_apart=True), Tree(other.mountpoint))
    other.umount()


def test_two_mounts_write_one_tree_through_an_annex_remote_they_share(
        make_cloud: MakeCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two machines running onitufs with one git-annex special remote (rclone's, on a local
    folder) as a remote each: a special remote cannot list, so each keeps the tree as a
    manifest there and merges the other's into its own."""
    on_path(tmp_path / "bin", monkeypatch)
    store = tmp_path / "store"
    cloud = with_remotes(make_cloud({"b": "rw"}, block_size="64 KiB"), rclone_table(store))
    other = with_remotes(make_cloud({"c": "rw"}, block_size="64 KiB"), rclone_table(store))
    other.mount()
    two_machines(cloud, Contents(), Tree(other.mountpoint))
    other.umount()


def two_machines(cloud: Cloud, contents: Contents, there: Tree,
                 chmods_there: bool = True) -> None:
    """The mount and a program in `there` (a remote's folder, or Dropbox) at work at once,
    in rounds."""
    seed = int(os.environ.get("ONITUFS_SEED", random.randrange(2**32)))
    rounds = int(os.environ.get("ONITUFS_ROUNDS", 6))
    print(f"two writers: ONITUFS_SEED={seed} ONITUFS_ROUNDS={rounds}")
    rng = random.Random(seed)
    ours = Side(Tree(cloud.mountpoint), "mount", OURS, contents, random.Random(rng.random()))
    theirs = Side(there, "remote", THEIRS, contents, random.Random(rng.random()),
                  chmods=chmods_there)
    folders = [Tree(root) for root in cloud.remotes.values()]
    trees = [ours.tree, *folders, *([there] if there.root not in cloud.remotes.values() else [])]
    both: list[Side] = [ours, theirs]
    cloud.mount()
    unknown: set[str] = set()
    for number in range(rounds):
        unmounted = number == rounds // 2
        sides = [theirs] if unmounted else both
        if unmounted:
            cloud.umount()
        for side in both:  # (a side left out this round touched nothing in it)
            side.touched.clear()
            side.renamed_into.clear()
        threads = [threading.Thread(target=side.run, args=(OPS_PER_ROUND,)) for side in sides]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for side in sides:
            assert side.error is None, f"seed {seed}, round {number}: {side.name}: {side.error!r}"
        if unmounted:
            cloud.mount()
        where = f"seed {seed}, round {number}"
        tree = settle(cloud, trees, where)
        for side in both:
            for name in side.own:
                if name in side.last:
                    want = side.last[name]
                    got = tree.get(name)
                    if isinstance(want, Folder):
                        below = {path: entry for path, entry in tree.items()
                                 if path.startswith(f"{name}/")}
                        assert got == ("dir", b"") \
                            and below == {f"{name}/inner": ("file", want.inner)}, \
                            f"{where}: {name} is not the {side.name}'s last folder"
                    else:
                        assert (got is None if want is None else got == ("file", want)), \
                            f"{where}: {name} is not the {side.name}'s last write"
        # A shared name a rename put another file onto holds that file until written again.
        unknown = (unknown - ours.touched - theirs.touched) | ours.renamed_into \
            | theirs.renamed_into
        for name in set(SHARED) - unknown:
            lasts = {side.last[name] for side in both if name in side.last}
            if lasts:
                got = tree.get(name)
                assert (None if got is None else got[1]) in lasts, \
                    f"{where}: {name} holds neither side's last write"
        for name, (kind, content) in tree.items():
            if kind == "file":
                assert content in contents.all, f"{where}: {name} holds content nobody wrote"
    cloud.umount()
    assert "damaged" not in cloud.log
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 0 and "0 problems" in result.stdout, \
        f"seed {seed}: {result.stdout}{result.stderr}"
