"""kill -9 of the daemon at random points: nothing closed or fsynced before it is lost, and
the mount and the remotes converge on one version of every file; SQLite, a program that
counts on its fsyncs, keeps every transaction it committed."""

from __future__ import annotations

import os
import random
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from onitufs.testing.dropbox_api import FakeDropbox

from .annex_programs import on_path
from .conftest import Cloud, MakeCloud, snapshot, wait_for
from .sshd import MakeSshCloud, Sshd, SshRemote
from .test_annex import files_of, fresh_machine, rclone_table, with_remotes
from .test_dropbox import with_dropbox
from .test_mount import RENAME_EXCHANGE, renameat2
from .trees import DropboxAccount, Tree

pytest_plugins = ["tests.sshd"]

ROUNDS = 6


class Writer:
    """Changes files until the mount dies: new files, rewrites through O_TRUNC, cuts, saves
    by rename over a file, and swaps of two files (RENAME_EXCHANGE, which steps one aside
    on each remote). `done` holds each file's content once the change is acknowledged
    (closed, or truncate or rename returned); `unsure` the files a change was under way on
    when the mount died, which may hold either version."""

    def __init__(self, root: Path, rng: random.Random, known: dict[str, bytes]) -> None:
        self.root, self.rng = root, rng
        self.done: dict[str, bytes] = {}
        self.known = dict(known)  # what each file holds, for choosing what to change
        self.unsure: list[str] = []

    def run(self, stop: threading.Event) -> None:
        number = 0
        while not stop.is_set():
            kinds = ["new", "new", "trunc", "cut", "rename"] + (["swap"] if len(self.known) > 1
                                                                 else [])
            kind = self.rng.choice(kinds) if self.known else "new"
            name = f"r{self.rng.randrange(10**9)}-{number}" if kind == "new" \
                else self.rng.choice(sorted(self.known))
            data = self.rng.randbytes(self.rng.choice([10, 5000, 300_000, 2_500_000]))
            self.unsure = [name, f"{name}.tmp"]
            try:
                if kind == "swap":
                    other = self.rng.choice(sorted(set(self.known) - {name}))
                    self.unsure.append(other)
                    renameat2(self.root / name, self.root / other, RENAME_EXCHANGE)
                    changed = {name: self.known[other], other: self.known[name]}
                elif kind == "cut":
                    changed = {name: self.known[name][:self.rng.randrange(
                        len(self.known[name]) + 1)]}
                    os.truncate(self.root / name, len(changed[name]))
                elif kind == "rename":
                    self._write(f"{name}.tmp", data, os.O_CREAT | os.O_EXCL)
                    os.rename(self.root / f"{name}.tmp", self.root / name)
                    changed = {name: data}
                else:
                    self._write(name, data, os.O_CREAT | (os.O_EXCL if kind == "new" else
                                                          os.O_TRUNC), fsync=number % 3 == 0)
                    changed = {name: data}
            except OSError:
                return  # the daemon is gone
            self.done.update(changed)
            self.known.update(changed)
            self.unsure = []
            number += 1

    def _write(self, name: str, data: bytes, flags: int, fsync: bool = False) -> None:
        fd = os.open(self.root / name, os.O_WRONLY | flags, 0o644)
        try:
            os.write(fd, data)
            if fsync:
                os.fsync(fd)
        finally:
            os.close(fd)


def test_kill9_at_random_points(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, block_size="256 KiB", upload_delay="0.05s")
    kill9_rounds(cloud, [Tree(root) for root in cloud.remotes.values()])


def test_kill9_at_random_points_with_ssh_and_dropbox_remotes(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd, fake: FakeDropbox) -> None:
    """The same beside an SSH server and Dropbox, whose uploads resume from what the server
    holds and from an upload session."""
    cloud = with_dropbox(make_ssh_cloud({"a": "rw"}, {"s": SshRemote(sshd)},
                                        block_size="256 KiB", upload_delay="0.05s"), fake)
    kill9_rounds(cloud, [*(Tree(root) for root in cloud.remotes.values()),
                         DropboxAccount(fake)])


def test_kill9_at_random_points_with_an_annex_remote(
        make_cloud: MakeCloud, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The same beside a git-annex special remote (rclone's), whose uploads go through a
    spool and whose tree is a manifest stored there: a new machine with that remote alone
    then shows what the mount shows."""
    on_path(tmp_path / "bin", monkeypatch)
    store = tmp_path / "store"
    cloud = with_remotes(make_cloud({"a": "rw"}, block_size="256 KiB", upload_delay="0.05s"),
                         rclone_table(store))
    mounted = kill9_rounds(cloud, [Tree(root) for root in cloud.remotes.values()])
    fresh = fresh_machine(make_cloud, rclone_table(store))
    wait_for(lambda: files_of(fresh.mountpoint) == mounted, timeout=60,
             what="the annex remote's tree on a new machine")
    fresh.umount()


def kill9_rounds(cloud: Cloud, remotes: list[Tree]) -> dict[str, tuple[str, bytes]]:
    """Rounds of writes cut by a kill -9; what the mount holds once all converged."""
    seed = int(os.environ.get("ONITUFS_SEED", random.randrange(2**32)))
    print(f"kill -9 rounds: ONITUFS_SEED={seed}")
    rng = random.Random(seed)
    survivors: dict[str, bytes] = {}
    for round_number in range(ROUNDS):
        cloud.mount()
        for name, data in survivors.items():
            assert (cloud.mountpoint / name).read_bytes() == data, f"seed {seed}: {name} lost"
        writer = Writer(cloud.mountpoint, random.Random(rng.random()), survivors)
        stop = threading.Event()
        thread = threading.Thread(target=writer.run, args=(stop,))
        thread.start()
        time.sleep(rng.uniform(0.2, 1.5))
        cloud.kill9()
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()
        survivors.update(writer.done)
        for name in writer.unsure:  # either version; neither is checked
            survivors.pop(name, None)
        print(f"round {round_number}: {len(writer.done)} changes acknowledged before the kill")
    cloud.mount()
    cloud.wait_synced(timeout=120)
    mounted = snapshot(cloud.mountpoint)
    for name, data in survivors.items():
        assert mounted[name] == ("file", data), f"seed {seed}: {name} lost or changed"
    cloud.umount()
    for remote in remotes:
        assert remote.snapshot() == mounted, f"seed {seed}: {remote.root} did not converge"
    return mounted


SQLITE_WRITER = """
import sqlite3, sys
path, mode, log = sys.argv[1:]
db = sqlite3.connect(path, isolation_level=None)
db.execute(f"PRAGMA journal_mode={mode}")
db.execute("PRAGMA synchronous=FULL")
db.execute("CREATE TABLE IF NOT EXISTS t(n INTEGER, v TEXT)")
n = 0
with open(log, "a", buffering=1) as out:
    while True:
        db.execute("BEGIN")
        db.executemany("INSERT INTO t VALUES (?, ?)", [(n, f"{n}-{i}" * 40) for i in range(10)])
        db.execute("COMMIT")  # returns once its fsyncs did: acknowledged
        n += 1
        out.write(f"{n}\\n")
"""


def test_sqlite_keeps_every_transaction_committed_before_a_kill9(make_cloud: MakeCloud,
                                                                 tmp_path: Path) -> None:
    """A real program's acknowledged writes: SQLite commits with fsync (of its journal,
    its database, its folder; in WAL mode with its -shm file mapped shared), in both
    journal modes at once, until the daemon is killed. After a remount each database
    passes SQLite's own check and holds every transaction whose COMMIT returned."""
    def committed(mode: str) -> int:
        log = tmp_path / f"{mode}.log"
        return int(log.read_text().split()[-1]) if log.exists() and log.stat().st_size else 0

    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    writers = {}
    for mode in ("wal", "delete"):
        writers[mode] = subprocess.Popen(
            [sys.executable, "-c", SQLITE_WRITER, str(cloud.mountpoint / f"{mode}.db"), mode,
             str(tmp_path / f"{mode}.log")], stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: all(committed(mode) >= 50 for mode in writers), timeout=60,
                 what="50 transactions committed in each database")
        cloud.kill9()
        for writer in writers.values():
            writer.wait(timeout=30)  # its next commit fails (the mount is gone)
    finally:
        for writer in writers.values():
            writer.kill()
            writer.wait()
    cloud.mount()  # over the dead daemon's mount, which it clears
    for mode in writers:
        db = sqlite3.connect(cloud.mountpoint / f"{mode}.db")
        try:
            assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",), mode
            kept, rows = db.execute("SELECT COUNT(DISTINCT n), COUNT(*) FROM t").fetchone()
        finally:
            db.close()
        # the transaction under way at the kill may have landed too, never half of one
        assert kept in (committed(mode), committed(mode) + 1) and rows == 10 * kept, \
            (mode, committed(mode), kept)
    cloud.wait_synced()
    mounted = snapshot(cloud.mountpoint)
    cloud.umount()
    for remote_name, remote in cloud.remotes.items():
        assert snapshot(remote) == mounted, f"remote {remote_name} did not converge"
