"""A long random sequence of file operations, on the mount and on a plain folder as the model.

Reads and writes go through read/write and through shared mappings (mmap).

The two are compared after every step, again after unmount and remount, and
every remote is compared with the model at the end. The seed is printed;
ONITUFS_SEED=N replays a run, ONITUFS_STEPS=N makes it longer.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import mmap
import os
import random
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from .conftest import Cloud, MakeCloud, snapshot

NAMES = ["f0", "f1", "f2", "d0/f3", "d0/f4", "d1/f5", "d0/d2/f6"]
FOLDERS = ["d0", "d1", "d0/d2"]
MAX_SIZE = 3 * 65536 + 77  # a few blocks of the 64 KiB test block size
HISTORY = 12  # the last operations a failure names


class Both:
    """Applies each operation to the mount and to the model, and checks they agree."""

    def __init__(self, mount: Path, model: Path, rng: random.Random) -> None:
        self.roots = (mount, model)
        self.rng = rng
        self.history: deque[str] = deque(maxlen=HISTORY)  # for a failure's message

    def do(self, operation: Callable[[Path], object], describe: str) -> None:
        self.history.append(describe)
        outcomes = []
        for root in self.roots:
            try:
                outcomes.append(("ok", operation(root)))
            except OSError as error:
                outcomes.append(("error", errno.errorcode.get(error.errno or 0, error.errno)))
        assert outcomes[0] == outcomes[1], \
            f"{describe}: mount {outcomes[0]} != model {outcomes[1]}, after {list(self.history)}"

    def step(self) -> str:
        rng = self.rng
        name = rng.choice(NAMES)
        other = rng.choice(NAMES + FOLDERS)
        kind = rng.choice(["write", "write", "write", "create", "truncate", "rename", "unlink",
                           "mkdir", "rmdir", "fsync", "read", "mmap_write", "mmap_read"])
        if kind == "write":
            offset, data = rng.randrange(MAX_SIZE), rng.randbytes(rng.randrange(1, 70000))
            self.do(lambda root: write_at(root / name, offset, data),
                    f"write {len(data)} bytes at {offset} of {name}")
        elif kind == "create":
            data = rng.randbytes(rng.randrange(MAX_SIZE))
            self.do(lambda root: (root / name).write_bytes(data), f"create {name}")
        elif kind == "truncate":
            size = rng.randrange(MAX_SIZE)
            self.do(lambda root: os.truncate(root / name, size), f"truncate {name} to {size}")
        elif kind == "rename":
            self.do(lambda root: os.rename(root / name, root / other), f"rename {name} {other}")
        elif kind == "unlink":
            self.do(lambda root: os.unlink(root / name), f"unlink {name}")
        elif kind == "mkdir":
            folder = rng.choice(FOLDERS)
            self.do(lambda root: os.mkdir(root / folder), f"mkdir {folder}")
        elif kind == "rmdir":
            folder = rng.choice(FOLDERS)
            self.do(lambda root: os.rmdir(root / folder), f"rmdir {folder}")
        elif kind == "mmap_write":
            where, data = rng.random(), rng.randbytes(rng.randrange(1, 9000))
            self.do(lambda root: mmap_write(root / name, where, data), f"mmap write {name}")
        elif kind == "mmap_read":
            where, size = rng.random(), rng.randrange(1, 90000)
            self.do(lambda root: mmap_read(root / name, where, size), f"mmap read {name}")
        elif kind == "fsync":
            self.do(lambda root: fsync(root / name), f"fsync {name}")
        else:
            self.do(lambda root: (root / name).read_bytes(), f"read {name}")
        return kind


def write_at(path: Path, offset: int, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def mmap_write(path: Path, where: float, data: bytes) -> None:
    """Write through a shared mapping at a place inside the file (`where`: 0 to 1)."""
    with open(path, "r+b") as handle:
        size = os.fstat(handle.fileno()).st_size
        if size == 0:
            return
        with mmap.mmap(handle.fileno(), size) as mapped:
            start = int(where * size)
            piece = data[:size - start]
            mapped[start:start + len(piece)] = piece
            mapped.flush()


def mmap_read(path: Path, where: float, size: int) -> bytes:
    with open(path, "rb") as handle:
        length = os.fstat(handle.fileno()).st_size
        if length == 0:
            return b""
        with mmap.mmap(handle.fileno(), length, prot=mmap.PROT_READ) as mapped:
            start = int(where * length)
            return mapped[start:start + size]


def fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def random_run(make_cloud: MakeCloud, tmp_path: Path, what: str, remotes: dict[str, str],
               cache_size: str = "1 MiB") -> tuple[int, int, Cloud, Path]:
    """A run's seed and steps (ONITUFS_SEED, ONITUFS_STEPS; printed), its cloud (not mounted
    yet) and its model folder. A write buffer of two blocks: full blocks go to LMDB from a
    worker thread all the time, while the same blocks are read, written again and cut; by
    default a cache smaller than the files: reads fetch from the remotes too."""
    seed = int(os.environ.get("ONITUFS_SEED", random.randrange(2**32)))
    steps = int(os.environ.get("ONITUFS_STEPS", 1000))
    print(f"{what}: ONITUFS_SEED={seed} ONITUFS_STEPS={steps}")
    cloud = make_cloud(remotes, block_size="64 KiB", cache_size=cache_size,
                       write_buffer="128 KiB")
    model = tmp_path / "model"
    model.mkdir()
    return seed, steps, cloud, model


def remount_and_compare(cloud: Cloud, model: Path, seed: int) -> dict[str, tuple[str, bytes]]:
    """Unmount (everything uploaded), compare every remote with the model, mount again and
    compare the mount; no block found damaged meanwhile. Returns the model's snapshot."""
    cloud.umount()
    expected = snapshot(model)
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == expected, f"seed {seed}: remote {name} differs"
    cloud.mount()
    assert snapshot(cloud.mountpoint) == expected, f"seed {seed}: after the last remount"
    assert "damaged" not in cloud.log, f"seed {seed}: a checksum did not match its block"
    return expected


def test_several_programs_at_once_each_on_its_own_files(make_cloud: MakeCloud,
                                                        tmp_path: Path) -> None:
    """Four programs at once, each with random operations in a folder of its own: each
    one's outcomes are as certain as one program's, while the daemon serves them together
    (their writes wait for room in the small cache, evict each other's blocks, upload
    beside each other)."""
    seed, steps, cloud, model = random_run(make_cloud, tmp_path, "several programs",
                                           {"a": "rw", "b": "rw"})
    cloud.mount()
    programs = [f"p{number}" for number in range(4)]
    failures: list[str] = []

    def run_program(number: int) -> None:
        name = programs[number]
        both = Both(cloud.mountpoint / name, model / name, random.Random(seed + number))
        try:
            for step in range(steps // 2):
                both.step()
                if step % 20 == 0:
                    assert snapshot(cloud.mountpoint / name) == snapshot(model / name), \
                        f"seed {seed}, {name}, step {step}, after {list(both.history)}"
        except BaseException as failure:  # (said by the test's own thread below)
            failures.append(f"{name}: {failure}")

    for name in programs:
        (cloud.mountpoint / name).mkdir()
        (model / name).mkdir()
    threads = [threading.Thread(target=run_program, args=(number,), daemon=True)
               for number in range(len(programs))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(600)  # (a hung mount: the cloud's cleanup ends it)
    assert not any(thread.is_alive() for thread in threads), f"seed {seed}: a program hung"
    assert not failures, f"seed {seed}: {failures}"
    assert snapshot(cloud.mountpoint) == snapshot(model), f"seed {seed}"
    remount_and_compare(cloud, model, seed)


def test_random_operations_match_a_plain_folder(make_cloud: MakeCloud, tmp_path: Path) -> None:
    seed, steps, cloud, model = random_run(make_cloud, tmp_path, "random operations",
                                           {"a": "rw", "b": "rw"})
    cloud.mount()
    both = Both(cloud.mountpoint, model, random.Random(seed))
    for number in range(steps):
        kind = both.step()
        if number % 20 == 0 or kind in ("rename", "rmdir"):
            assert snapshot(cloud.mountpoint) == snapshot(model), \
                f"seed {seed}, step {number}, after {list(both.history)}"
        if number == steps // 2:  # half way: a remount, with uploads maybe still queued
            cloud.umount()
            cloud.mount()
            assert snapshot(cloud.mountpoint) == snapshot(model), f"seed {seed}, after remount"
    expected = remount_and_compare(cloud, model, seed)
    for relative, (kind, content) in expected.items():
        if kind == "file":  # known unless the last upload was resumed part way
            with contextlib.suppress(OSError):
                checksum = os.getxattr(cloud.mountpoint / relative, "user.onitufs.sha256")
                assert checksum == hashlib.sha256(content).hexdigest().encode(), \
                    f"seed {seed}: the checksum of {relative}"
