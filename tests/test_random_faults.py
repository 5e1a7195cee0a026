"""Random operations in the mount while one remote's disk fills up, turns read-only, is
unplugged and comes back, at random points between them; while an SSH server stops
answering, drops its sessions, goes down and comes back, and its disk fills; and while
Dropbox errs, throttles, hangs, goes offline, fills and expires its sessions and tokens.

The mount is compared with a plain folder (the model) as in test_random_ops. Nothing may land
in the folder an unplugged disk leaves empty. Once the faults end, every remote holds what the
model holds, with no upload's temp file left, and so does the mount after a remount. The seed
is printed; ONITUFS_SEED=N replays its operations and faults (not their timing),
ONITUFS_STEPS=N makes it longer.

In `make slow`, not `make test`: it still finds what is not mended yet in some runs (8 of
140 at the start of the 56th session; 2 of 116 after its fixes, one of those mended since),
each after the disk came and went within a second more than once in a row.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest

from onitufs.plug import TEMP_SUFFIX
from onitufs.testing.dropbox_api import FakeDropbox

from .conftest import Cloud, MakeCloud, fill, run, snapshot, tree
from .sshd import MakeSshCloud, Sshd, SshRemote, descendants
from .test_dropbox import with_dropbox
from .test_empty_remote import disk_at, plug_in, unplug, usb_disk
from .test_random_ops import Both, random_run
from .trees import DropboxAccount, Tree

pytest_plugins = ["tests.sshd"]

FAULT_CHANCE = 0.03  # per step: about 30 faults begun or ended in the default 1,000 steps


class Faults(Protocol):
    def toggle(self, rng: random.Random) -> str:
        """Begin or end one fault, chosen at random; what it did."""


class Disk:
    """The faults of a remote's disk (test_empty_remote.disk_at, plugged in): its `filler`
    beside the folder `files` fills it without showing on the remote."""

    def __init__(self, files: Path, remote: Path) -> None:
        self.files, self.remote = files, remote
        self.root = files.parent
        self.filler = self.root / "filler"
        self.plugged, self.full, self.read_only = True, False, False

    def plug_in(self) -> None:
        plug_in(self.files, self.remote)
        self.plugged = True

    def unplug(self) -> None:
        unplug(self.remote)
        self.plugged = False

    def fill(self) -> None:
        fill(self.filler)
        self.full = True

    def empty(self) -> None:
        self.filler.unlink()
        self.full = False

    def set_read_only(self, read_only: bool) -> None:
        """The whole disk read-only, or writable again. The kernel refuses it while the
        daemon has a file open there for writing: then the disk stays as it was."""
        option = "remount,ro" if read_only else "remount,rw"
        if subprocess.run(["mount", "-o", option, str(self.root)],
                          capture_output=True).returncode == 0:
            self.read_only = read_only
        if not read_only and self.plugged:  # plugged in while read-only, it took the flag
            subprocess.run(["mount", "-o", "remount,bind,rw", str(self.remote)], check=True)

    def toggle(self, rng: random.Random) -> str:
        """Begin or end one fault, chosen at random; what it did."""
        choices = ["unplug" if self.plugged else "plug in", "empty" if self.full else "fill",
                   "writable" if self.read_only else "read-only"]
        if self.read_only:
            choices.remove("empty" if self.full else "fill")  # a read-only disk keeps its filler
        kind = rng.choice(choices)
        if kind == "unplug":
            self.unplug()
        elif kind == "plug in":
            self.plug_in()
        elif kind == "fill":
            self.fill()
        elif kind == "empty":
            self.empty()
        else:
            self.set_read_only(kind == "read-only")
        return kind

    def mend(self) -> None:
        if self.read_only:
            self.set_read_only(False)
            assert not self.read_only, "the disk could not be made writable again"
        if self.full:
            self.empty()
        if not self.plugged:
            self.plug_in()


class Server:
    """The faults of an SSH server: it stops answering (it and its sessions stopped), drops
    every session, goes down and comes back; and its disk, beside the folder `files`, fills."""

    def __init__(self, sshd: Sshd, files: Path) -> None:
        self.sshd = sshd
        self.filler = files.parent / "filler"
        self.state = "up"  # or "stopped", "down"
        self.full = False
        self.stopped: list[int] = []

    def stop(self) -> None:
        assert self.sshd.process is not None
        self.stopped = [self.sshd.process.pid, *descendants(self.sshd.process.pid)]
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGSTOP)
        self.state = "stopped"

    def go_on(self) -> None:
        for pid in self.stopped:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        self.stopped = []
        self.state = "up"

    def drop_sessions(self) -> None:
        assert self.sshd.process is not None
        for pid in descendants(self.sshd.process.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)

    def toggle(self, rng: random.Random) -> str:
        """Begin or end one fault, chosen at random; what it did."""
        choices = ["empty" if self.full else "fill"] + {
            "up": ["stop", "drop sessions", "down"], "stopped": ["go on"], "down": ["up"]
        }[self.state]
        kind = rng.choice(choices)
        if kind == "stop":
            self.stop()
        elif kind == "go on":
            self.go_on()
        elif kind == "drop sessions":
            self.drop_sessions()
        elif kind == "down":
            self.sshd.stop()
            self.state = "down"
        elif kind == "up":
            self.sshd.start()
            self.state = "up"
        elif kind == "fill":
            fill(self.filler)
            self.full = True
        else:
            self.filler.unlink()
            self.full = False
        return kind

    def mend(self) -> None:
        if self.state == "stopped":
            self.go_on()
        elif self.state == "down":
            self.sshd.start()
            self.state = "up"
        if self.full:
            self.filler.unlink()
            self.full = False


class Account:
    """The faults of a Dropbox account: errors and rate limits for a few calls, calls left
    unanswered, the server offline, the account full, its upload sessions and access tokens
    expired, its cursors reset."""

    def __init__(self, fake: FakeDropbox) -> None:
        self.fake = fake
        self.hanging, self.offline, self.full = False, False, False

    def toggle(self, rng: random.Random) -> str:
        """Begin or end one fault, chosen at random; what it did."""
        kind = rng.choice(["errors", "answer" if self.hanging else "hang",
                           "online" if self.offline else "offline",
                           "room" if self.full else "fill", "expire", "reset cursors"])
        if kind == "errors":
            self.fake.fail("*", rng.choice([429, 500, 503]), times=rng.randint(1, 12))
        elif kind == "hang":
            self.fake.stop_answering()
        elif kind == "answer":
            self.fake.answer_again()
        elif kind == "offline":
            self.fake.go_offline()
        elif kind == "online":
            self.fake.go_online()
        elif kind == "fill":
            self.fake.set_quota(self.fake.used())
        elif kind == "room":
            self.fake.set_quota(None)
        elif kind == "expire":
            self.fake.expire_upload_sessions()
            self.fake.expire_access_tokens()
        else:
            self.fake.reset_cursors()
        if kind in ("hang", "answer"):
            self.hanging = kind == "hang"
        elif kind in ("offline", "online"):
            self.offline = kind == "offline"
        elif kind in ("fill", "room"):
            self.full = kind == "fill"
        return kind

    def mend(self) -> None:
        self.fake.set_quota(None)
        self.fake.go_online()
        self.fake.answer_again()
        self.hanging, self.offline, self.full = False, False, False


def remount(cloud: Cloud, where: str) -> None:
    """`onitufs umount`, which may leave changes queued for a remote away, and mount."""
    result = run("umount", cloud.mountpoint, check=False)
    assert result.returncode in (0, 2), f"{where}: {result.stderr}"
    cloud.wait_daemon_exit()
    cloud.mount()


def with_faults(cloud: Cloud, model: Path, seed: int, steps: int, faults: Faults,
                check: Callable[[str], None] = lambda where: None) -> list[str]:
    """Mount and take the random steps, a fault begun or ended at random points between
    them and a remount half way, the mount compared with the model as it goes and `check`
    called after each step; the faults, as done."""
    rng = random.Random(seed)
    cloud.mount()
    both = Both(cloud.mountpoint, model, random.Random(rng.randrange(2**32)))
    done: list[str] = []
    for number in range(steps):
        if rng.random() < FAULT_CHANCE:
            done.append(f"{number}: {faults.toggle(rng)}")
            time.sleep(rng.uniform(0, 0.6))  # for the daemon to meet it
        kind = both.step()
        where = f"seed {seed}, step {number}, faults {done[-4:]}, after {list(both.history)}"
        if number % 20 == 0 or kind in ("rename", "rmdir"):
            assert snapshot(cloud.mountpoint) == snapshot(model), where
        check(where)
        if number == steps // 2:  # a remount, maybe with the remote away or full
            remount(cloud, where)
            assert snapshot(cloud.mountpoint) == snapshot(model), f"{where}, remounted"
    print(f"faults: {done}")
    return done


def ends_as_the_model(cloud: Cloud, model: Path, seed: int, faults: list[str],
                      remotes: dict[str, Tree], leftovers: Callable[[], list[str]]) -> None:
    """Once the faults are mended: a new mount (a remote that kept failing is tried again
    after its backoff, up to 5 minutes; a new mount tries it at once) brings every remote
    to the model's tree, with no upload's temp file left, and so is the mount after a
    remount; no block was found damaged."""
    remount(cloud, f"seed {seed}, the faults ended")
    try:
        cloud.wait_synced(timeout=180)
    except AssertionError as error:
        holdings = {name: sorted(remote.snapshot()) for name, remote in remotes.items()}
        raise AssertionError(f"seed {seed}: {error}; the remotes hold {holdings}, "
                             f"status {cloud.status()['remotes']}") from None
    cloud.umount()
    expected = snapshot(model)
    for name, remote in remotes.items():
        assert remote.snapshot() == expected, f"seed {seed}: remote {name} differs ({faults})"
    assert leftovers() == [], f"seed {seed}: temp files left: {leftovers()}"
    cloud.mount()
    assert snapshot(cloud.mountpoint) == expected, f"seed {seed}: after the last remount"
    cloud.umount()
    assert "damaged" not in cloud.log, f"seed {seed}: a checksum did not match its block"


def temp_files(*folders: Path) -> list[str]:
    return [f"{folder}/{path}" for folder in folders for path in tree(folder)
            if path.endswith(TEMP_SUFFIX)]


@pytest.mark.slow
def test_random_operations_while_a_remote_disk_fills_turns_read_only_and_is_unplugged(
        make_cloud: MakeCloud, tmp_path: Path) -> None:
    # A cache that holds every file: while the disk is away, the cache keeps what it lacks,
    # and a smaller one would give writes ENOSPC, as it should (test_cache_bound), where the
    # model has none.
    seed, steps, cloud, model = random_run(make_cloud, tmp_path, "random faults",
                                           {"home": "rw", "usb": "rw"}, cache_size="16 MiB")
    with usb_disk(cloud, "usb", size="4m") as files:
        disk = Disk(files, cloud.remotes["usb"])

        def nothing_landed(where: str) -> None:
            if not disk.plugged:
                landed = sorted(tree(disk.remote))
                assert landed == [], f"{where}: written while unplugged: {landed}"

        faults = with_faults(cloud, model, seed, steps, disk, nothing_landed)
        disk.mend()
        ends_as_the_model(cloud, model, seed, faults,
                          {name: Tree(folder) for name, folder in cloud.remotes.items()},
                          lambda: temp_files(*cloud.remotes.values()))


@pytest.mark.slow
def test_random_operations_while_an_ssh_server_stops_drops_sessions_goes_down_and_fills(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd, tmp_path: Path) -> None:
    seed = int(os.environ.get("ONITUFS_SEED", random.randrange(2**32)))
    steps = int(os.environ.get("ONITUFS_STEPS", 1000))
    print(f"random SSH faults: ONITUFS_SEED={seed} ONITUFS_STEPS={steps}")
    cloud = make_ssh_cloud({"home": "rw"}, {"s": SshRemote(sshd)}, block_size="64 KiB",
                           cache_size="16 MiB", write_buffer="128 KiB", stall="3s")
    model = tmp_path / "model"
    model.mkdir()
    with disk_at(cloud.root / "disk", cloud.remotes["s"], size="4m") as files:
        server = Server(sshd, files)
        try:
            faults = with_faults(cloud, model, seed, steps, server)
        finally:
            server.mend()
        ends_as_the_model(cloud, model, seed, faults,
                          {name: Tree(folder) for name, folder in cloud.remotes.items()},
                          lambda: temp_files(*cloud.remotes.values()))


@pytest.mark.slow
def test_random_operations_while_dropbox_errs_hangs_goes_offline_fills_and_expires(
        make_cloud: MakeCloud, fake: FakeDropbox, tmp_path: Path) -> None:
    seed, steps, cloud, model = random_run(make_cloud, tmp_path, "random Dropbox faults",
                                           {"home": "rw"}, cache_size="16 MiB")
    cloud.settings["stall"] = "3s"
    cloud.write_config()
    with_dropbox(cloud, fake)
    account = Account(fake)
    try:
        faults = with_faults(cloud, model, seed, steps, account)
    finally:
        account.mend()
    home = cloud.remotes["home"]
    ends_as_the_model(cloud, model, seed, faults,
                      {"home": Tree(home), "dropbox": DropboxAccount(fake)},
                      lambda: temp_files(home) + [path for path in fake.tree()
                                                  if path.endswith(TEMP_SUFFIX)])
