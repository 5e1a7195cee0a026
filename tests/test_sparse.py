"""Holes stay holes, and the cache keeps to its size while huge files pass through it.

A 10 GiB sparse file made on one remote used to be fetched block by block into the
cache to be uploaded to the others (none of it evictable until every remote held the
file: data.mdb grew to 10 GiB) and arrived on them fully allocated. Zeros, fetched or
written, now take no cache space, and uploads to remotes that keep holes skip them.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

from .conftest import Cloud, MakeCloud, wait_for
from .sshd import MakeSshCloud, Sshd, SshRemote

pytest_plugins = ["tests.sshd"]

KiB, MiB, GiB = 1024, 1024**2, 1024**3
SLACK = 16 * MiB  # LMDB's own pages: the index, free lists, pages not reused yet


def allocated(path: Path) -> int:
    return path.stat().st_blocks * 512


def allocated_below(root: Path) -> int:
    """The disk space taken by every file below root, uploads in progress included."""
    total = 0
    for folder, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # an upload's part, renamed since
                total += allocated(Path(folder) / name)
    return total


def cache_file(cloud: Cloud) -> int:
    path = cloud.cache / "data.mdb"
    return max(path.stat().st_size, allocated(path))


def wait_synced_within(cloud: Cloud, cache_bound: int, remote_bound: int, done: Path,
                       timeout: float = 120.0) -> None:
    """Until every remote has nothing left to do and holds `done` (a path relative to each
    remote); checks all along that data.mdb and every remote's files stay in their bounds."""
    def synced() -> bool:
        size = cache_file(cloud)
        assert size <= cache_bound, f"data.mdb grew to {size} bytes (bound {cache_bound})"
        for name, root in cloud.remotes.items():
            used = allocated_below(root)
            assert used <= remote_bound, f"remote {name} takes {used} bytes (bound {remote_bound})"
        if not all((root / done).exists() for root in cloud.remotes.values()):
            return False
        return all(r["pending"] == 0 and r["in_flight"] == 0 for r in cloud.status()["remotes"])
    wait_for(synced, timeout, "the remotes to catch up", interval=0.2)


def pread(path: Path, size: int, offset: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, size, offset)
    finally:
        os.close(fd)


def test_a_sparse_file_made_on_a_remote_stays_sparse_and_the_cache_in_its_size(
        make_cloud: MakeCloud) -> None:
    cache_size, write_buffer = 64 * MiB, 16 * MiB
    cloud = make_cloud(cache_size="64 MiB", write_buffer="16 MiB")
    middle, data_at = 5 * GiB + 12345, 7 * GiB + 100
    data = os.urandom(3 * MiB)
    with open(cloud.remotes["a"] / "big", "wb") as handle:
        handle.truncate(10 * GiB)
        handle.seek(middle)
        handle.write(b"in the middle of nothing")
        handle.seek(data_at)
        handle.write(data)
    cloud.mount()
    wait_synced_within(cloud, cache_size + write_buffer + SLACK, 16 * MiB, Path("big"))
    for name in ("b", "c"):
        copy = cloud.remotes[name] / "big"
        assert copy.stat().st_size == 10 * GiB
        assert allocated(copy) <= 8 * MiB, f"{name}'s copy is not sparse"
        assert pread(copy, 24, middle) == b"in the middle of nothing"
        assert pread(copy, len(data), data_at) == data
        assert pread(copy, 4096, 9 * GiB) == bytes(4096)
    mounted = cloud.mountpoint / "big"
    assert pread(mounted, 24, middle) == b"in the middle of nothing"
    assert pread(mounted, len(data) + 10, data_at - 5) == bytes(5) + data + bytes(5)
    cloud.umount()
    assert cache_file(cloud) <= cache_size + write_buffer + SLACK


def test_a_file_larger_than_the_cache_passes_through_it_within_its_size(
        make_cloud: MakeCloud) -> None:
    """Blocks fetched from a only to upload them to b and c go as the uploads go on, not
    once every remote holds the whole file."""
    cloud = make_cloud(cache_size="16 MiB", write_buffer="16 MiB")
    content = os.urandom(128 * MiB)
    (cloud.remotes["a"] / "video").write_bytes(content)
    cloud.mount()
    bound = cache_file(cloud) + 32 * MiB + SLACK
    wait_synced_within(cloud, bound, 256 * MiB, Path("video"))
    for name in ("b", "c"):
        assert (cloud.remotes[name] / "video").read_bytes() == content
    assert cloud.status()["cache_bytes"] <= 16 * MiB
    assert (cloud.mountpoint / "video").read_bytes() == content  # through a cache of 16 MiB
    assert cache_file(cloud) <= bound


def test_a_file_with_a_hole_written_through_the_mount_arrives_sparse(
        make_cloud: MakeCloud) -> None:
    cloud = make_cloud(cache_size="64 MiB", write_buffer="16 MiB")
    cloud.mount()
    with open(cloud.mountpoint / "holey", "wb") as handle:
        handle.write(b"the start")
        handle.seek(5 * GiB)
        handle.write(b"the end")
    wait_synced_within(cloud, (64 + 16) * MiB + SLACK, 16 * MiB, Path("holey"))
    for name, root in cloud.remotes.items():
        copy = root / "holey"
        assert copy.stat().st_size == 5 * GiB + 7
        assert allocated(copy) <= 4 * MiB, f"{name}'s copy is not sparse"
        assert pread(copy, 9, 0) == b"the start"
        assert pread(copy, 4096, 3 * GiB) == bytes(4096)
        assert pread(copy, 100, 5 * GiB - 93) == bytes(93) + b"the end"


def test_zeros_written_into_the_mount_take_no_cache_space(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(cache_size="16 MiB", write_buffer="16 MiB")
    cloud.mount()
    before = cache_file(cloud)
    subprocess.run(f"head -c 200M /dev/zero > {cloud.mountpoint}/zeros", shell=True, check=True)
    assert cache_file(cloud) <= before + 32 * MiB + SLACK
    wait_synced_within(cloud, before + 32 * MiB + SLACK, 16 * MiB, Path("zeros"))
    for root in cloud.remotes.values():
        assert (root / "zeros").stat().st_size == 200 * MiB
        assert allocated(root / "zeros") <= 1 * MiB
    assert pread(cloud.mountpoint / "zeros", MiB, 150 * MiB) == bytes(MiB)
    cloud.umount()
    assert cache_file(cloud) <= before + 32 * MiB + SLACK


def test_a_hole_stays_a_hole_on_an_ssh_server(make_ssh_cloud: MakeSshCloud, sshd: Sshd) -> None:
    """SFTP writes zeros up to a write past the end of the file: a hole, on this server."""
    cloud = make_ssh_cloud({"a": "rw"}, {"s": SshRemote(sshd)}, cache_size="64 MiB",
                           write_buffer="16 MiB")
    cloud.mount()
    data = os.urandom(3 * MiB)
    with open(cloud.mountpoint / "holey", "wb") as handle:
        handle.write(b"the start")
        handle.seek(GiB)
        handle.write(data)
        handle.seek(2 * GiB)
        handle.write(b"the end")
    wait_synced_within(cloud, (64 + 16) * MiB + SLACK, 16 * MiB, Path("holey"))
    copy = cloud.remotes["s"] / "holey"
    assert copy.stat().st_size == 2 * GiB + 7
    assert allocated(copy) <= 8 * MiB, "the server's copy is not sparse"
    assert pread(copy, 9, 0) == b"the start"
    assert pread(copy, len(data) + 2, GiB - 1) == bytes(1) + data + bytes(1)
    assert pread(copy, 7, 2 * GiB) == b"the end"


def test_a_sparse_upload_cut_by_a_crash_resumes_where_its_data_ended(
        make_cloud: MakeCloud) -> None:
    """What is saved for a resume is where the last chunk sent ends, not past the holes
    after it, which the remote's temp file does not reach yet."""
    cloud = make_cloud({"a": "rw"}, cache_size="64 MiB", write_buffer="16 MiB")
    cloud.mount()
    pieces = {0: os.urandom(8 * MiB), 3 * GiB: os.urandom(8 * MiB), 6 * GiB: os.urandom(MiB)}
    with open(cloud.mountpoint / "holey", "wb") as handle:
        for offset, data in pieces.items():
            handle.seek(offset)
            handle.write(data)

    def first_piece_sent() -> bool:
        temps = [path for path in cloud.remotes["a"].iterdir() if path.name.startswith(".holey")]
        return bool(temps) and temps[0].stat().st_size >= 8 * MiB
    wait_for(first_piece_sent, what="the upload to start", interval=0.01)
    cloud.kill9()
    cloud.mount()
    wait_synced_within(cloud, (64 + 16) * MiB + SLACK, 32 * MiB, Path("holey"))
    copy = cloud.remotes["a"] / "holey"
    assert copy.stat().st_size == 6 * GiB + MiB
    assert allocated(copy) <= 24 * MiB
    for offset, data in pieces.items():
        assert pread(copy, len(data), offset) == data
    assert pread(copy, MiB, 5 * GiB) == bytes(MiB)
    assert "resuming holey at byte" in cloud.log
