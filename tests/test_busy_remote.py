"""A local remote whose tree changes while it is listed stays online (a build, git gc),
and once the changes stop, every copy holds what that remote holds.

The churn deletes folders and makes them again many times a second: the file system
gives new folders and files the numbers of those just deleted, files show empty
between their creation and their write, and onitufs copies each version to the other
remote while the next replaces it. The seed of the random rounds is printed;
ONITUFS_SEED=N replays a run, ONITUFS_ROUNDS=N makes it longer.
"""

from __future__ import annotations

import functools
import os
import random
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path

from .conftest import Cloud, MakeCloud, snapshot, tree, wait_for


def churn_for(seconds: float, step: Callable[[int], None]) -> None:
    """Run step(0), step(1), ... on a thread of its own for `seconds`."""
    stop = threading.Event()

    def churn() -> None:
        number = 0
        while not stop.is_set():
            step(number)
            number += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        time.sleep(seconds)
    finally:
        stop.set()
        worker.join()


def made_and_deleted(root: Path, folders: int, files: int, size: Callable[[], int],
                     pause: float = 0.0) -> Callable[[int], None]:
    """A churn's step: a folder of `files` files made in one of `folders` folders (each
    `size()` bytes), then, after `pause`, deleted (what git gc does to .git/objects)."""
    def step(turn: int) -> None:
        folder = root / f"pack{turn % folders}"
        (folder / "sub").mkdir(parents=True, exist_ok=True)
        for index in range(files):
            (folder / "sub" / f"o{index}").write_bytes(b"x" * size())
        time.sleep(pause)
        shutil.rmtree(folder, ignore_errors=True)
    return step


def settle(cloud: Cloud, what: str) -> None:
    """Wait until no churned folder is left in the mount (slow on a busy machine); say
    what every copy holds if one stays."""
    try:
        wait_for(lambda: not any(p.name.startswith("pack") for p in cloud.mountpoint.iterdir()),
                 timeout=60, what=what)
    except AssertionError as error:
        raise AssertionError(f"{error}: mount {sorted(tree(cloud.mountpoint))}, "
                             f"a {sorted(tree(cloud.remotes['a']))}, "
                             f"b {sorted(tree(cloud.remotes['b']))}\n{cloud.log[-6000:]}") from None


def test_folders_going_during_listings_do_not_take_the_remote_offline(
        make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, poll_interval="0.02s")
    cloud.mount()
    (cloud.mountpoint / "kept.txt").write_bytes(b"kept")
    cloud.wait_synced()

    churn_for(4, made_and_deleted(cloud.remotes["a"], folders=3, files=20, size=lambda: 1))
    assert "cannot list" not in cloud.log, cloud.log[-3000:]
    assert all(remote["online"] for remote in cloud.status()["remotes"])
    settle(cloud, "the churn to settle in the mount")
    cloud.umount()


def test_rounds_of_folders_made_and_deleted_on_a_remote_leave_every_copy_as_that_remote(
        make_cloud: MakeCloud) -> None:
    """Each round churns with other counts of folders and files, sizes and pauses; once it
    stops, nothing of it is left anywhere: no folder made again on the remote it was
    deleted from, no conflict copy of a version only that remote ever wrote."""
    seed = int(os.environ.get("ONITUFS_SEED", random.randrange(2**32)))
    rounds = int(os.environ.get("ONITUFS_ROUNDS", 4))
    print(f"busy remote: ONITUFS_SEED={seed} ONITUFS_ROUNDS={rounds}")
    rng = random.Random(seed)
    cloud = make_cloud({"a": "rw", "b": "rw"}, poll_interval="0.02s")
    cloud.mount()
    (cloud.mountpoint / "kept.txt").write_bytes(b"kept")
    cloud.wait_synced()
    for number in range(rounds):
        sizes = random.Random(rng.random())
        step = made_and_deleted(cloud.remotes["a"], folders=rng.choice([1, 2, 3]),
                                files=rng.choice([1, 3, 20]),
                                size=functools.partial(sizes.choice, [1, 1, 2]),
                                pause=rng.choice([0.0, 0.0, 0.001, 0.01]))
        churn_for(rng.uniform(0.5, 3), step)
        settle(cloud, f"round {number} (ONITUFS_SEED={seed}) to settle in the mount")
    assert "changed both" not in cloud.log, cloud.log[-6000:]  # no version kept apart
    cloud.umount()
    assert snapshot(cloud.remotes["a"]) == snapshot(cloud.remotes["b"]) == {
        "kept.txt": ("file", b"kept")}
