"""POSIX conformance of the mount, rule by rule, as root and as another user.

The mount runs with allow_other (default_permissions is always on), so the
kernel checks permissions from the modes, owners and groups onitufs keeps
in its index, whatever the remotes can store. The other user is uid/gid
65534 (nobody), running small Python snippets through subprocess.
"""

from __future__ import annotations

import ctypes
import errno
import mmap
import os
import socket
import stat
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .conftest import Cloud, MakeCloud, snapshot

NOBODY = 65534
PYTHON = "/usr/bin/python3"  # one that nobody may run; the snippets need only the stdlib
UTIME_NOW, UTIME_OMIT = (1 << 30) - 1, (1 << 30) - 2
AT_FDCWD = -100


@pytest.fixture
def posix(make_cloud: MakeCloud) -> Iterator[Cloud]:
    cloud = make_cloud({"a": "rw"})
    cloud.mount("allow_other")
    os.chmod(cloud.mountpoint, 0o755)
    yield cloud


def as_nobody(code: str) -> str:
    """Run Python as uid/gid 65534 with no other groups; its stdout, or the errno name."""
    result = subprocess.run([PYTHON, "-c", textwrap.dedent(code)], capture_output=True, text=True,
                            user=NOBODY, group=NOBODY, extra_groups=[], cwd="/", timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def errno_of(code: str) -> str:
    """The errno name the statement raises as nobody, or 'ok'."""
    return as_nobody(f"""
        import errno, os
        try:
            {code}
            print("ok")
        except OSError as error:
            print(errno.errorcode[error.errno])
        """)


def fails(code: int, call: object, *args: object) -> None:
    with pytest.raises(OSError) as caught:
        call(*args)  # type: ignore[operator]
    assert caught.value.errno == code, caught.value


# 1. ownership and permissions

def test_modes_and_owners_are_kept(posix: Cloud) -> None:
    root = posix.mountpoint
    (root / "f").write_bytes(b"x")
    for mode in (0o4755, 0o2750, 0o1777, 0o0000, 0o0644):
        os.chmod(root / "f", mode)
        assert stat.S_IMODE(os.stat(root / "f").st_mode) == mode
    os.chown(root / "f", 1234, 4321)  # a chown clears setuid and setgid: chmod comes after
    os.chmod(root / "f", 0o6711)
    os.mkdir(root / "sticky")
    os.chmod(root / "sticky", 0o1777)
    posix.umount()
    posix.mount("allow_other")
    info = os.stat(root / "f")
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o6711, 1234, 4321)
    assert stat.S_IMODE(os.stat(root / "sticky").st_mode) == 0o1777


def test_another_user_gets_the_kernels_permission_checks(posix: Cloud) -> None:
    root = posix.mountpoint
    (root / "secret").write_bytes(b"root only")
    os.chmod(root / "secret", 0o600)
    (root / "shared").mkdir(mode=0o777)
    os.chmod(root / "shared", 0o1777)
    (root / "shared" / "roots-file").write_bytes(b"mine")
    (root / "readonly-dir").mkdir(mode=0o755)
    assert errno_of(f"open({str(root / 'secret')!r}).read()") == "EACCES"
    assert errno_of(f"open({str(root / 'readonly-dir' / 'new')!r}, 'w')") == "EACCES"
    assert errno_of(f"open({str(root / 'shared' / 'theirs')!r}, 'w').write('x')") == "ok"
    assert os.stat(root / "shared" / "theirs").st_uid == NOBODY
    assert os.stat(root / "shared" / "theirs").st_gid == NOBODY
    assert errno_of(f"os.unlink({str(root / 'shared' / 'roots-file')!r})") == "EPERM"  # sticky
    assert errno_of(f"os.chmod({str(root / 'secret')!r}, 0o777)") == "EPERM"
    assert errno_of(f"os.chown({str(root / 'shared' / 'theirs')!r}, 0, -1)") == "EPERM"
    assert errno_of(f"os.chown({str(root / 'shared' / 'theirs')!r}, -1, 0)") == "EPERM"
    assert errno_of(f"os.chmod({str(root / 'shared' / 'theirs')!r}, 0o640)") == "ok"
    assert errno_of(f"os.unlink({str(root / 'shared' / 'theirs')!r})") == "ok"


def test_a_write_by_another_user_clears_setuid(posix: Cloud) -> None:
    path = posix.mountpoint / "program"
    path.write_bytes(b"#!/bin/sh\n")
    os.chmod(path, 0o6777)
    with open(path, "ab") as handle:  # root keeps the bits (CAP_FSETID)
        handle.write(b"# root\n")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o6777
    assert errno_of(f"open({str(path)!r}, 'a').write('# nobody')") == "ok"
    assert stat.S_IMODE(os.stat(path).st_mode) & 0o6000 == 0


def test_setgid_folders_pass_their_group_on(posix: Cloud) -> None:
    folder = posix.mountpoint / "group-folder"
    folder.mkdir()
    os.chown(folder, 0, 4242)
    os.chmod(folder, 0o2775)
    (folder / "file").write_bytes(b"")
    (folder / "sub").mkdir()
    assert os.stat(folder / "file").st_gid == 4242
    assert os.stat(folder / "sub").st_gid == 4242
    assert os.stat(folder / "sub").st_mode & stat.S_ISGID


# 2. hard links

def test_hard_links(posix: Cloud) -> None:
    root = posix.mountpoint
    (root / "d").mkdir()
    (root / "one").write_bytes(b"shared content")
    os.link(root / "one", root / "two")
    os.link(root / "one", root / "d" / "three")
    assert [os.stat(root / n).st_nlink for n in ("one", "two", "d/three")] == [3, 3, 3]
    assert len({os.stat(root / n).st_ino for n in ("one", "two", "d/three")}) == 1
    with open(root / "two", "ab") as handle:
        handle.write(b", appended")
    assert (root / "d" / "three").read_bytes() == b"shared content, appended"
    (root / "other").write_bytes(b"other")
    os.rename(root / "other", root / "two")  # rename over one of the names
    assert os.stat(root / "one").st_nlink == 2
    os.unlink(root / "one")
    assert os.stat(root / "d" / "three").st_nlink == 1
    fails(errno.EPERM, os.link, root / "d", root / "dir-link")
    fails(errno.EEXIST, os.link, root / "two", root / "d" / "three")
    (root / "a").write_bytes(b"replicated twice")
    os.link(root / "a", root / "b")
    posix.umount()
    remote = posix.remotes["a"]
    assert (remote / "a").read_bytes() == (remote / "b").read_bytes() == b"replicated twice"
    assert (remote / "d" / "three").read_bytes() == b"shared content, appended"


# 3. special files

def test_special_files_live_in_the_index(posix: Cloud) -> None:
    root = posix.mountpoint
    os.mkfifo(root / "fifo", 0o640)
    os.mknod(root / "char", 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    os.mknod(root / "block", 0o600 | stat.S_IFBLK, os.makedev(7, 0))
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(root / "socket"))
    server.close()
    kinds = {name: stat.S_IFMT(os.lstat(root / name).st_mode)
             for name in ("fifo", "char", "block", "socket")}
    assert kinds == {"fifo": stat.S_IFIFO, "char": stat.S_IFCHR, "block": stat.S_IFBLK,
                     "socket": stat.S_IFSOCK}
    assert os.lstat(root / "char").st_rdev == os.makedev(1, 3)
    posix.umount()
    posix.mount("allow_other")
    assert stat.S_ISFIFO(os.lstat(root / "fifo").st_mode)
    assert os.lstat(root / "block").st_rdev == os.makedev(7, 0)
    posix.umount()
    assert snapshot(posix.remotes["a"]) == {}  # not content: never replicated


# 4. times

def utimensat(path: Path, atime: tuple[int, int], mtime: tuple[int, int]) -> None:
    class Timespec(ctypes.Structure):
        _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]

    times = (Timespec * 2)()
    for slot, (seconds, nanoseconds) in enumerate((atime, mtime)):
        times[slot].tv_sec, times[slot].tv_nsec = seconds, nanoseconds
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.utimensat(AT_FDCWD, os.fsencode(path), times, 0) != 0:
        raise OSError(ctypes.get_errno(), "utimensat")


def test_times(posix: Cloud) -> None:
    path = posix.mountpoint / "timed"
    path.write_bytes(b"t")
    os.utime(path, ns=(1_111_111_111_123_456_789, 1_222_222_222_987_654_321))
    info = os.stat(path)
    assert (info.st_atime_ns, info.st_mtime_ns) == (1_111_111_111_123_456_789,
                                                    1_222_222_222_987_654_321)
    utimensat(path, (0, UTIME_OMIT), (5, 123))  # atime kept, mtime set
    info = os.stat(path)
    assert (info.st_atime_ns, info.st_mtime_ns) == (1_111_111_111_123_456_789, 5_000_000_123)
    before = time.time_ns()
    utimensat(path, (0, UTIME_NOW), (0, UTIME_OMIT))
    assert os.stat(path).st_atime_ns >= before - 10**9
    changes: list[Callable[[], object]] = [
        lambda: os.chmod(path, 0o600), lambda: os.chown(path, 7, 7),
        lambda: os.link(path, path.with_name("timed-link")),
        lambda: os.setxattr(path, "user.k", b"v"),
        lambda: os.rename(path, path.with_name("timed2"))]
    for change in changes:
        ctime = os.stat(path if path.exists() else path.with_name("timed2")).st_ctime_ns
        time.sleep(0.01)
        change()
        now = os.stat(path if path.exists() else path.with_name("timed2")).st_ctime_ns
        assert now > ctime


# 5. names and paths

def test_any_byte_but_slash_and_nul_in_a_name(posix: Cloud) -> None:
    everything = bytes(b for b in range(1, 256) if b != ord("/"))
    names = [everything[i:i + 200] for i in range(0, len(everything), 200)] + [b"n" * 255]
    root = os.fsencode(posix.mountpoint)
    for name in names:
        with open(os.path.join(root, name), "wb") as handle:
            handle.write(name)
    assert set(names) <= set(os.listdir(root))
    fails(errno.ENAMETOOLONG, open, os.path.join(root, b"n" * 256), "wb")
    deep = os.path.join(root, *[b"d" * 200] * 25)  # over PATH_MAX as one string
    fails(errno.ENAMETOOLONG, os.makedirs, deep)
    posix.umount()
    remote = os.fsencode(posix.remotes["a"])
    for name in names:
        with open(os.path.join(remote, name), "rb") as handle:
            assert handle.read() == name


# 6. rename semantics

def test_rename_rules(posix: Cloud) -> None:
    root = posix.mountpoint
    (root / "empty").mkdir()
    (root / "full").mkdir()
    (root / "full" / "x").write_bytes(b"")
    (root / "moving").mkdir()
    (root / "moving" / "y").write_bytes(b"y")
    os.rename(root / "moving", root / "empty")  # over an empty folder
    assert (root / "empty" / "y").read_bytes() == b"y"
    fails(errno.ENOTEMPTY, os.rename, root / "empty", root / "full")
    fails(errno.EINVAL, os.rename, root / "full", root / "full" / "inside")
    (root / "file").write_bytes(b"f")
    fails(errno.ENOTDIR, os.rename, root / "full", root / "file")
    fails(errno.EISDIR, os.rename, root / "file", root / "full")
    fails(errno.ENOENT, os.rename, root / "missing", root / "anything")


# 7. mmap, O_APPEND, O_TRUNC, O_EXCL, fallocate

def test_shared_writable_mmap(posix: Cloud) -> None:
    path = posix.mountpoint / "mapped"
    path.write_bytes(bytes(3 * 65536))
    with open(path, "r+b") as handle, mmap.mmap(handle.fileno(), 0) as mapped:
        mapped[100:105] = b"hello"
        mapped[70000:70005] = b"world"
        mapped.flush()
    data = path.read_bytes()
    assert data[100:105] == b"hello" and data[70000:70005] == b"world"
    posix.umount()
    remote = (posix.remotes["a"] / "mapped").read_bytes()
    assert remote[100:105] == b"hello" and remote[70000:70005] == b"world"


def test_o_append_from_two_processes(posix: Cloud) -> None:
    path = posix.mountpoint / "log"
    writer = textwrap.dedent(f"""
        import os, sys
        fd = os.open({str(path)!r}, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
        for i in range(300):
            os.write(fd, f"{{sys.argv[1]}} {{i:04}}\\n".encode())
        os.close(fd)
        """)
    processes = [subprocess.Popen([sys.executable, "-c", writer, tag]) for tag in "AB"]
    assert [process.wait() for process in processes] == [0, 0]
    lines = path.read_bytes().splitlines()
    assert len(lines) == 600
    assert sorted(lines) == sorted(f"{t} {i:04}".encode() for t in "AB" for i in range(300))


def test_open_flags_and_fallocate(posix: Cloud) -> None:
    path = posix.mountpoint / "flags"
    path.write_bytes(b"a long first version")
    fails(errno.EEXIST, os.open, path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    fd = os.open(path, os.O_WRONLY | os.O_TRUNC)
    os.write(fd, b"short")
    os.posix_fallocate(fd, 0, 100_000)
    os.close(fd)
    assert path.read_bytes() == b"short" + bytes(100_000 - 5)


# 8. extended attributes

def test_user_xattrs_are_kept_and_other_namespaces_refused(posix: Cloud) -> None:
    path = posix.mountpoint / "tagged"
    path.write_bytes(b"x")
    os.setxattr(path, "user.author", b"ann")
    os.setxattr(path, "user.empty", b"")
    os.setxattr(path, "user.binary", bytes(range(256)))
    posix.umount()
    posix.mount("allow_other")
    assert os.getxattr(path, "user.binary") == bytes(range(256))
    assert sorted(os.listxattr(path)) == ["user.author", "user.binary", "user.empty"]
    fails(errno.EOPNOTSUPP, os.setxattr, path, "security.selinux", b"x")
    fails(errno.EEXIST, os.setxattr, path, "user.author", b"bob", os.XATTR_CREATE)
    fails(errno.ENODATA, os.setxattr, path, "user.none", b"x", os.XATTR_REPLACE)


def test_attributes_reach_remotes_that_keep_them(posix: Cloud) -> None:
    path = posix.mountpoint / "described"
    path.write_bytes(b"content that is not sent again")
    os.setxattr(path, "user.first", b"1")
    (posix.mountpoint / "folder").mkdir()
    posix.wait_synced()
    remote = posix.remotes["a"] / "described"
    assert os.getxattr(remote, "user.first") == b"1"
    uploaded = os.stat(remote).st_ino
    os.chmod(path, 0o600)
    os.utime(path, ns=(10**18, 10**18))
    os.setxattr(path, "user.second", b"2")
    os.removexattr(path, "user.first")
    os.setxattr(posix.mountpoint / "folder", "user.folder", b"f")
    os.chmod(posix.mountpoint / "folder", 0o750)
    posix.umount()
    info = os.stat(remote)
    assert info.st_ino == uploaded  # attributes only: nothing uploaded again
    assert (stat.S_IMODE(info.st_mode), info.st_mtime_ns) == (0o600, 10**18)
    assert os.listxattr(remote) == ["user.second"]
    folder = posix.remotes["a"] / "folder"
    assert os.getxattr(folder, "user.folder") == b"f"
    assert stat.S_IMODE(os.stat(folder).st_mode) == 0o750


def test_reading_updates_atime_as_relatime_does(posix: Cloud) -> None:
    path = posix.mountpoint / "read-me"
    path.write_bytes(b"x")
    os.utime(path, ns=(1_000_000_000, 2_000_000_000))  # atime older than mtime
    fd = os.open(path, os.O_RDONLY)
    os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    os.read(fd, 1)
    os.close(fd)
    assert os.stat(path).st_atime_ns > 2_000_000_000
