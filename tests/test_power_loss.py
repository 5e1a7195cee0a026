"""A power loss, as it may leave the disk of the cache: the index file as its last sync
wrote it, with any of the pages written since on top (the kernel writes dirty pages back
in an order and at times of its own), and the machine started again (another boot id).

The index is written by a process of its own, killed with SIGKILL after commits made past
its last sync; the file it leaves is the page cache's, and the file at the sync is the
test's copy of it then. Each image of what the disk may hold is opened, in a mount
namespace whose /proc/sys/kernel/random/boot_id says another boot, by a second process:
the index must open whole, holding exactly what it held at the sync (the commits after it
are what a power loss may take). A kill alone, in the same boot, keeps every commit.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from onitufs import syncpoint
from onitufs.index import Index

PAGE = 4096
# The writer: commits that add, change and delete records (so that LMDB frees pages and
# hands them out again), a sync, then more of them, each step told on stdout.
WRITER = textwrap.dedent("""
    import random, sys
    from onitufs.index import Index, q
    index = Index(__import__("pathlib").Path(sys.argv[1]), 1 << 30, 65536)
    rng = random.Random(int(sys.argv[2]))
    def commits(count):
        for _ in range(count):
            with index.write() as txn:
                for _ in range(40):
                    key = q(rng.randrange(3000)) + b"user.k"
                    if rng.random() < 0.3:
                        txn.delete(key, db=index.db["xattrs"])
                    else:
                        txn.put(key, rng.randbytes(rng.randrange(10, 600)), db=index.db["xattrs"])
    commits(150)
    index.sync()
    print("synced", flush=True)
    sys.stdin.readline()
    commits(150)
    print("committed", flush=True)
    sys.stdin.readline()
""")
# The reader: the index opened as a mount opens it, every record of every database.
READER = textwrap.dedent("""
    import json, sys
    from onitufs.index import Index, CacheError
    try:
        index = Index(__import__("pathlib").Path(sys.argv[1]), 1 << 30, 65536)
    except CacheError as error:
        print(json.dumps({"error": str(error)}))
        sys.exit()
    with index.begin() as txn:
        records = {name: [[k.hex(), v.hex()] for k, v in txn.cursor(db=db)]
                   for name, db in index.db.items() if name != "meta"}
    print(json.dumps({"records": records, "restored": index.restored}))
    index.close()
""")

Records = dict[str, list[list[str]]]


def open_index(cache: Path, tmp_path: Path, other_boot: bool) -> dict[str, object]:
    """What a process finds in the index at `cache`, in this boot or in another."""
    command = [sys.executable, "-c", READER, str(cache)]
    if other_boot:
        boot = tmp_path / "boot_id"
        boot.write_text(f"{uuid.uuid4()}\n")
        command = ["unshare", "--mount", "--propagation", "private", "sh", "-c",
                   f'mount --bind "$0" {syncpoint.BOOT_ID} && exec "$@"', str(boot), *command]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    found: dict[str, object] = json.loads(result.stdout)
    return found


class Crashed:
    """An index written up to a sync and past it, its writer killed: the file at the sync
    (`durable`), the file the page cache holds (`latest`), and what each holds."""

    def __init__(self, cache: Path, tmp_path: Path, seed: int) -> None:
        self.cache = cache
        writer = subprocess.Popen([sys.executable, "-c", WRITER, str(cache), str(seed)],
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert writer.stdout is not None and writer.stdin is not None
            assert writer.stdout.readline() == "synced\n"
            self.durable = (cache / "data.mdb").read_bytes()
            points = cache / syncpoint.NAME
            self.points = points.read_bytes() if points.exists() else None
            writer.stdin.write("\n")
            writer.stdin.flush()
            assert writer.stdout.readline() == "committed\n"
        finally:
            writer.kill()
            writer.wait()
        self.latest = (cache / "data.mdb").read_bytes()
        assert self.latest[2 * PAGE:] != self.durable[2 * PAGE:]
        found = open_index(cache, tmp_path, other_boot=False)
        assert found.get("restored") is None, found
        self.latest_records = found["records"]
        self.put(self.durable)
        found = open_index(cache, tmp_path, other_boot=False)
        self.durable_records = found["records"]
        assert self.durable_records != self.latest_records

    def put(self, image: bytes) -> None:
        """The disk as a power loss left it: `image` in data.mdb (in place, as the same
        file), the sync points as the sync left them."""
        fd = os.open(self.cache / "data.mdb", os.O_WRONLY)
        try:
            os.pwrite(fd, image, 0)
            os.ftruncate(fd, len(image))
        finally:
            os.close(fd)
        if self.points is not None:
            (self.cache / syncpoint.NAME).write_bytes(self.points)
        else:
            (self.cache / syncpoint.NAME).unlink(missing_ok=True)
        (self.cache / "clean-stop").unlink(missing_ok=True)

    def pages_changed(self) -> list[int]:
        length = max(len(self.durable), len(self.latest))
        durable, latest = self.durable.ljust(length, b"\0"), self.latest.ljust(length, b"\0")
        return [page for page in range(length // PAGE)
                if durable[page * PAGE:(page + 1) * PAGE] != latest[page * PAGE:(page + 1) * PAGE]]

    def image(self, pages: set[int]) -> bytes:
        """The file at the sync, with `pages` as the page cache holds them."""
        length = max(len(self.durable), len(self.latest))
        image = bytearray(self.durable.ljust(length, b"\0"))
        latest = self.latest.ljust(length, b"\0")
        for page in pages:
            image[page * PAGE:(page + 1) * PAGE] = latest[page * PAGE:(page + 1) * PAGE]
        return bytes(image)


@pytest.fixture
def crashed(tmp_path: Path) -> Crashed:
    return Crashed(tmp_path / "cache", tmp_path, seed=1)


@pytest.mark.parametrize("written_back", ["every page but the meta pages",
                                          "the meta pages alone", "every page",
                                          "random pages 1", "random pages 2", "random pages 3",
                                          "every page, meta page 0 a torn sector (zeros)"])
def test_a_power_loss_leaves_the_index_as_its_last_sync_made_it(
        crashed: Crashed, tmp_path: Path, written_back: str) -> None:
    changed = crashed.pages_changed()
    metas = {page for page in changed if page < 2}
    assert metas, "the commits after the sync wrote no meta page"
    if written_back == "every page but the meta pages":
        pages = set(changed) - metas
    elif written_back == "the meta pages alone":
        pages = metas
    elif written_back.startswith("every page"):
        pages = set(changed)
    else:
        rng = random.Random(written_back)
        pages = {page for page in changed if rng.random() < 0.5}
    image = crashed.image(pages)
    if written_back.endswith("(zeros)"):  # what some disks read back of a torn sector
        image = bytes(512) + image[512:]
    crashed.put(image)

    found = open_index(crashed.cache, tmp_path, other_boot=True)
    assert "error" not in found, found["error"]
    assert found["records"] == crashed.durable_records
    # where the newer meta page on the disk is the point's own, LMDB reads the point as it
    # is, its pages held: nothing to put back
    assert (found["restored"] is None) == (written_back == "every page but the meta pages")

    # and as that from then on: the next open, in the same boot, goes back no further
    again = open_index(crashed.cache, tmp_path, other_boot=True)
    assert again["records"] == crashed.durable_records


def test_a_kill_alone_keeps_every_commit(crashed: Crashed, tmp_path: Path) -> None:
    """The page cache outlives a crash of the process: what it holds is the index, even
    where a point to go back to was saved in another boot than the kill's."""
    crashed.put(crashed.latest)
    found = open_index(crashed.cache, tmp_path, other_boot=False)
    assert found["records"] == crashed.latest_records
    assert found["restored"] is None


def test_a_point_saved_for_another_file_is_not_put_back(crashed: Crashed,
                                                        tmp_path: Path) -> None:
    """An index file that is not the one the point was saved for (copied over it, made
    anew) is opened as it is."""
    crashed.put(crashed.latest)
    data = crashed.cache / "data.mdb"
    copy = data.with_name("copy")
    copy.write_bytes(data.read_bytes())
    copy.replace(data)
    found = open_index(crashed.cache, tmp_path, other_boot=True)
    assert found["records"] == crashed.latest_records
    assert found["restored"] is None


def test_an_index_on_a_disk_short_of_room_keeps_no_point(tmp_path: Path) -> None:
    """Held pages take room until the next sync: on a disk with less than
    syncpoint.LOW_ROOM free the index holds none, and so keeps no point that later commits
    may have overwritten pages of, which would be put back damaged."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=48m", "tmpfs", str(disk)], check=True)
    try:
        crashed = Crashed(disk / "cache", tmp_path, seed=2)
        assert crashed.points is None, "a point saved on a disk short of room"
        crashed.put(crashed.image(set(crashed.pages_changed()) - {0, 1}))
        found = open_index(crashed.cache, tmp_path, other_boot=True)
        assert found.get("restored") is None, found
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def test_a_disk_found_short_of_room_voids_the_point_before_its_pages_are_let_go(
        tmp_path: Path) -> None:
    """As the cache's disk fills (what the block cache measures before each write), the
    index stops holding: the point saved is made void first, so that none is left whose
    pages LMDB may reuse."""
    index = Index(tmp_path, 1 << 30, 65536)
    try:
        with index.write() as txn:
            txn.put(b"k", b"v", db=index.db["xattrs"])
        index.sync()
        points = tmp_path / syncpoint.NAME
        assert any(syncpoint.Point.unpack(points.read_bytes()[slot * syncpoint.SLOT:])
                   for slot in (0, 1))
        index.hold_sync_points(False)
        assert not any(syncpoint.Point.unpack(points.read_bytes()[slot * syncpoint.SLOT:])
                       for slot in (0, 1))
        with index.write() as txn:
            txn.put(b"k", b"w", db=index.db["xattrs"])
        index.sync()
        assert not any(syncpoint.Point.unpack(points.read_bytes()[slot * syncpoint.SLOT:])
                       for slot in (0, 1))
        index.hold_sync_points(True)  # room again: the next sync is a point
        with index.write() as txn:
            txn.put(b"k", b"x", db=index.db["xattrs"])
        index.sync()
        assert any(syncpoint.Point.unpack(points.read_bytes()[slot * syncpoint.SLOT:])
                   for slot in (0, 1))
    finally:
        index.close()


def test_an_index_closed_before_the_system_went_down_is_opened_as_it_is(
        tmp_path: Path) -> None:
    """A close syncs and saves its last state as the point: in the next boot there is
    nothing to put back, and nothing is said."""
    index = Index(tmp_path / "cache", 1 << 30, 65536)
    try:
        for value in (b"v", b"w", b"x"):
            with index.write() as txn:
                txn.put(b"k", value, db=index.db["xattrs"])
    finally:
        index.close()
    data = tmp_path / "cache" / "data.mdb"
    before = data.read_bytes()
    found = open_index(tmp_path / "cache", tmp_path, other_boot=True)
    assert found["restored"] is None
    records = found["records"]
    assert isinstance(records, dict) and ["6b", "78"] in records["xattrs"]
    assert data.read_bytes()[:2 * PAGE] == before[:2 * PAGE]


def test_a_point_of_a_run_with_room_is_void_once_the_disk_is_short(tmp_path: Path) -> None:
    """A point saved while the disk had room is made void by the next open on a disk
    short of it: that run holds no point, and may reuse the old one's pages."""
    disk = tmp_path / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=100m", "tmpfs", str(disk)], check=True)
    try:
        crashed = Crashed(disk / "cache", tmp_path, seed=3)
        assert crashed.points is not None and any(
            syncpoint.Point.unpack(crashed.points[slot * syncpoint.SLOT:]) for slot in (0, 1))
        free = os.statvfs(disk).f_bavail * os.statvfs(disk).f_frsize
        with open(disk / "filler", "wb") as filler:
            filler.truncate(free - syncpoint.LOW_ROOM // 2)
            os.posix_fallocate(filler.fileno(), 0, free - syncpoint.LOW_ROOM // 2)
        crashed.put(crashed.latest)
        open_index(crashed.cache, tmp_path, other_boot=False)  # a run on the short disk
        points = (crashed.cache / syncpoint.NAME).read_bytes()
        assert not any(syncpoint.Point.unpack(points[slot * syncpoint.SLOT:]) for slot in (0, 1))
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)
