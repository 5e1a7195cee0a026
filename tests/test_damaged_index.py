"""A damaged index file (data.mdb cut short, pages overwritten) is one clear line from
mount, fsck and verify: never a crash, a traceback or a half mount.

The damage is aimed at pages LMDB uses, found from the newer meta page as LMDB 0.9 lays
it out (see onitufs/lmdbcheck.py).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import stat
import struct
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import lmdb
import pytest

from onitufs import cleanstop, lmdbcheck
from onitufs.index import Index, Inode, q, seal

from .conftest import Cloud, is_mounted, run

MiB = 1024 * 1024
FILES = 300


def newer_meta(data: bytes) -> tuple[int, int]:
    """The page size and the offset of the newer meta page."""
    psize = struct.unpack_from("<I", data, 40)[0]  # the free database's md_pad
    txnids = [(struct.unpack_from("<Q", data, base + 144)[0], base) for base in (0, psize)]
    return psize, max(txnids)[1]


def roots(data: bytes) -> dict[str, int]:
    """The root page of the main database (under "") and of every named database."""
    psize, meta = newer_meta(data)
    main = struct.unpack_from("<Q", data, meta + 88 + 40)[0]
    found = {"": main}
    page = main * psize
    assert struct.unpack_from("<H", data, page + 10)[0] == 2, "the main database is one leaf"
    lower = struct.unpack_from("<H", data, page + 12)[0]
    for i in range((lower - 16) // 2):
        at = page + struct.unpack_from("<H", data, page + 16 + 2 * i)[0]
        key_size = struct.unpack_from("<H", data, at + 6)[0]
        name = data[at + 8:at + 8 + key_size].decode()
        found[name] = struct.unpack_from("<Q", data, at + 8 + key_size + 40)[0]
    return found


class Base:
    """A cache after a mount that wrote files, as it was, and compacted by LMDB."""

    def __init__(self, root: Path) -> None:
        self.cloud = Cloud(root, {"a": "rw", "b": "rw"})
        self.cloud.mount()
        for i in range(FILES):
            (self.cloud.mountpoint / f"file-{i:04d}").write_bytes(os.urandom(200 + i))
        self.big = os.urandom(12 * MiB)  # data.mdb grows past 8 MiB
        (self.cloud.mountpoint / "big").write_bytes(self.big)
        self.cloud.wait_synced()
        self.cloud.umount()
        self.pristine = root / "cache.pristine"
        shutil.copytree(self.cloud.cache, self.pristine)
        # In a compacted copy pages are numbered in the order of the trees, with none free,
        # the blocks first: the leaves of the small files' blocks (inodes made before the
        # big file's) come first, and page 4 is one of them, in use as in the report.
        self.compacted = root / "cache.compacted"
        self.compacted.mkdir()
        with lmdb.open(str(self.pristine), max_dbs=20, readonly=True, lock=False) as env:
            env.copy(str(self.compacted), compact=True)

    def restore(self, source: Path) -> Path:
        shutil.rmtree(self.cloud.cache, ignore_errors=True)
        shutil.copytree(source, self.cloud.cache)
        shutil.copy(self.pristine / "lock.mdb", self.cloud.cache / "lock.mdb")
        return self.cloud.cache / "data.mdb"


@pytest.fixture(scope="module")
def shared_base(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Base]:
    made = Base(tmp_path_factory.mktemp("damaged-index"))
    yield made
    made.cloud.cleanup()


@pytest.fixture
def base(shared_base: Base) -> Iterator[Base]:
    yield shared_base
    shared_base.cloud.cleanup()  # a mount a test left (failing) goes with it


def overwrite(path: Path, offset: int, content: bytes) -> None:
    with open(path, "r+b") as data:
        data.seek(offset)
        data.write(content)


def cut_to_8_mib(data_file: Path, big: bytes) -> None:
    assert data_file.stat().st_size > 8 * MiB
    os.truncate(data_file, 8 * MiB)  # truncate -s 8M data.mdb


def bytes_at_16384(data_file: Path, big: bytes) -> None:
    stored, _, flags = struct.unpack_from("<QHH", data_file.read_bytes(), 16384)
    assert (stored, flags) == (4, 2), "page 4 is a leaf"
    overwrite(data_file, 16384, random.Random(1).randbytes(64))


def bytes_over_the_main_root_in_the_meta_page(data_file: Path, big: bytes) -> None:
    _, meta = newer_meta(data_file.read_bytes())
    overwrite(data_file, meta + 88 + 40, random.Random(2).randbytes(8))


def bytes_over_the_head_of_the_main_root(data_file: Path, big: bytes) -> None:
    data = data_file.read_bytes()
    psize, _ = newer_meta(data)
    overwrite(data_file, roots(data)[""] * psize, random.Random(3).randbytes(16))


def bytes_over_the_nodes_of_the_inodes_root(data_file: Path, big: bytes) -> None:
    data = data_file.read_bytes()
    psize, _ = newer_meta(data)
    overwrite(data_file, roots(data)["inodes"] * psize + 16, random.Random(4).randbytes(32))


def bytes_over_the_head_of_a_block(data_file: Path, big: bytes) -> None:
    data = data_file.read_bytes()
    psize, _ = newer_meta(data)
    where = data.find(big[:64])  # the first block of /big: its run starts 16 + 32 bytes before
    assert where >= 0 and (where - 48) % psize == 0
    overwrite(data_file, where - 48, random.Random(5).randbytes(16))


def bytes_over_the_first_meta_page(data_file: Path, big: bytes) -> None:
    overwrite(data_file, 0, random.Random(6).randbytes(64))


Damage = Callable[[Path, bytes], None]
CASES: list[tuple[Damage, str]] = [
    (cut_to_8_mib, "pristine"),
    (bytes_at_16384, "compacted"),
    (bytes_over_the_main_root_in_the_meta_page, "pristine"),
    (bytes_over_the_head_of_the_main_root, "pristine"),
    (bytes_over_the_nodes_of_the_inodes_root, "pristine"),
    (bytes_over_the_head_of_a_block, "pristine"),
    (bytes_over_the_first_meta_page, "pristine"),
]


def assert_refused(cloud: Cloud) -> None:
    """mount, fsck and verify each say in one line that the index is damaged, exit as
    documented, and mount nothing."""
    for args, code in ((("mount", cloud.mountpoint, cloud.config), 1),
                       (("fsck", cloud.config), 8), (("verify", cloud.config), 8)):
        result = run(*args, check=False)
        assert result.returncode == code, (args[0], result.returncode, result.stderr)
        assert "Traceback" not in result.stderr
        lines = result.stderr.splitlines()
        assert len(lines) == 1, (args[0], result.stderr)
        assert lines[0].startswith(f"onitufs: {cloud.cache}: the index is damaged ("), lines[0]
        assert lines[0].endswith("; move the folder aside and mount again: the tree and the "
                                 "content are rebuilt from the remotes"), lines[0]
        assert result.stdout == ""
        assert not is_mounted(cloud.mountpoint)


@pytest.mark.parametrize(("damage", "source"), CASES, ids=[case[0].__name__ for case in CASES])
def test_a_damaged_index_is_one_line_and_no_mount(base: Base, damage: Damage, source: str) -> None:
    data_file = base.restore(base.compacted if source == "compacted" else base.pristine)
    damage(data_file, base.big)
    assert_refused(base.cloud)


def test_a_sound_cache_mounts_and_a_damaged_one_moved_aside_is_rebuilt(base: Base) -> None:
    cloud = base.cloud
    for source in (base.pristine, base.compacted):
        base.restore(source)
        cloud.mount()
        assert (cloud.mountpoint / "big").read_bytes() == base.big
        assert len(list(cloud.mountpoint.iterdir())) == FILES + 1
        cloud.umount()
        assert run("fsck", cloud.config).returncode == 0
    # what the line says to do
    cut_to_8_mib(base.restore(base.pristine), base.big)
    shutil.rmtree(cloud.root / "cache.aside", ignore_errors=True)
    cloud.cache.rename(cloud.root / "cache.aside")
    cloud.mount()
    assert (cloud.mountpoint / "big").read_bytes() == base.big
    assert len(list(cloud.mountpoint.iterdir())) == FILES + 1
    cloud.umount()


SKIPPED = "the index file is as the last clean stop left it: its structural check is skipped"


def test_a_clean_stop_spares_the_next_mount_the_check_but_no_change_since(base: Base) -> None:
    """The record of the file at a clean stop lets the next mount skip the check; bytes
    changed since, even with the file's times set back as they were, are still refused."""
    cloud = base.cloud
    data_file = base.restore(base.pristine)  # a copy: the record it brought is not its own
    record = cloud.cache / cleanstop.NAME
    assert not cleanstop.unchanged(data_file)
    cloud.mount()
    assert SKIPPED not in cloud.log
    cloud.umount()
    assert record.exists() and cleanstop.unchanged(data_file)
    cloud.mount()
    assert SKIPPED in cloud.log
    assert (cloud.mountpoint / "big").read_bytes() == base.big
    cloud.umount()
    assert cleanstop.unchanged(data_file)
    times = data_file.stat()
    bytes_over_the_nodes_of_the_inodes_root(data_file, base.big)
    os.utime(data_file, ns=(times.st_atime_ns, times.st_mtime_ns))
    assert data_file.stat().st_mtime_ns == times.st_mtime_ns
    assert not cleanstop.unchanged(data_file)
    assert_refused(cloud)


def test_a_crash_leaves_no_record_that_vouches_for_the_file(base: Base) -> None:
    cloud = base.cloud
    data_file = base.restore(base.pristine)
    cloud.mount()
    cloud.umount()
    assert cleanstop.unchanged(data_file)
    cloud.mount()
    (cloud.mountpoint / "new").write_bytes(b"written after the clean stop")
    cloud.kill9()
    assert not cleanstop.unchanged(data_file)
    cloud.cleanup()
    skipped = cloud.log.count(SKIPPED)
    cloud.mount()
    assert cloud.log.count(SKIPPED) == skipped
    assert "the last stop was not a clean one" in cloud.log
    assert (cloud.mountpoint / "new").read_bytes() == b"written after the clean stop"
    cloud.umount()


def test_fsck_checks_the_structure_even_after_a_clean_stop(base: Base) -> None:
    """A page damaged without a write (as a disk's bad sector would), the record made to
    match it: fsck still finds the damage."""
    cloud = base.cloud
    data_file = base.restore(base.pristine)
    cloud.mount()
    cloud.umount()
    bytes_over_the_nodes_of_the_inodes_root(data_file, base.big)
    cleanstop.record(data_file)
    assert cleanstop.unchanged(data_file)
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 8, result.stderr
    assert result.stderr.startswith(f"onitufs: {cloud.cache}: the index is damaged ("), \
        result.stderr


def test_the_check_of_a_100000_file_index_takes_well_under_a_second(tmp_path: Path) -> None:
    """Not a timed assertion: the time is printed, for the record."""
    cache = tmp_path / "cache"
    index = Index(cache, 2**40, MiB)
    rng = random.Random(7)
    folders = 100
    with index.write() as txn:
        db = index.db
        for n in range(100_000):
            ino, parent = n + 2, (1 if n < folders else 2 + n % folders)
            name = f"folder-{n:03d}" if n < folders else f"file-{n:06d}.txt"
            mode = stat.S_IFDIR | 0o755 if n < folders else stat.S_IFREG | 0o644
            size = 0 if n < folders else rng.randrange(100, 8000)  # one block each
            path = name if n < folders else f"folder-{parent - 2:03d}/{name}"
            inode = Inode(ino, mode, 0, 0, 1, size=size, mtime_ns=time.time_ns(), version=1,
                          rev=ino, rev_version=1)
            txn.put(q(ino), inode.pack(), db=db["inodes"])
            txn.put(q(parent) + name.encode(), q(ino), db=db["dirents"])
            txn.put(q(ino) + q(parent) + name.encode(), b"", db=db["parents"])
            for rid in (1, 2, 3):  # three remotes hold it
                entry = {path: {"rev": ino, "token": f"{time.time_ns()}:{size}",
                                "fid": f"2049:{ino}", "kind": "file", "attrs": f"{ino:016x}",
                                "racy": False}}
                txn.put(rid.to_bytes(4, "big") + q(ino), json.dumps(entry).encode(),
                        db=db["mirror"])
                txn.put(rid.to_bytes(4, "big") + os.urandom(16), q(ino) + path.encode(),
                        db=db["rpaths"])
            if size:
                content = rng.randbytes(size)
                sealed = seal(content)
                txn.put(q(ino) + q(0), q(ino) + sealed[:32], db=db["hashes"])
                txn.put(q(ino) + q(0), sealed, db=db["blocks"])
    index.close()
    data_file = cache / "data.mdb"
    times = []
    for _ in range(3):
        start = time.perf_counter()
        lmdbcheck.check(data_file)
        times.append(time.perf_counter() - start)
    print(f"\nlmdbcheck of a 100,000-file index ({data_file.stat().st_size // MiB} MiB): "
          f"best {min(times):.3f} s, worst {max(times):.3f} s of {len(times)}")
    Index(cache, 2**40, MiB).close()  # and it opens
