"""File operations through a real mount, and the remotes they must produce."""

from __future__ import annotations

import ctypes
import errno
import os
import random
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from .conftest import Cloud, MakeCloud, snapshot, wait_for


def model_ops(root: Path) -> None:
    """One sequence of everyday operations; applied to the mount and to a plain folder."""
    rng = random.Random(7)
    (root / "docs").mkdir()
    (root / "docs" / "notes.txt").write_bytes(b"first line\n")
    with open(root / "docs" / "notes.txt", "ab") as handle:  # append
        handle.write(b"second line\n")
    (root / "photos" / "2024").mkdir(parents=True)
    for index in range(20):
        (root / "photos" / "2024" / f"img{index:02}.jpg").write_bytes(rng.randbytes(10_000 + index))
    big = rng.randbytes(3 * 1024 * 1024 + 123)
    (root / "big.bin").write_bytes(big)
    with open(root / "big.bin", "r+b") as handle:  # overwrite in the middle, across blocks
        handle.seek(1024 * 1024 - 10)
        handle.write(b"X" * 5000)
    with open(root / "sparse", "wb") as handle:  # a hole, then data
        handle.seek(2 * 1024 * 1024 + 7)
        handle.write(b"tail")
    (root / "rewritten").write_bytes(b"a long first version")
    (root / "rewritten").write_bytes(b"short")  # O_TRUNC
    (root / "short").write_bytes(b"0123456789" * 1000)
    os.truncate(root / "short", 1234)
    os.truncate(root / "sparse", 3 * 1024 * 1024)  # grow with zeros
    (root / "to-rename.txt").write_bytes(b"moving")
    os.rename(root / "to-rename.txt", root / "docs" / "renamed.txt")
    (root / "victim.txt").write_bytes(b"old content")
    (root / "winner.txt").write_bytes(b"new content")
    os.rename(root / "winner.txt", root / "victim.txt")  # rename over an existing file
    (root / "gone.txt").write_bytes(b"bye")
    os.unlink(root / "gone.txt")
    (root / "empty-dir").mkdir()
    (root / "removed-dir").mkdir()
    os.rmdir(root / "removed-dir")
    os.rename(root / "photos", root / "pictures")  # a folder with content
    os.symlink("docs/notes.txt", root / "link-to-notes")
    os.symlink("/nonexistent/target", root / "dangling")
    (root / "empty-file").write_bytes(b"")
    (root / "name with spaces & ünïcödé.txt").write_bytes(b"odd names work")


def test_operations_reach_every_remote(make_cloud: MakeCloud, tmp_path: Path) -> None:
    cloud = make_cloud()
    model = tmp_path / "model"
    model.mkdir()
    model_ops(model)
    cloud.mount()
    model_ops(cloud.mountpoint)
    assert snapshot(cloud.mountpoint) == snapshot(model)
    assert (cloud.mountpoint / "docs" / "notes.txt").read_bytes() == b"first line\nsecond line\n"
    assert os.readlink(cloud.mountpoint / "link-to-notes") == "docs/notes.txt"
    assert (cloud.mountpoint / "link-to-notes").read_bytes() == b"first line\nsecond line\n"
    cloud.umount()
    expected = snapshot(model)
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == expected, f"remote {name} differs from what was written"


def test_errors_have_the_right_errno(cloud: Cloud) -> None:
    root = cloud.mountpoint
    (root / "dir").mkdir()
    (root / "dir" / "file").write_bytes(b"x")
    (root / "file").write_bytes(b"x")

    def fails(code: int, call: object, *args: object) -> None:
        with pytest.raises(OSError) as caught:
            call(*args)  # type: ignore[operator]
        assert caught.value.errno == code, f"{call}{args}: {caught.value}"

    fails(errno.ENOENT, os.stat, root / "missing")
    fails(errno.ENOENT, os.unlink, root / "missing")
    fails(errno.EEXIST, os.mkdir, root / "dir")
    fails(errno.EEXIST, os.open, root / "file", os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fails(errno.ENOTEMPTY, os.rmdir, root / "dir")
    fails(errno.EISDIR, os.unlink, root / "dir")
    fails(errno.EISDIR, open, root / "dir", "wb")
    fails(errno.ENOTDIR, os.rmdir, root / "file")
    fails(errno.ENOTDIR, os.mkdir, root / "file" / "sub")
    fails(errno.ENOTDIR, os.listdir, root / "file")
    fails(errno.ENAMETOOLONG, open, root / ("n" * 256), "wb")
    fails(errno.EINVAL, os.rename, root / "dir", root / "dir" / "inside")
    fails(errno.EISDIR, os.rename, root / "file", root / "dir")
    fails(errno.ENOTDIR, os.rename, root / "dir", root / "file")
    (root / "other").mkdir()
    (root / "other" / "x").write_bytes(b"")
    fails(errno.ENOTEMPTY, os.rename, root / "dir", root / "other")
    (root / ("n" * 255)).write_bytes(b"longest name")  # 255 bytes is allowed


def test_attributes_and_xattrs(cloud: Cloud) -> None:
    path = cloud.mountpoint / "file"
    path.write_bytes(b"data")
    os.chmod(path, 0o640)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
    os.utime(path, ns=(1_000_000_123, 2_000_000_456))
    info = os.stat(path)
    assert (info.st_atime_ns, info.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    os.chown(path, 1234, 5678)
    assert (os.stat(path).st_uid, os.stat(path).st_gid) == (1234, 5678)
    os.setxattr(path, "user.color", b"blue")
    assert os.getxattr(path, "user.color") == b"blue"
    assert "user.color" in os.listxattr(path)
    os.removexattr(path, "user.color")
    with pytest.raises(OSError) as caught:
        os.getxattr(path, "user.color")
    assert caught.value.errno == errno.ENODATA
    statfs = os.statvfs(cloud.mountpoint)
    assert statfs.f_namemax == 255 and statfs.f_bavail > 0


def test_replicas_xattr_names_holders_and_pending(make_cloud: MakeCloud) -> None:
    cloud = make_cloud(upload_delay="1h")
    cloud.mount()
    path = cloud.mountpoint / "report.txt"
    path.write_bytes(b"quarterly")
    replicas = os.getxattr(path, "user.onitufs.replicas").decode()
    assert replicas.splitlines() == ["a: pending", "b: pending", "c: pending"]
    os.setxattr(cloud.mountpoint, "user.onitufs.flush", b"1")
    cloud.wait_synced()
    replicas = os.getxattr(path, "user.onitufs.replicas").decode()
    assert replicas.splitlines() == ["a: held", "b: held", "c: held"]


def test_shell_tools_work(cloud: Cloud, tmp_path: Path) -> None:
    source = tmp_path / "source"
    (source / "sub").mkdir(parents=True)
    for index in range(30):
        (source / "sub" / f"f{index}").write_bytes(os.urandom(5000 * index))
    os.symlink("sub/f1", source / "link")
    subprocess.run(["rsync", "-a", f"{source}/", str(cloud.mountpoint / "copy")], check=True)
    assert snapshot(cloud.mountpoint / "copy") == snapshot(source)
    subprocess.run(["cp", "-a", str(source), str(cloud.mountpoint / "cp-copy")], check=True)
    assert snapshot(cloud.mountpoint / "cp-copy") == snapshot(source)
    archive = tmp_path / "copy.tar"
    subprocess.run(["tar", "-cf", str(archive), "-C", str(cloud.mountpoint), "copy"], check=True)
    subprocess.run(["tar", "-xf", str(archive), "-C", str(cloud.mountpoint / "cp-copy")],
                   check=True)
    assert snapshot(cloud.mountpoint / "cp-copy" / "copy") == snapshot(source)
    shutil.rmtree(cloud.mountpoint / "cp-copy")
    assert not (cloud.mountpoint / "cp-copy").exists()
    cloud.wait_synced()
    for remote in cloud.remotes.values():
        wait_for(lambda remote=remote: snapshot(remote / "copy") == snapshot(source),  # type: ignore[misc]
                 what="rsync's copy on every remote")
        assert not (remote / "cp-copy").exists()


def test_unlinked_open_file_stays_readable(cloud: Cloud) -> None:
    path = cloud.mountpoint / "open-then-unlinked"
    path.write_bytes(b"still here")
    with open(path, "rb") as handle:
        os.unlink(path)
        assert not path.exists()
        assert handle.read() == b"still here"
    cloud.wait_synced()
    for remote in cloud.remotes.values():
        assert not (remote / "open-then-unlinked").exists()


def test_a_deleted_files_blocks_leave_the_cache_once_nothing_holds_it(cloud: Cloud) -> None:
    """At once for files nobody holds open (the kernel forgets them), at the last close
    for one held open, which stays readable until then; files kept are left alone."""
    mib = 1024 * 1024
    contents = {name: os.urandom(4 * mib) for name in ("held", "gone", "also-gone", "kept")}
    for name, content in contents.items():
        (cloud.mountpoint / name).write_bytes(content)
    cloud.wait_synced()
    assert cloud.status()["cache_bytes"] >= 16 * mib
    with open(cloud.mountpoint / "held", "rb") as held:
        for name in ("held", "gone", "also-gone"):
            (cloud.mountpoint / name).unlink()
        wait_for(lambda: cloud.status()["cache_bytes"] < 9 * mib, what="two files' blocks to go")
        assert cloud.status()["cache_bytes"] >= 8 * mib  # the one held open, and the one kept
        assert held.read() == contents["held"]
    wait_for(lambda: cloud.status()["cache_bytes"] < 5 * mib, what="the held file's blocks to go")
    assert (cloud.mountpoint / "kept").read_bytes() == contents["kept"]
    assert sorted(os.listdir(cloud.mountpoint)) == ["kept"]


RENAME_NOREPLACE, RENAME_EXCHANGE = 1, 2


def renameat2(old: Path, new: Path, flags: int) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    at_fdcwd = -100
    if libc.renameat2(at_fdcwd, os.fsencode(old), at_fdcwd, os.fsencode(new), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def test_rename_exchange_and_noreplace_reach_the_remotes(cloud: Cloud) -> None:
    root = cloud.mountpoint
    (root / "left").write_bytes(b"was left")
    (root / "right").write_bytes(b"was right")
    (root / "dir").mkdir()
    (root / "dir" / "inside").write_bytes(b"in dir")
    cloud.wait_synced()
    renameat2(root / "left", root / "right", RENAME_EXCHANGE)
    renameat2(root / "dir", root / "left", RENAME_EXCHANGE)  # a folder and a file swap
    with pytest.raises(OSError) as caught:
        renameat2(root / "right", root / "left", RENAME_NOREPLACE)
    assert caught.value.errno == errno.EEXIST
    expected = {"right": ("file", b"was left"), "left": ("dir", b""),
                "left/inside": ("file", b"in dir"), "dir": ("file", b"was right")}
    assert snapshot(root) == expected
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == expected, name


def test_a_file_takes_the_name_of_the_folder_it_was_in(cloud: Cloud) -> None:
    """On the remotes the file is still inside that folder, which has to go before the file
    can take its name: the file moves out first (a random-operations run found this)."""
    root = cloud.mountpoint
    (root / "d0" / "d2").mkdir(parents=True)
    (root / "d0" / "f4").write_bytes(b"moves up")
    (root / "d0" / "d2" / "f6").write_bytes(b"deep, moves up")
    cloud.wait_synced()
    (root / "d0" / "f4").rename(root / "f1")
    (root / "d0" / "d2" / "f6").rename(root / "d0" / "d2.txt")
    (root / "d0" / "d2").rmdir()
    (root / "d0" / "d2.txt").rename(root / "d0" / "d2")
    (root / "d0" / "d2").rename(root / "d2")
    (root / "d0").rmdir()
    (root / "f1").rename(root / "d0")
    expected = {"d0": ("file", b"moves up"), "d2": ("file", b"deep, moves up")}
    assert snapshot(root) == expected
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == expected, name


def test_sequential_reads_come_a_cache_block_at_a_time(make_cloud: MakeCloud) -> None:
    # The kernel's default read-ahead would split every 2 MiB block into 16 requests.
    cloud = make_cloud({"a": "rw"}, block_size="2 MiB")
    cloud.mount()
    device = os.stat(cloud.mountpoint).st_dev
    read_ahead = Path(f"/sys/class/bdi/{os.major(device)}:{os.minor(device)}/read_ahead_kb")
    assert read_ahead.read_text().strip() == "2048"


def test_whole_blocks_written_then_changed_in_place_and_cut(cloud: Cloud) -> None:
    """1 MiB writes at block boundaries (the cache's block size) are kept as the kernel
    brought them: written into again, cut, or rewritten while the previous ones are on
    their way to LMDB, the file holds what was written last, here and on every remote."""
    mib = 1024 * 1024
    path = cloud.mountpoint / "blocks"
    expected = bytearray()
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        for number in range(80):  # past half the write buffer: some blocks are in flight
            block = os.urandom(mib)
            os.pwrite(fd, block, number * mib)
            expected[number * mib:(number + 1) * mib] = block
        for offset in (5, mib - 3, 40 * mib + 1000):  # into whole blocks, and across two
            patch = os.urandom(7)
            os.pwrite(fd, patch, offset)
            expected[offset:offset + 7] = patch
        for number in (0, 1, 79):  # whole blocks again, over buffered or stored ones
            block = os.urandom(mib)
            os.pwrite(fd, block, number * mib)
            expected[number * mib:(number + 1) * mib] = block
        os.ftruncate(fd, 60 * mib + 12345)  # through a whole block
        del expected[60 * mib + 12345:]
        os.fsync(fd)
    finally:
        os.close(fd)
    assert path.read_bytes() == expected
    cloud.umount()
    for remote in cloud.remotes.values():
        assert (remote / "blocks").read_bytes() == expected
