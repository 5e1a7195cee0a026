"""kill -9 of the daemon at random points: nothing closed or fsynced before it is lost."""

from __future__ import annotations

import os
import random
import subprocess
import threading
import time
from pathlib import Path

from .conftest import MakeCloud, is_mounted, snapshot

ROUNDS = 6


def writer(root: Path, rng: random.Random, done: dict[str, bytes], stop: threading.Event) -> None:
    """Writes files until the mount dies; `done` gets each file once it is closed."""
    number = 0
    while not stop.is_set():
        name = f"r{rng.randrange(10**9)}-{number}"
        data = rng.randbytes(rng.choice([10, 5000, 300_000, 2_500_000]))
        try:
            fd = os.open(root / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                os.write(fd, data)
                if number % 3 == 0:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except OSError:
            return  # the daemon is gone
        done[name] = data
        number += 1


def test_kill9_at_random_points(make_cloud: MakeCloud) -> None:
    seed = int(os.environ.get("ONITUFS_SEED", random.randrange(2**32)))
    print(f"kill -9 rounds: ONITUFS_SEED={seed}")
    rng = random.Random(seed)
    cloud = make_cloud({"a": "rw", "b": "rw"}, block_size="256 KiB", upload_delay="0.05s")
    survivors: dict[str, bytes] = {}
    for round_number in range(ROUNDS):
        cloud.mount()
        for name, data in survivors.items():
            assert (cloud.mountpoint / name).read_bytes() == data, f"seed {seed}: {name} lost"
        done: dict[str, bytes] = {}
        stop = threading.Event()
        thread = threading.Thread(target=writer,
                                  args=(cloud.mountpoint, random.Random(rng.random()), done, stop))
        thread.start()
        time.sleep(rng.uniform(0.2, 1.5))
        cloud.kill9()
        stop.set()
        thread.join(timeout=30)
        assert not thread.is_alive()
        subprocess.run(["fusermount3", "-u", "-z", str(cloud.mountpoint)], check=False)
        assert not is_mounted(cloud.mountpoint)
        survivors.update(done)
        print(f"round {round_number}: {len(done)} files closed before the kill")
    cloud.mount()
    cloud.wait_synced(timeout=120)
    mounted = snapshot(cloud.mountpoint)
    for name, data in survivors.items():
        assert mounted[name] == ("file", data), f"seed {seed}: {name} lost or changed"
    cloud.umount()
    for remote_name, remote in cloud.remotes.items():
        assert snapshot(remote) == mounted, f"seed {seed}: remote {remote_name} did not converge"
