"""A local remote whose tree changes while it is listed stays online (a build, git gc)."""

from __future__ import annotations

import shutil
import threading
import time

from .conftest import MakeCloud, wait_for


def test_folders_going_during_listings_do_not_take_the_remote_offline(
        make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, poll_interval="0.02s")
    cloud.mount()
    (cloud.mountpoint / "kept.txt").write_bytes(b"kept")
    cloud.wait_synced()
    stop = threading.Event()

    def churn() -> None:  # what git gc does to .git/objects, many times a second
        number = 0
        while not stop.is_set():
            folder = cloud.remotes["a"] / f"pack{number % 3}"
            (folder / "sub").mkdir(parents=True, exist_ok=True)
            for index in range(20):
                (folder / "sub" / f"o{index}").write_bytes(b"x")
            shutil.rmtree(folder, ignore_errors=True)
            number += 1

    worker = threading.Thread(target=churn)
    worker.start()
    try:
        time.sleep(4)
    finally:
        stop.set()
        worker.join()
    assert "cannot list" not in cloud.log, cloud.log[-3000:]
    assert all(remote["online"] for remote in cloud.status()["remotes"])
    # every copy the churn left on b is deleted again: slow when the machine is busy
    wait_for(lambda: not any(p.name.startswith("pack") for p in cloud.mountpoint.iterdir()),
             timeout=60, what="the churn to settle in the mount")
    cloud.umount()
