"""Edits that keep a file's size and time (made within the same second, or with the time
put back) are never taken for the same file."""

from __future__ import annotations

import contextlib
import fcntl
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path

from onitufs_local import watch

from onitufs.testing.backdoor import FolderBackdoor

from .conftest import Cloud, MakeCloud, run, two_machines, versions, wait_for


def test_two_mounts_writing_one_file_in_one_second_keep_both(make_cloud: MakeCloud) -> None:
    first, second = two_machines(make_cloud)
    (first.mountpoint / "f").write_bytes(b"FIRST")
    (second.mountpoint / "f").write_bytes(b"SECON")
    both = [b"FIRST", b"SECON"]
    clouds: list[Cloud] = [first, second]
    for cloud in clouds:
        wait_for(lambda cloud=cloud: versions(cloud.mountpoint, "f") == both,  # type: ignore[misc]
                 timeout=30, what="both versions in each mount")
    for cloud in clouds:
        cloud.wait_synced()
    for cloud in clouds:
        cloud.umount()
    assert versions(first.remotes["shared"], "f") == both
    for cloud in clouds:
        assert versions(cloud.remotes["mine"], "f") == both
    # a later edit in one mount replaces one version, never the other
    first.mount()
    second.mount()
    (first.mountpoint / "f").write_bytes(b"later")
    for cloud in clouds:
        wait_for(lambda cloud=cloud: b"later" in versions(cloud.mountpoint, "f"),  # type: ignore[misc]
                 timeout=30, what="the later edit everywhere")
        assert len(versions(cloud.mountpoint, "f")) == 2
    for cloud in clouds:
        cloud.wait_synced()
        cloud.umount()
    assert len(versions(first.remotes["shared"], "f")) == 2


def test_a_direct_edit_on_a_remote_in_the_same_second_is_kept(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    (cloud.mountpoint / "f").write_bytes(b"MOUNT")
    (cloud.remotes["a"] / "f").write_bytes(b"REMOT")
    wait_for(lambda: versions(cloud.mountpoint, "f") == [b"MOUNT", b"REMOT"], timeout=30,
             what="both versions in the mount")
    cloud.wait_synced()
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert versions(remote, "f") == [b"MOUNT", b"REMOT"], name
    result = run("verify", cloud.config, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert " 0 damaged" in result.stdout, result.stdout


def test_a_copy_already_on_a_remote_is_recognised_by_its_content(make_cloud: MakeCloud) -> None:
    """A remote that already holds the same file (put there by someone else) is not a
    conflict; one whose same-size file differs is."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    same, other = os.urandom(100_000), os.urandom(100_000)
    (cloud.remotes["a"] / "same.bin").write_bytes(same)
    (cloud.remotes["b"] / "same.bin").write_bytes(same)
    (cloud.remotes["a"] / "other.bin").write_bytes(same)
    (cloud.remotes["b"] / "other.bin").write_bytes(other)
    stamp = (cloud.remotes["a"] / "other.bin").stat().st_mtime_ns
    os.utime(cloud.remotes["b"] / "other.bin", ns=(stamp, stamp))  # same size, same time
    cloud.mount()
    wait_for(lambda: len(versions(cloud.mountpoint, "other.bin")) == 2, timeout=30,
             what="both versions of other.bin")
    assert versions(cloud.mountpoint, "other.bin") == sorted([same, other])
    assert versions(cloud.mountpoint, "same.bin") == [same]
    cloud.wait_synced()
    cloud.umount()


def rewrite_in_place(remote: Path, name: str, content: bytes) -> None:
    """Same-size content written over a file's own bytes, its time put back (touch -r)."""
    before = (remote / name).stat()
    FolderBackdoor(remote).rewrite_in_place(name, content)
    after = (remote / name).stat()
    assert (after.st_ino, after.st_size, after.st_mtime_ns) == \
        (before.st_ino, before.st_size, before.st_mtime_ns)


def test_content_changed_in_place_with_its_time_put_back_is_kept_beside(
        make_cloud: MakeCloud) -> None:
    """An edit made so (a tag editor that keeps times), or a program gone wrong: which, only
    its owner can tell, so neither takes the other's place. Mounted, and while unmounted."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    (cloud.mountpoint / "f").write_bytes(b"first version")
    cloud.wait_synced()
    assert (cloud.mountpoint / "f").read_bytes() == b"first version"
    rewrite_in_place(cloud.remotes["a"], "f", b"edited there!")
    both = [b"edited there!", b"first version"]
    wait_for(lambda: versions(cloud.mountpoint, "f") == both, timeout=30,
             what="both versions in the mount")
    cloud.wait_synced()
    assert (cloud.mountpoint / "f").read_bytes() == b"first version"
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert versions(remote, "f") == both, name
    rewrite_in_place(cloud.remotes["b"], "f", b"while offline")
    cloud.mount()
    three = sorted([*both, b"while offline"])
    wait_for(lambda: versions(cloud.mountpoint, "f") == three, timeout=30,
             what="the offline change beside them")
    cloud.wait_synced()
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert versions(remote, "f") == three, name


def test_a_chmod_or_a_link_on_a_remote_uploads_nothing_again(make_cloud: MakeCloud) -> None:
    """Its ctime moves, its content does not: read and compared, it is no new version, and
    what the remote holds still counts as the file (a later delete in the mount goes)."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    content = os.urandom(3 << 20)
    (cloud.mountpoint / "f").write_bytes(content)
    (cloud.mountpoint / "g").write_bytes(b"g")
    cloud.wait_synced()
    copies = {name: (remote / "f").stat().st_ino for name, remote in cloud.remotes.items()}
    time.sleep(0.05)
    os.chmod(cloud.remotes["a"] / "f", 0o600)
    os.link(cloud.remotes["a"] / "g", cloud.root / "g-link")
    for name in ("f", "g"):  # compared with what the mount holds
        wait_for(lambda name=name: f"remote a: get_chunk {name} " in cloud.log,  # type: ignore[misc]
                 timeout=30, what=f"{name} read to be compared")
    cloud.wait_synced()
    assert (cloud.mountpoint / "f").read_bytes() == content
    assert {name: (remote / "f").stat().st_ino for name, remote in cloud.remotes.items()} \
        == copies, "uploaded again"
    assert cloud.log.count("start_upload f\n") == 2, "uploaded again"
    assert "changed there behind the same token" not in cloud.log
    assert versions(cloud.mountpoint, "f") == [content]
    # The chmod there becomes the file's mode everywhere: b's set_attrs is queued once the
    # comparison is done, which the wait for the remotes above may have come before.
    wait_for(lambda: modes(cloud, "f") == {"mount": 0o600, "a": 0o600, "b": 0o600},
             what="a's mode everywhere")
    (cloud.mountpoint / "f").unlink()
    (cloud.mountpoint / "g").unlink()
    cloud.wait_synced()
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert not (remote / "f").exists() and not (remote / "g").exists(), name
    assert (cloud.root / "g-link").read_bytes() == b"g"


def modes(cloud: Cloud, name: str) -> dict[str, int]:
    """The permission bits of `name` in the mount and in each remote."""
    folders = {"mount": cloud.mountpoint, **cloud.remotes}
    return {where: stat.S_IMODE((folder / name).stat().st_mode)
            for where, folder in folders.items()}


def replicated_file(cloud: Cloud) -> Cloud:
    """The cloud mounted, its file "f" on every remote, and a tick of their clocks past
    (a change there moves its ctime)."""
    cloud.mount()
    (cloud.mountpoint / "f").write_bytes(b"content")
    cloud.wait_synced()
    time.sleep(0.05)
    return cloud


def test_a_chmod_in_the_mount_after_one_on_a_remote_is_the_mode_everywhere(
        make_cloud: MakeCloud) -> None:
    """Whichever the mount hears of first, the later chmod wins on every side."""
    cloud = replicated_file(make_cloud({"a": "rw", "b": "rw"}))
    os.chmod(cloud.remotes["a"] / "f", 0o600)
    os.chmod(cloud.mountpoint / "f", 0o640)
    time.sleep(1)  # the listing of a has the first chmod by now
    cloud.wait_synced()
    assert modes(cloud, "f") == {"mount": 0o640, "a": 0o640, "b": 0o640}
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert stat.S_IMODE((remote / "f").stat().st_mode) == 0o640, name


def test_a_chmod_on_a_remote_that_only_keeps_copies_is_undone(make_cloud: MakeCloud) -> None:
    cloud = replicated_file(make_cloud({"a": "rw", "backup": "w"}))
    os.chmod(cloud.remotes["backup"] / "f", 0o600)
    wait_for(lambda: modes(cloud, "f")["backup"] == 0o644, timeout=30,
             what="the mount's mode set on the backup again")
    assert modes(cloud, "f") == {"mount": 0o644, "a": 0o644, "backup": 0o644}
    cloud.umount()


def test_a_chmod_on_a_remote_of_a_file_deleted_in_the_mount_lets_the_delete_go(
        make_cloud: MakeCloud) -> None:
    """The delete has not reached that remote yet (upload_delay): what it holds, compared
    with the checksum kept of it, is the version deleted, not an edit that would bring
    the file back."""
    cloud = replicated_file(make_cloud({"a": "rw", "b": "rw"}, upload_delay="3s"))
    (cloud.mountpoint / "f").unlink()
    os.chmod(cloud.remotes["a"] / "f", 0o600)
    wait_for(lambda: "remote a: get_chunk f " in cloud.log, what="a's copy compared")
    cloud.wait_synced()
    assert not (cloud.mountpoint / "f").exists()
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert not (remote / "f").exists(), name


def test_a_file_read_right_after_a_chmod_on_its_only_remote(make_cloud: MakeCloud) -> None:
    """The read finds the remote's copy changed (its ctime) before any listing does: it
    is compared there and then, and the read goes on."""
    cloud = make_cloud({"a": "rw"}, cache_size="1 MiB", block_size="64 KiB")
    cloud.mount()
    content = cloud.write_evicted("only", 4 * 1024 * 1024)
    cloud.mount()
    time.sleep(0.05)
    os.chmod(cloud.remotes["a"] / "only", 0o600)
    assert (cloud.mountpoint / "only").read_bytes() == content
    cloud.umount()
    assert "damaged" not in cloud.log
    assert (cloud.remotes["a"] / "only").read_bytes() == content


def test_a_file_deleted_in_the_mount_and_edited_in_place_there_keeps_the_edit(
        make_cloud: MakeCloud) -> None:
    """Deleted in the mount while a remote rewrites it in place with its time put back,
    before the delete reaches that remote (held back by upload_delay): the edit wins, as
    a visible edit would, and no remote loses it."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="5s")
    cloud.mount()
    (cloud.mountpoint / "f").write_bytes(b"first version")
    cloud.wait_synced(timeout=60)
    (cloud.mountpoint / "f").unlink()
    rewrite_in_place(cloud.remotes["a"], "f", b"edited there!")
    wait_for(lambda: (cloud.mountpoint / "f").exists(), timeout=30, what="the edit back")
    cloud.wait_synced(timeout=60)
    assert (cloud.mountpoint / "f").read_bytes() == b"edited there!"
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert (remote / "f").read_bytes() == b"edited there!", name


def test_an_only_copy_edited_in_place_with_its_time_put_back_takes_the_name(
        make_cloud: MakeCloud) -> None:
    """The mount's version is held nowhere else (its only remote, the cache evicted): the
    edit is all there is of the file, so it is the file, not a conflict copy beside a name
    that no read could serve."""
    cloud = make_cloud({"a": "rw"}, cache_size="1 MiB", block_size="64 KiB", stall="5s")
    cloud.mount()
    content = cloud.write_evicted("only", 4 * 1024 * 1024)
    edited = os.urandom(len(content))
    rewrite_in_place(cloud.remotes["a"], "only", edited)
    cloud.mount()
    wait_for(lambda: "its content changed there" in cloud.log, timeout=30,
             what="the edit to be found")
    assert (cloud.mountpoint / "only").read_bytes() == edited
    assert cloud.log.count("taking it in") == 1, "said once"
    cloud.wait_synced()
    assert versions(cloud.mountpoint, "only") == [edited]
    result = cloud.umount()
    assert "could not" not in result.stderr + result.stdout, result
    assert versions(cloud.remotes["a"], "only") == [edited]


def test_an_only_copy_edited_in_place_is_kept_beside_while_the_cache_holds_ours(
        make_cloud: MakeCloud) -> None:
    """A file from the remote read whole into the cache: the cache still holds the mount's
    version, so both are kept."""
    cloud = make_cloud({"a": "rw"}, block_size="64 KiB")
    content, edited = os.urandom(1 << 20), os.urandom(1 << 20)
    (cloud.remotes["a"] / "only").write_bytes(content)
    cloud.mount()
    assert (cloud.mountpoint / "only").read_bytes() == content
    rewrite_in_place(cloud.remotes["a"], "only", edited)
    both = sorted([content, edited])
    wait_for(lambda: versions(cloud.mountpoint, "only") == both, timeout=30,
             what="both versions in the mount")
    cloud.wait_synced()
    assert (cloud.mountpoint / "only").read_bytes() == content
    cloud.umount()
    assert versions(cloud.remotes["a"], "only") == both



@contextlib.contextmanager
def leased_rewrite(path: Path, data: bytes) -> Iterator[None]:
    """Hold a write lease on `path` (any other open of it fails with EAGAIN meanwhile, as
    Samba's leases make it), and within it write data over the file's own bytes and put
    its time back."""
    before = path.stat()
    time.sleep(0.05)  # past the tick of the kernel's clock its times were taken in
    # SIGIO is the kernel's word that someone opened it: the test asks /proc/locks instead
    handler = signal.signal(signal.SIGIO, signal.SIG_IGN)
    fd = os.open(path, os.O_RDWR)
    try:
        fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
        os.pwrite(fd, data, 0)
        os.utime(fd, ns=(before.st_atime_ns, before.st_mtime_ns))
        yield
    finally:
        os.close(fd)  # and the lease with it
        signal.signal(signal.SIGIO, handler)


def lease_broken(path: Path) -> bool:
    """Whether someone tried to open `path` while it was leased (/proc/locks)."""
    inode = f":{path.stat().st_ino} "
    return any("LEASE" in line and "BREAKING" in line and inode in line
               for line in Path("/proc/locks").read_text().splitlines())


def test_the_mount_s_version_stays_cached_while_an_edit_of_its_only_copy_is_in_doubt(
        make_cloud: MakeCloud) -> None:
    """The remote's copy changed behind its token and cannot be read yet to compare: until
    it is compared, the cache does not count it as a copy of the mount's version, so it
    does not evict ours for room, and both versions are kept."""
    # Listed only after events: a listing that looked at the file between the write and
    # its time put back would rightly take in the write as a plain edit.
    cloud = make_cloud({"a": "rw"}, cache_size="4 MiB", block_size="64 KiB",
                       poll_interval="1h")
    cloud.mount()
    content, edited, other = (os.urandom(3 << 20) for _ in range(3))
    (cloud.mountpoint / "only").write_bytes(content)
    cloud.wait_synced()
    time.sleep(2 * watch.GAP)  # and the listing that the upload's own events bring has gone
    copy = cloud.remotes["a"] / "only"
    with leased_rewrite(copy, edited):
        wait_for(lambda: lease_broken(copy), timeout=30, what="the edit to be read")
        (cloud.mountpoint / "other").write_bytes(other)  # the cache needs room for it
        cloud.wait_synced()  # and has it once `other` is uploaded
        # (the driver's read waits a moment for the lease to be let go before it fails)
        wait_for(lambda: "cannot compare it with ours yet" in cloud.log, timeout=30,
                 what="the read of the edit to fail")
    both = sorted([content, edited])
    wait_for(lambda: versions(cloud.mountpoint, "only") == both, timeout=30,
             what="both versions in the mount")
    cloud.wait_synced()
    assert (cloud.mountpoint / "only").read_bytes() == content
    assert (cloud.mountpoint / "other").read_bytes() == other
    cloud.umount()
    assert versions(cloud.remotes["a"], "only") == both


def test_a_chmod_on_a_remote_before_our_next_version_reaches_it_is_no_edit(
        make_cloud: MakeCloud) -> None:
    """The remote still holds the version before ours, its ctime moved: compared with that
    version's SHA-256, it is the same content, so ours replaces it and no copy of the old
    one comes back as a conflict; also where that version came from that remote (its
    checksum learnt as it went to the other). Content changed there so is still kept
    beside."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="4s")
    ours = b"our second version, held back by upload_delay"
    (cloud.remotes["a"] / "born-there").write_bytes(os.urandom(300_000))
    cloud.mount()
    for name in ("chmod", "edit"):
        (cloud.mountpoint / name).write_bytes(b"first version")
    cloud.wait_synced(timeout=60)
    for name in ("chmod", "edit", "born-there"):
        (cloud.mountpoint / name).write_bytes(ours)
    time.sleep(0.05)
    os.chmod(cloud.remotes["a"] / "chmod", 0o600)
    os.chmod(cloud.remotes["a"] / "born-there", 0o600)
    rewrite_in_place(cloud.remotes["a"], "edit", b"edited there!")
    wait_for(lambda: len(versions(cloud.mountpoint, "edit")) == 2, timeout=30,
             what="the edit kept beside ours")
    cloud.wait_synced(timeout=60)
    for name in ("chmod", "born-there"):
        assert versions(cloud.mountpoint, name) == [ours], name
        assert modes(cloud, name) == {"mount": 0o600, "a": 0o600, "b": 0o600}, name
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert versions(remote, "chmod") == versions(remote, "born-there") == [ours], name
        assert versions(remote, "edit") == [b"edited there!", ours], name
