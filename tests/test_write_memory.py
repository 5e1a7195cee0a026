"""What a long write holds in memory: the write buffer (cache.write_buffer) and little
more, not the buffer twice over plus LMDB's own copy of it."""

from __future__ import annotations

import os
import threading
from pathlib import Path

from .conftest import MakeCloud

MIB = 1024 * 1024
WRITE_BUFFER = 128 * MIB  # large, so that what scales with it stands out from the rest


def rss_anon(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no RssAnon for {pid}")


def test_a_long_write_holds_about_the_write_buffer(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"}, cache_size="2 GiB", write_buffer=f"{WRITE_BUFFER // MIB} MiB",
                       upload_delay="0.5s")
    cloud.mount()
    assert cloud.pid is not None
    pid = cloud.pid
    before = rss_anon(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, rss_anon(pid))

    sampler = threading.Thread(target=sample)
    sampler.start()
    try:
        chunk = os.urandom(MIB)
        with open(cloud.mountpoint / "big", "wb") as file:
            for number in range(3 * WRITE_BUFFER // MIB):
                file.write(number.to_bytes(8, "big") + chunk[8:])  # no two blocks alike
        cloud.wait_synced(60)
    finally:
        done.set()
        sampler.join()
    grown = peak - before
    # The buffers, half on their way to LMDB and half filling, make WRITE_BUFFER; LMDB's
    # transactions, the checksums and the upload take a few MiB each. Before, it was 3x.
    # Alone it grows by 0.75-1.05x; once in a full run, beside other tests, by 1.84x (freed
    # buffers the allocator kept), so the bound is 2x: still well below the 3x it was.
    assert grown < 2 * WRITE_BUFFER, f"grew by {grown // MIB} MiB while writing"
    cloud.umount()
    assert (cloud.remotes["a"] / "big").stat().st_size == 3 * WRITE_BUFFER
