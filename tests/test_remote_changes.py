"""Changes made directly in a remote's folder show in the mount and reach the others."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import shutil
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest

from onitufs.plug import MARKER, TEMP_SUFFIX
from onitufs.remote_changes import bad_path_reason

from .conftest import (
    Cloud,
    MakeCloud,
    everywhere,
    is_mounted,
    made_with_the_number_of,
    run,
    snapshot,
    two_machines,
    versions,
    wait_for,
)
from .sshd import MakeSshCloud, Sshd, SshRemote

pytest_plugins = ["tests.sshd"]


def test_remote_edits_while_mounted(cloud: Cloud) -> None:
    a = cloud.remotes["a"]
    (a / "new-on-a.txt").write_bytes(b"made on a")
    (a / "deep" / "er").mkdir(parents=True)
    (a / "deep" / "er" / "file").write_bytes(b"nested")
    wait_for(lambda: everywhere(cloud, "new-on-a.txt", b"made on a"), what="a's new file")
    wait_for(lambda: everywhere(cloud, "deep/er/file", b"nested"), what="a's nested file")

    (a / "new-on-a.txt").write_bytes(b"changed on a, and longer")
    wait_for(lambda: everywhere(cloud, "new-on-a.txt", b"changed on a, and longer"),
             what="a's change")
    assert os.stat(cloud.mountpoint / "new-on-a.txt").st_size == 24

    (cloud.remotes["b"] / "deep" / "er" / "file").unlink()
    # The file goes from its name at once, and from its folder once the driver checked
    # what it moved aside (delete_version): only then is the folder empty.
    wait_for(lambda: everywhere(cloud, "deep/er/file", None)
             and not any(any((remote / "deep" / "er").iterdir())
                         for remote in cloud.remotes.values()), what="b's delete")
    (cloud.remotes["c"] / "deep" / "er").rmdir()
    wait_for(lambda: not any(os.path.lexists(p / "deep" / "er")
                             for p in [cloud.mountpoint, *cloud.remotes.values()]),
             what="c's rmdir")


def test_the_kernel_forgets_what_a_remote_changed_at_once(cloud: Cloud) -> None:
    """The kernel may keep names and attributes for a minute (fs.ATTR_TIMEOUT); what a
    remote changes, the folder's link count and the file's new version, shows well
    before that, as the kernel is told."""
    box = cloud.mountpoint / "box"
    box.mkdir()
    (box / "note").write_bytes(b"old")
    wait_for(lambda: everywhere(cloud, "box/note", b"old"), what="the note everywhere")
    before = os.stat(box)
    assert os.stat(box / "note").st_size == 3  # both now in the kernel's cache
    a = cloud.remotes["a"]
    (a / "box" / "inner").mkdir()  # a name the kernel never saw
    wait_for(lambda: os.stat(box).st_nlink == before.st_nlink + 1, timeout=10,
             what="the folder's new link count")
    (a / "box" / "note").write_bytes(b"new and longer")
    wait_for(lambda: os.stat(box / "note").st_size == 14, timeout=10, what="the new version")


def test_a_name_found_missing_shows_at_once_when_a_remote_makes_it(cloud: Cloud) -> None:
    """The kernel keeps a missing name as missing for a minute too (fs.ATTR_TIMEOUT):
    a file and a folder a remote then makes show well before that, as the kernel is
    told; a name made through the mount shows as the kernel makes it."""
    late, folder, here = (cloud.mountpoint / name for name in ("late.txt", "sub", "here"))
    for _ in range(2):  # the second answer comes from the kernel's cache
        assert not any(os.path.lexists(path) for path in (late, folder, here))
    a = cloud.remotes["a"]
    (a / "late.txt").write_bytes(b"made on a")
    (a / "sub").mkdir()
    (a / "sub" / "inner").write_bytes(b"inside")
    wait_for(lambda: late.is_file() and late.read_bytes() == b"made on a", timeout=10,
             what="the file a made")
    wait_for(lambda: (folder / "inner").is_file(), timeout=10, what="the folder a made")
    fd = os.open(here, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    os.close(fd)
    assert here.is_file()
    wait_for(lambda: everywhere(cloud, "here", b""), what="the file made in the mount")


def test_an_open_that_may_create_opens_the_file_a_remote_just_made(cloud: Cloud) -> None:
    """A remote's new file takes a name the kernel holds as missing, and the kernel is
    told only after the names queued before it: meanwhile open(O_CREAT) opens that file,
    as it would on a disk (it failed with EEXIST), and O_CREAT | O_EXCL fails."""
    a = cloud.remotes["a"]
    for folder in ("many", "side"):
        (cloud.mountpoint / folder).mkdir()
    wait_for(lambda: (a / "many").is_dir() and (a / "side").is_dir(), what="the folders on a")
    for attempt in range(10):
        target, exclusive = (cloud.mountpoint / "many" / f"{name}-{attempt}"
                             for name in ("target", "exclusive"))
        assert not os.path.lexists(target) and not os.path.lexists(exclusive)
        for filler in range(300):  # told to the kernel before the two
            (a / "many" / f"filler-{attempt}-{filler}").write_bytes(b"")
        for path in (target, exclusive):
            (a / "many" / path.name).write_bytes(b"made on a")
        marker = f"marker-{attempt}"
        (a / "side" / marker).write_bytes(b"")
        # Each listing asks the daemon (no name of it is held as missing): the marker,
        # made after the two, shows once they are in the mount's tree.
        deadline = time.monotonic() + 20
        while marker not in os.listdir(cloud.mountpoint / "side"):
            assert time.monotonic() < deadline, "the marker never showed in the mount"
        if os.path.lexists(target):
            continue  # the kernel was told already: nothing to show
        with pytest.raises(FileExistsError):
            os.open(exclusive, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        fd = os.open(target, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            assert os.read(fd, 100) == b"made on a"
        finally:
            os.close(fd)
        break
    else:
        raise AssertionError("the kernel was told of the names before every open")
    wait_for(lambda: all_everywhere(cloud, {f"many/{target.name}": b"made on a",
                                            f"many/{exclusive.name}": b"made on a"}),
             what="both files as a made them")
    assert not [name for name in os.listdir(cloud.mountpoint / "many") if "conflict" in name]


def all_everywhere(cloud: Cloud, wanted: dict[str, bytes | None]) -> bool:
    """everywhere() for each path; False also where a read through the mount fails (EIO:
    the read that finds a remote's unreported edit, once)."""
    try:
        return all(everywhere(cloud, path, content) for path, content in wanted.items())
    except OSError:
        return False


def edit_unseen(cloud: Cloud, remote: str, relative: str, content: bytes) -> None:
    """Rewrite a remote's copy in place through a name outside the remote's folder: that
    raises no inotify event there, so the remote does not report the edit."""
    unseen = cloud.root / "unseen-link"
    os.link(cloud.remotes[remote] / relative, unseen)
    with unseen.open("r+b") as edit:
        edit.write(content)
    unseen.unlink()


def test_a_read_takes_in_a_version_the_remote_has_not_reported_yet(
        make_cloud: MakeCloud) -> None:
    """The remote changed the file after its last listing: the read of the listed version
    fails (no remote holds it any more), and the path opens the new version at once, not
    after the next poll."""
    cloud = make_cloud({"a": "rw"}, poll_interval="1h")
    (cloud.remotes["a"] / "notes.txt").write_bytes(b"monday")
    cloud.mount()
    listed = cloud.mountpoint / "notes.txt"
    wait_for(listed.exists, what="the first listing")
    with listed.open("rb") as old:
        edit_unseen(cloud, "a", "notes.txt", b"tuesday, and more")
        with pytest.raises(OSError) as failed:
            old.read()
    assert failed.value.errno == errno.EIO
    assert listed.read_bytes() == b"tuesday, and more"
    cloud.umount()


@pytest.mark.parametrize("renamed", ["file", "folder", "file, its name taken again"])
def test_an_edit_on_a_remote_of_a_file_renamed_in_the_mount_is_kept_beside_it(
        make_cloud: MakeCloud, renamed: str) -> None:
    """A remote's copy was edited there while the mount renamed the file (or its folder),
    before the rename reached that remote (offline, or just slower): the edit stays at its
    name as a file of its own, and the renamed file reaches every remote under its new
    name. Taken for a new version of the renamed file, it used to take the old name away
    from whatever the mount had there, and the renamed file's last link with it."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, poll_interval="1h")
    cloud.mount()
    old, new = ("d/draft.txt", "e/draft.txt") if renamed == "folder" else \
        ("d/draft.txt", "d/final.txt")
    (cloud.mountpoint / "d").mkdir()
    (cloud.mountpoint / old).write_bytes(b"first draft")
    cloud.wait_synced()
    wait_for(lambda: everywhere(cloud, old, b"first draft"), what="the upload")
    edit_unseen(cloud, "a", old, b"second draft, longer")
    os.rename(cloud.mountpoint / ("d" if renamed == "folder" else old),
              cloud.mountpoint / ("e" if renamed == "folder" else new))
    there = b"a new file under the old name" if "taken" in renamed else b"second draft, longer"
    if "taken" in renamed:
        (cloud.mountpoint / old).write_bytes(there)

    # A folder is moved there as it is: if that came first, the edit went along, and is
    # the renamed file's next version.
    wait_for(lambda: all_everywhere(cloud, {new: b"first draft", old: there}) or (
        renamed == "folder" and all_everywhere(cloud, {new: b"second draft, longer", "d": None})),
        what="the renamed file and what is at the old name, everywhere")
    if "taken" in renamed:
        def edit_kept() -> bool:
            copies = [path for path in (cloud.mountpoint / "d").iterdir() if "conflict" in
                      path.name]
            return len(copies) == 1 and copies[0].read_bytes() == b"second draft, longer"
        wait_for(edit_kept, what="the edit kept as a conflict copy")
    cloud.wait_synced()
    assert snapshot(cloud.remotes["a"]) == snapshot(cloud.remotes["b"]) \
        == snapshot(cloud.mountpoint)
    cloud.umount()
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 0 and "0 problems" in result.stdout, result.stdout + result.stderr


def test_an_edit_on_a_remote_of_its_only_copy_follows_a_rename_in_the_mount(
        make_cloud: MakeCloud) -> None:
    """A file only one remote holds, never read here, is renamed in the mount while that
    copy is edited there: the edit is all that is left of the file, so it becomes the
    file's next version under its new name, rather than leave that name with content
    no remote holds any more."""
    cloud = make_cloud({"a": "rw"}, poll_interval="1h")
    (cloud.remotes["a"] / "d").mkdir()
    (cloud.remotes["a"] / "d" / "draft.txt").write_bytes(b"first draft")
    cloud.mount()
    wait_for((cloud.mountpoint / "d" / "draft.txt").exists, what="the first listing")
    edit_unseen(cloud, "a", "d/draft.txt", b"second draft, longer")
    os.rename(cloud.mountpoint / "d" / "draft.txt", cloud.mountpoint / "d" / "final.txt")
    wait_for(lambda: all_everywhere(cloud, {"d/final.txt": b"second draft, longer",
                                            "d/draft.txt": None}),
             what="the edit under the new name")
    cloud.umount()
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 0 and "0 problems" in result.stdout, result.stdout + result.stderr


def test_a_delete_in_the_mount_keeps_an_edit_on_a_remote_it_had_not_reported(
        make_cloud: MakeCloud) -> None:
    """A remote's copy was edited there, unreported, and the file is deleted in the mount:
    the edit is not deleted with it; it comes back into the mount and reaches the other
    remotes, and nothing is left queued."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, poll_interval="1h")
    cloud.mount()
    (cloud.mountpoint / "draft.txt").write_bytes(b"first draft")
    cloud.wait_synced()
    wait_for(lambda: everywhere(cloud, "draft.txt", b"first draft"), what="the upload")
    edit_unseen(cloud, "a", "draft.txt", b"second draft, longer")
    (cloud.mountpoint / "draft.txt").unlink()
    wait_for(lambda: all_everywhere(cloud, {"draft.txt": b"second draft, longer"}),
             what="the edit back in the mount and on b")
    cloud.umount()  # fails where a change is still queued
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 0 and "0 problems" in result.stdout, result.stdout + result.stderr


def test_a_delete_on_a_remote_of_its_only_copy_reaches_a_file_renamed_in_the_mount(
        make_cloud: MakeCloud) -> None:
    """A file only one remote holds, never read here, is renamed in the mount, and deleted
    there before the rename reached it: nothing of it is left, so it goes from the mount
    too, rather than stay as a name no read can serve (and that no remote could ever be
    given)."""
    cloud = make_cloud({"a": "rw"}, upload_delay="1h")
    (cloud.remotes["a"] / "theirs.txt").write_bytes(b"made on a")
    cloud.mount()
    wait_for((cloud.mountpoint / "theirs.txt").exists, what="the first listing")
    os.rename(cloud.mountpoint / "theirs.txt", cloud.mountpoint / "renamed.txt")
    (cloud.remotes["a"] / "theirs.txt").unlink()
    wait_for(lambda: not (cloud.mountpoint / "renamed.txt").exists(), what="the delete")
    assert "deleting that too" in cloud.log
    cloud.umount()
    assert snapshot(cloud.remotes["a"]) == {}
    result = run("fsck", cloud.config, check=False)
    assert result.returncode == 0 and "0 problems" in result.stdout, result.stdout + result.stderr


def test_a_rename_on_a_remote_travels_as_a_rename(cloud: Cloud) -> None:
    (cloud.mountpoint / "before.txt").write_bytes(b"same bytes")
    cloud.wait_synced()
    wait_for(lambda: everywhere(cloud, "before.txt", b"same bytes"), what="the upload")
    inode_on_b = os.stat(cloud.remotes["b"] / "before.txt").st_ino
    os.rename(cloud.remotes["a"] / "before.txt", cloud.remotes["a"] / "after.txt")
    wait_for(lambda: everywhere(cloud, "after.txt", b"same bytes")
             and everywhere(cloud, "before.txt", None), what="the rename everywhere")
    assert os.stat(cloud.remotes["b"] / "after.txt").st_ino == inode_on_b


def test_a_chmod_with_a_rename_on_a_remote_travels_with_it(cloud: Cloud) -> None:
    """A file chmodded and then renamed on a remote, in one burst: the rename sets its
    change time, which then says nothing of the chmod; the mode it holds differs from
    the one onitufs last knew there, and that mode reaches the mount and every remote."""
    (cloud.mountpoint / "before.txt").write_bytes(b"same bytes")
    cloud.wait_synced()
    wait_for(lambda: everywhere(cloud, "before.txt", b"same bytes"), what="the upload")
    os.chmod(cloud.remotes["a"] / "before.txt", 0o600)
    os.rename(cloud.remotes["a"] / "before.txt", cloud.remotes["a"] / "after.txt")
    wait_for(lambda: everywhere(cloud, "after.txt", b"same bytes")
             and everywhere(cloud, "before.txt", None), what="the rename everywhere")
    wait_for(lambda: all(stat.S_IMODE(os.stat(root / "after.txt").st_mode) == 0o600
                         for root in [cloud.mountpoint, *cloud.remotes.values()]),
             what="the mode everywhere")


def test_remote_edits_while_unmounted(make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    cloud.mount()
    (cloud.mountpoint / "keep.txt").write_bytes(b"keep")
    (cloud.mountpoint / "change.txt").write_bytes(b"old")
    (cloud.mountpoint / "delete.txt").write_bytes(b"doomed")
    cloud.umount()
    a = cloud.remotes["a"]
    (a / "offline-new.txt").write_bytes(b"written while unmounted")
    (a / "change.txt").write_bytes(b"new while unmounted")
    (a / "delete.txt").unlink()
    cloud.mount()
    wait_for(lambda: everywhere(cloud, "offline-new.txt", b"written while unmounted"),
             what="the new file")
    wait_for(lambda: everywhere(cloud, "change.txt", b"new while unmounted"), what="the change")
    wait_for(lambda: everywhere(cloud, "delete.txt", None), what="the delete")
    assert everywhere(cloud, "keep.txt", b"keep")


def everywhere_then_held_back(make_cloud: MakeCloud, name: str, content: bytes) -> Cloud:
    """A mount where `name` holds `content` on every remote, and new edits wait an hour."""
    cloud = make_cloud(upload_delay="1h")
    cloud.mount()
    (cloud.mountpoint / name).write_bytes(content)
    os.setxattr(cloud.mountpoint, "user.onitufs.flush", b"1")
    cloud.wait_synced()
    return cloud


def conflict_copies(root: Path, stem: str) -> list[bytes]:
    return [path.read_bytes() for path in root.iterdir()
            if path.name.startswith(f"{stem} (conflict from ")]


def edit_both(cloud: Cloud, name: str, later: str) -> tuple[bytes, bytes]:
    """Edit `name` in the mount and on remote a, the `later` one dated later; returns the
    winner's content and the loser's."""
    (cloud.mountpoint / name).write_bytes(b"edited in the mount")
    # The edit on a lands whole, with its time: written in place and then dated, it could
    # be listed in between (a slow moment of a loaded machine), with the time of its write.
    edit = cloud.remotes["a"].parent / "edit on a"
    edit.write_bytes(b"edited on a")
    stamp = time.time() + (60 if later == "remote" else -60)
    os.utime(edit, (stamp, stamp))
    edit.replace(cloud.remotes["a"] / name)
    if later == "remote":
        return b"edited on a", b"edited in the mount"
    return b"edited in the mount", b"edited on a"


@pytest.mark.parametrize("later", ["mount", "remote"])
def test_both_edits_of_a_conflict_are_kept_and_the_later_keeps_the_name(
        make_cloud: MakeCloud, later: str) -> None:
    cloud = everywhere_then_held_back(make_cloud, "shared.txt", b"base")
    winner, loser = edit_both(cloud, "shared.txt", later)
    wait_for(lambda: conflict_copies(cloud.mountpoint, "shared") == [loser],
             what="the earlier version kept beside the later one")
    assert (cloud.mountpoint / "shared.txt").read_bytes() == winner
    label = "a" if later == "mount" else socket.gethostname()
    assert any(p.name.startswith(f"shared (conflict from {label} ")
               for p in cloud.mountpoint.iterdir())
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert (remote / "shared.txt").read_bytes() == winner, name
        assert conflict_copies(remote, "shared") == [loser], name


@pytest.mark.parametrize("later", ["mount", "remote"])
def test_a_conflict_copy_never_takes_a_name_in_use(make_cloud: MakeCloud, later: str) -> None:
    """Two conflicts of one file within a second get the same conflict name: the second
    copy is numbered. Here every name the next conflict could get is in use already (made
    in the mount, so on every remote too); taking one, the rename there used to fail, and
    stop the remote's driver."""
    cloud = everywhere_then_held_back(make_cloud, "shared.txt", b"base")
    made = {}
    now = time.time()  # once: a loop that read the clock at each name skipped a second
    for label in ("a", socket.gethostname()):
        for second in range(60):
            when = time.strftime("%Y-%m-%d %H%M%S", time.localtime(now + second))
            name = f"shared (conflict from {label} {when}).txt"
            made[name] = f"made in the mount: {name}".encode()
            (cloud.mountpoint / name).write_bytes(made[name])
    os.setxattr(cloud.mountpoint, "user.onitufs.flush", b"1")
    cloud.wait_synced()
    _, loser = edit_both(cloud, "shared.txt", later)

    def numbered() -> list[str]:
        return [path.name for path in cloud.mountpoint.iterdir()
                if path.name.endswith(" 2).txt") and path.read_bytes() == loser]
    wait_for(lambda: len(numbered()) == 1, what="the earlier version kept under a numbered name")
    cloud.umount()
    assert "driver stopped" not in cloud.log
    for name, remote in cloud.remotes.items():
        assert all((remote / path).read_bytes() == content for path, content in made.items()), \
            name
        assert [path.name for path in remote.iterdir() if path.name.endswith(" 2).txt")
                and path.read_bytes() == loser], name


def test_a_remote_delete_does_not_destroy_a_newer_edit(make_cloud: MakeCloud) -> None:
    cloud = everywhere_then_held_back(make_cloud, "precious.txt", b"v1")
    (cloud.mountpoint / "precious.txt").write_bytes(b"v2, not uploaded yet")
    (cloud.remotes["b"] / "precious.txt").unlink()
    wait_for(lambda: "precious.txt" not in snapshot(cloud.remotes["b"]), what="the delete")
    cloud.umount()
    for remote in cloud.remotes.values():
        assert (remote / "precious.txt").read_bytes() == b"v2, not uploaded yet"


def test_a_new_remote_gets_everything(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    (cloud.mountpoint / "dir").mkdir()
    (cloud.mountpoint / "dir" / "file").write_bytes(b"old news")
    cloud.umount()
    add_remote(cloud, "late")
    cloud.mount()
    cloud.wait_synced()
    wait_for(lambda: everywhere(cloud, "dir/file", b"old news"), what="the new remote to fill")


def test_a_failing_remote_catches_up_while_the_others_carry_on(cloud: Cloud) -> None:
    b = cloud.remotes["b"]
    away = b.with_name("b.away")
    b.rename(away)  # b is gone: offline, not empty
    (cloud.mountpoint / "during-outage.txt").write_bytes(b"written while b was away")
    wait_for(lambda: (cloud.remotes["a"] / "during-outage.txt").exists()
             and (cloud.remotes["c"] / "during-outage.txt").exists(), what="a and c")
    wait_for(lambda: cloud.status()["remotes"][1]["failures"] > 0, what="b to be failing")
    assert cloud.status()["remotes"][1]["pending"] > 0
    assert (cloud.mountpoint / "during-outage.txt").read_bytes() == b"written while b was away"
    away.rename(b)
    wait_for(lambda: everywhere(cloud, "during-outage.txt", b"written while b was away"),
             timeout=90, what="b to catch up")


def test_a_backup_edited_directly_keeps_that_edit_aside(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "backup": "w"})
    cloud.mount()
    (cloud.mountpoint / "x.txt").write_bytes(b"v1")
    cloud.wait_synced()
    (cloud.remotes["backup"] / "x.txt").write_bytes(b"edited on the backup")
    (cloud.mountpoint / "x.txt").write_bytes(b"v2")
    cloud.umount()  # returns: nothing waits on content no readable remote has
    backup = cloud.remotes["backup"]
    assert (backup / "x.txt").read_bytes() == b"v2"
    aside = [p.read_bytes() for p in backup.iterdir() if p.name.startswith("x (conflict from backup")]
    assert aside == [b"edited on the backup"]
    assert [p.name for p in cloud.remotes["a"].iterdir() if p.name != MARKER] == ["x.txt"]


def add_remote(cloud: Cloud, name: str) -> Path:
    cloud.remotes[name] = cloud.root / name
    cloud.remotes[name].mkdir(exist_ok=True)
    cloud.modes[name] = "rw"
    cloud.write_config()
    return cloud.remotes[name]


def test_an_older_copy_put_back_on_a_remote_is_kept_beside_the_newer(
        make_cloud: MakeCloud, tmp_path: Path) -> None:
    """A file on a remote replaced by a copy older than the version onitufs put there
    (`cp -p` from a backup, a backup restored over the folder) is no edit made since:
    both are kept everywhere, the newer at the name."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    (cloud.mountpoint / "notes.txt").write_text("version 1\n")
    hour_ago = time.time() - 3600  # (a version a second or two older may be an edit there
    os.utime(cloud.mountpoint / "notes.txt", (hour_ago, hour_ago))  # on a coarse clock)
    cloud.wait_synced()
    kept = tmp_path / "notes.txt"
    subprocess.run(["cp", "-p", str(cloud.remotes["a"] / "notes.txt"), str(kept)], check=True)
    (cloud.mountpoint / "notes.txt").write_text("version 2, longer\n")
    cloud.wait_synced()
    subprocess.run(["cp", "-p", str(kept), str(cloud.remotes["a"] / "notes.txt")], check=True)
    both = sorted([b"version 1\n", b"version 2, longer\n"])
    wait_for(lambda: sorted(versions(cloud.mountpoint, "notes.txt")) == both, timeout=30,
             what="both versions in the mount")
    assert (cloud.mountpoint / "notes.txt").read_bytes() == b"version 2, longer\n"
    cloud.umount()
    for remote in cloud.remotes.values():
        assert sorted(versions(remote, "notes.txt")) == both, remote
        assert (remote / "notes.txt").read_bytes() == b"version 2, longer\n", remote


def test_an_older_copy_written_through_another_mount_is_kept_beside_too(
        make_cloud: MakeCloud, tmp_path: Path) -> None:
    """Two machines sharing a folder: `cp -p` of an old copy in one mount reads on the other
    as a version older than its own, kept beside it; a copy saved anew goes everywhere."""
    first, second = two_machines(make_cloud)
    old = tmp_path / "f"
    old.write_bytes(b"an old copy")
    os.utime(old, (time.time() - 3600, time.time() - 3600))
    (first.mountpoint / "f").write_bytes(b"the version of today")
    wait_for(lambda: (second.mountpoint / "f").exists() and
             (second.mountpoint / "f").read_bytes() == b"the version of today",
             timeout=30, what="the first mount's file in the second")
    subprocess.run(["cp", "-p", str(old), str(second.mountpoint / "f")], check=True)
    both = sorted([b"an old copy", b"the version of today"])
    for cloud in (first, second):
        wait_for(lambda cloud=cloud: versions(cloud.mountpoint, "f") == both,  # type: ignore[misc]
                 timeout=30, what="both versions in each mount")
        assert (cloud.mountpoint / "f").read_bytes() == b"the version of today"
    subprocess.run(["cp", str(old), str(second.mountpoint / "f")], check=True)  # saved anew
    for cloud in (first, second):
        wait_for(lambda cloud=cloud: (cloud.mountpoint / "f").read_bytes() == b"an old copy",  # type: ignore[misc]
                 timeout=30, what="the copy saved anew in each mount")


def test_an_older_copy_put_back_over_the_only_copy_of_the_newer_is_taken_in(
        make_cloud: MakeCloud, tmp_path: Path) -> None:
    """The newer version is held nowhere else (its only remote, the cache evicted): the
    older copy is all there is of the file, so it is the file again, not a conflict copy
    beside a name that no read could serve."""
    cloud = make_cloud({"a": "rw"}, cache_size="1 MiB", block_size="64 KiB", stall="5s")
    cloud.mount()
    older = cloud.write_evicted("only", 2 * 1024 * 1024)
    kept = tmp_path / "only"
    subprocess.run(["cp", "-p", str(cloud.remotes["a"] / "only"), str(kept)], check=True)
    cloud.mount()
    cloud.write_evicted("only", 2 * 1024 * 1024)
    subprocess.run(["cp", "-p", str(kept), str(cloud.remotes["a"] / "only")], check=True)
    cloud.mount()
    wait_for(lambda: (cloud.mountpoint / "only").stat().st_mtime_ns == kept.stat().st_mtime_ns,
             timeout=30, what="the older copy to be taken in")
    assert versions(cloud.mountpoint, "only") == [older]
    cloud.umount()
    assert versions(cloud.remotes["a"], "only") == [older]


def test_a_backup_put_back_as_a_new_remote_loses_nothing(make_cloud: MakeCloud,
                                                        tmp_path: Path) -> None:
    """The way the README gives to bring a remote back from a backup: in a new folder,
    under a new name. Its older version is kept beside the newer one, the file deleted
    since comes back, the file made since stays and reaches it."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    (cloud.mountpoint / "notes.txt").write_text("version 1\n")
    (cloud.mountpoint / "old.txt").write_text("deleted since\n")
    cloud.wait_synced()
    backup = tmp_path / "backup"
    subprocess.run(["cp", "-a", str(cloud.remotes["a"]), str(backup)], check=True)
    (cloud.mountpoint / "notes.txt").write_text("version 2\n")
    (cloud.mountpoint / "new.txt").write_text("made since\n")
    (cloud.mountpoint / "old.txt").unlink()
    cloud.umount()
    shutil.rmtree(cloud.remotes.pop("a"))
    del cloud.modes["a"]
    subprocess.run(["cp", "-a", str(backup), str(cloud.root / "a2")], check=True)
    add_remote(cloud, "a2")
    cloud.mount()
    wait_for(lambda: len(snapshot(cloud.mountpoint)) == 4, what="the backup's files")
    cloud.umount()
    shown = snapshot(cloud.mountpoint.parent / "a2")
    [aside] = [name for name in shown if name.startswith("notes (conflict from a2 ")]
    assert shown == {"notes.txt": ("file", b"version 2\n"), aside: ("file", b"version 1\n"),
                     "new.txt": ("file", b"made since\n"), "old.txt": ("file", b"deleted since\n")}
    assert snapshot(cloud.remotes["b"]) == shown


@pytest.mark.parametrize("mounted", [False, True], ids=["stopped", "mounted"])
def test_a_remote_put_back_from_a_backup_keeps_what_was_made_since(
        make_cloud: MakeCloud, tmp_path: Path, mounted: bool) -> None:
    """A remote's folder replaced by an older copy of it (the disk lost, its backup put
    back in its place: copied in with the mount stopped, or moved in whole while it
    runs) lacks what the mount made since: no delete of anyone's, it is sent there again.
    Its older version of a file is kept beside the newer, and what the mount deleted
    since comes back."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "notes.txt").write_text("version 1\n")
    hour_ago = time.time() - 3600
    os.utime(mnt / "notes.txt", (hour_ago, hour_ago))
    (mnt / "old.txt").write_text("deleted since\n")
    (mnt / "kept").mkdir()
    (mnt / "kept" / "photo.jpg").write_bytes(photo := os.urandom(5000))
    cloud.wait_synced()
    backup = tmp_path / "backup"
    subprocess.run(["cp", "-a", str(cloud.remotes["a"]), str(backup)], check=True)
    (mnt / "notes.txt").write_text("version 2\n")
    (mnt / "new.txt").write_text("made since\n")
    (mnt / "kept" / "new.jpg").write_bytes(new_photo := os.urandom(6000))
    (mnt / "made").mkdir()
    (mnt / "made" / "deep.txt").write_text("made since, deeper\n")
    (mnt / "old.txt").unlink()
    cloud.wait_synced()
    if not mounted:
        cloud.umount()
    cloud.remotes["a"].rename(tmp_path / "lost")
    if mounted:  # (a copy made in place while it runs reads as deletes as it goes)
        subprocess.run(["cp", "-a", str(backup), str(tmp_path / "staged")], check=True)
        (tmp_path / "staged").rename(cloud.remotes["a"])
    else:
        subprocess.run(["cp", "-a", str(backup), str(cloud.remotes["a"])], check=True)
        cloud.mount()
    expected = {"notes.txt": ("file", b"version 2\n"), "new.txt": ("file", b"made since\n"),
                "old.txt": ("file", b"deleted since\n"), "kept": ("dir", b""),
                "kept/photo.jpg": ("file", photo), "kept/new.jpg": ("file", new_photo),
                "made": ("dir", b""), "made/deep.txt": ("file", b"made since, deeper\n")}

    def shown() -> dict[str, tuple[str, bytes]]:
        found = snapshot(mnt)
        asides = [name for name in found if name.startswith("notes (conflict from a ")]
        return {name: found[name] for name in found if name not in asides} | (
            {"aside": found[asides[0]]} if len(asides) == 1 else {})

    wait_for(lambda: shown() == expected | {"aside": ("file", b"version 1\n")}, timeout=30,
             what="the backup's files beside the mount's")
    final = snapshot(mnt)
    cloud.umount()
    assert snapshot(cloud.remotes["a"]) == snapshot(cloud.remotes["b"]) == final
    assert "is a copy (its folder put back from a backup?)" in cloud.log


def test_a_remote_put_back_from_a_backup_without_its_marker_keeps_what_was_made_since(
        make_cloud: MakeCloud, tmp_path: Path) -> None:
    """A backup copied back without the marker (`cp -r backup/*`, a file manager's copy of
    what it shows): the marker is written again, and what the folder lacks is sent to it
    again, not deleted."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "before.txt").write_text("before the backup\n")
    cloud.wait_synced()
    backup = tmp_path / "backup"
    subprocess.run(["cp", "-a", str(cloud.remotes["a"]), str(backup)], check=True)
    (mnt / "made").mkdir()
    (mnt / "made" / "since.txt").write_text("made since\n")
    cloud.wait_synced()
    cloud.umount()
    cloud.remotes["a"].rename(tmp_path / "lost")
    cloud.remotes["a"].mkdir()
    subprocess.run(f"cp -r {backup}/* {cloud.remotes['a']}/", shell=True, check=True)
    assert not (cloud.remotes["a"] / MARKER).exists()
    cloud.mount()
    expected = {"before.txt": ("file", b"before the backup\n"), "made": ("dir", b""),
                "made/since.txt": ("file", b"made since\n")}
    wait_for(lambda: snapshot(cloud.remotes["a"]) == expected, timeout=30,
             what="the folder to get back what it lacks")
    assert snapshot(mnt) == expected
    cloud.umount()
    assert snapshot(cloud.remotes["b"]) == expected
    assert (cloud.remotes["a"] / MARKER).read_bytes() == (backup / MARKER).read_bytes()


def test_an_ssh_folder_put_back_from_a_copy_keeps_what_was_made_since(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd, tmp_path: Path) -> None:
    """Where the remote keeps no change times (SFTP), a copy of the folder made without
    its times (`cp -r`) is told by its marker's revision: what the mount made since is sent
    to it again, not deleted."""
    cloud = make_ssh_cloud({"b": "rw"}, {"s": SshRemote(sshd)})
    cloud.mount()
    mnt, server = cloud.mountpoint, cloud.remotes["s"]
    (mnt / "before.txt").write_text("before the copy\n")
    cloud.wait_synced()
    time.sleep(1.1)  # (SFTP's times are whole seconds: the copy's marker is of a later one)
    subprocess.run(["cp", "-r", str(server), str(tmp_path / "copy")], check=True)
    (mnt / "made").mkdir()
    (mnt / "made" / "since.txt").write_text("made since\n")
    cloud.wait_synced()
    cloud.umount()
    server.rename(tmp_path / "lost")
    (tmp_path / "copy").rename(server)
    cloud.mount()
    expected = {"before.txt": ("file", b"before the copy\n"), "made": ("dir", b""),
                "made/since.txt": ("file", b"made since\n")}
    wait_for(lambda: snapshot(server) == expected, timeout=30, what="the copy to get it back")
    assert snapshot(mnt) == expected
    cloud.umount()
    assert snapshot(cloud.remotes["b"]) == expected
    assert "is a copy (its folder put back from a backup?)" in cloud.log


def test_a_remote_put_back_without_the_only_copy_of_a_file_says_it_is_lost(
        make_cloud: MakeCloud, tmp_path: Path) -> None:
    """The folder put back lacks a file made since that no other copy holds (its only
    remote, the cache evicted): it is lost, said so, and its name goes, rather than
    staying as a file no read can serve and a remote that never settles."""
    cloud = make_cloud({"a": "rw"}, cache_size="1 MiB", block_size="64 KiB", stall="5s")
    cloud.mount()
    (cloud.mountpoint / "first.txt").write_text("first")
    cloud.wait_synced()
    backup = tmp_path / "backup"
    subprocess.run(["cp", "-a", str(cloud.remotes["a"]), str(backup)], check=True)
    cloud.write_evicted("only", 2 * 1024 * 1024)
    cloud.remotes["a"].rename(tmp_path / "lost")
    subprocess.run(["cp", "-a", str(backup), str(cloud.remotes["a"])], check=True)
    cloud.mount()
    wait_for(lambda: not (cloud.mountpoint / "only").exists(), what="the lost file to go")
    assert "remote a: only is not in the folder put back, and the copy it held was the only " \
        "one: it is lost, and deleted here too" in cloud.log
    assert (cloud.mountpoint / "first.txt").read_text() == "first"
    cloud.umount()
    assert snapshot(cloud.remotes["a"]) == {"first.txt": ("file", b"first")}


def test_a_new_remote_holding_the_same_files_gets_no_conflicts(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    cloud.mount()
    (cloud.mountpoint / "dir").mkdir()
    for index in range(20):
        (cloud.mountpoint / "dir" / f"f{index}").write_bytes(b"same" * index)
    cloud.umount()
    copy = cloud.root / "copy"
    shutil.copytree(cloud.remotes["a"], copy)  # keeps modification times
    add_remote(cloud, "copy")
    cloud.mount()
    cloud.wait_synced()
    cloud.umount()
    assert snapshot(copy) == snapshot(cloud.remotes["a"])
    assert not [p for p in (copy / "dir").iterdir() if "conflict" in p.name]


def test_a_remote_left_out_of_the_config_catches_up_when_back(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"})
    cloud.mount()
    (cloud.mountpoint / "before").write_bytes(b"both have it")
    cloud.umount()
    del cloud.modes["b"]
    cloud.write_config()
    cloud.mount()
    (cloud.mountpoint / "while-b-was-out").write_bytes(b"only a saw this")
    cloud.umount()
    assert not (cloud.remotes["b"] / "while-b-was-out").exists()
    cloud.modes["b"] = "rw"
    cloud.write_config()
    cloud.mount()
    cloud.umount()
    assert (cloud.remotes["b"] / "while-b-was-out").read_bytes() == b"only a saw this"


def test_a_folder_renamed_on_a_remote_travels_as_a_rename(cloud: Cloud) -> None:
    (cloud.mountpoint / "album").mkdir()
    for index in range(5):
        (cloud.mountpoint / "album" / f"p{index}").write_bytes(b"photo %d" % index)
    cloud.wait_synced()
    wait_for(lambda: everywhere(cloud, "album/p4", b"photo 4"), what="the album everywhere")
    inode_on_c = os.stat(cloud.remotes["c"] / "album" / "p0").st_ino
    os.rename(cloud.remotes["b"] / "album", cloud.remotes["b"] / "renamed album")
    wait_for(lambda: all(everywhere(cloud, f"renamed album/p{i}", b"photo %d" % i)
                         for i in range(5)) and everywhere(cloud, "album", None),
             what="the renamed folder everywhere")
    assert os.stat(cloud.remotes["c"] / "renamed album" / "p0").st_ino == inode_on_c


@pytest.mark.parametrize("here", ["file", "empty folder", "folder"])
def test_a_folder_renamed_on_a_remote_onto_a_name_made_here_since(make_cloud: MakeCloud,
                                                                   here: str) -> None:
    """Remote a renames a folder onto a name the mount has made since and not sent there
    yet (uploads wait an hour): a file keeps its name and the folder is kept beside it; a
    folder takes in what the renamed one holds, which travels as renames. The old name
    goes everywhere, and does not come back as an empty folder."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="1h")  # (an unmount sends all)
    a, b = cloud.remotes["a"], cloud.remotes["b"]
    for remote in (a, b):
        (remote / "src").mkdir()
        for name in ("f1", "f2"):
            (remote / "src" / name).write_bytes(name.encode())
    cloud.mount()
    wait_for(lambda: everywhere(cloud, "src/f2", b"f2"), what="the folder everywhere")
    on_b = os.stat(b / "src" / "f1").st_ino
    dst = cloud.mountpoint / "dst"
    if here == "file":
        dst.write_bytes(b"made here")
    else:
        dst.mkdir()
        if here == "folder":
            (dst / "x").write_bytes(b"made here")
    os.rename(a / "src", a / "dst")
    if here == "file":
        folder = "dst (conflict from a *)"
        wait_for(lambda: len(list(cloud.mountpoint.glob(f"{folder}/f2"))) == 1,
                 what="the folder kept beside the file")
        folder = next(cloud.mountpoint.glob(folder)).name
    else:
        folder = "dst"
    wait_for(lambda: not (cloud.mountpoint / "src").exists()
             and (cloud.mountpoint / folder / "f1").read_bytes() == b"f1",
             what="the rename in the mount")
    cloud.umount()  # (sends what waits)
    if here != "file":
        assert os.stat(b / "dst" / "f1").st_ino == on_b  # renamed there, not copied anew
    expected = {folder: ("dir", b""), f"{folder}/f1": ("file", b"f1"),
                f"{folder}/f2": ("file", b"f2"),
                **({"dst": ("file", b"made here")} if here == "file" else {}),
                **({"dst/x": ("file", b"made here")} if here == "folder" else {})}
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == expected, name


def test_a_file_renamed_on_a_remote_onto_a_name_made_here_since(make_cloud: MakeCloud) -> None:
    """The same for a file onto a file: the later (the mount's) keeps the name, the
    renamed one is kept beside it, and its old name goes everywhere."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, upload_delay="1h")  # (an unmount sends all)
    a = cloud.remotes["a"]
    for remote in cloud.remotes.values():
        (remote / "src").write_bytes(b"renamed there")
    cloud.mount()
    wait_for(lambda: (cloud.mountpoint / "src").exists(), what="the file in the mount")
    (cloud.mountpoint / "dst").write_bytes(b"made here")
    os.rename(a / "src", a / "dst")
    wait_for(lambda: not (cloud.mountpoint / "src").exists()
             and len(list(cloud.mountpoint.glob("dst (conflict from a *)"))) == 1,
             what="the rename in the mount")
    aside = next(cloud.mountpoint.glob("dst (conflict from a *)")).name
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == {"dst": ("file", b"made here"),
                                    aside: ("file", b"renamed there")}, name


def test_folders_renamed_and_deleted_after_a_remount_travel_whole(make_cloud: MakeCloud) -> None:
    """After a remount the index has not decoded what each remote holds (the first listings
    match it as a whole): what a remote holds below a folder changed there, or in the
    mount, is found in its records, and the folder travels with all it holds."""
    cloud = make_cloud()
    cloud.mount()
    for folder, count in (("album", 5), ("old", 3), ("moveme", 2)):
        (cloud.mountpoint / folder / "inner").mkdir(parents=True)
        for index in range(count):
            (cloud.mountpoint / folder / "inner" / f"p{index}").write_bytes(b"%d" % index)
    cloud.umount()
    cloud.mount()
    inode_on_c = os.stat(cloud.remotes["c"] / "album" / "inner" / "p0").st_ino
    b = cloud.remotes["b"]
    os.rename(b / "album", b / "renamed album")
    shutil.rmtree(b / "old")
    (cloud.mountpoint / "moveme").rename(cloud.mountpoint / "moved")
    wait_for(lambda: all(everywhere(cloud, f"renamed album/inner/p{i}", b"%d" % i)
                         for i in range(5)) and everywhere(cloud, "album", None)
             and everywhere(cloud, "old", None), what="b's changes everywhere")
    assert os.stat(cloud.remotes["c"] / "renamed album" / "inner" / "p0").st_ino == inode_on_c
    shutil.rmtree(cloud.mountpoint / "renamed album")
    cloud.umount()
    expected = {"moved": ("dir", b""), "moved/inner": ("dir", b""),
                "moved/inner/p0": ("file", b"0"), "moved/inner/p1": ("file", b"1")}
    for name, remote in cloud.remotes.items():
        assert snapshot(remote) == expected, name


def test_a_symlink_retargeted_on_a_remote(cloud: Cloud) -> None:
    os.symlink("first-target", cloud.mountpoint / "link")
    cloud.wait_synced()
    wait_for(lambda: os.path.islink(cloud.remotes["a"] / "link"), what="the symlink")
    os.unlink(cloud.remotes["a"] / "link")
    os.symlink("second-target", cloud.remotes["a"] / "link")
    wait_for(lambda: all(os.readlink(p / "link") == "second-target"
                         for p in [cloud.mountpoint, *cloud.remotes.values()]
                         if os.path.islink(p / "link"))
             and all(os.path.islink(p / "link") for p in cloud.remotes.values()),
             what="the new target everywhere")


def test_names_that_are_odd_but_valid_travel_and_nothing_escapes(cloud: Cloud,
                                                                 tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    a = os.fsencode(cloud.remotes["a"])
    odd = [b"caf\xe9 latin-1.txt", b"new\nline", b"-starts-with-dash", b" spaces ", b"n" * 255,
           "ünïcödé ✓".encode()]
    for name in odd:
        with open(os.path.join(a, name), "wb") as handle:
            handle.write(name)
    os.symlink(outside, cloud.remotes["a"] / "escape")  # a remote's link out of its tree
    for name in odd:
        wait_for(lambda name=name: all(  # type: ignore[misc]
            os.path.exists(os.path.join(os.fsencode(p), name))
            for p in [cloud.mountpoint, *cloud.remotes.values()]), what=f"{name!r} everywhere")
        assert Path(os.fsdecode(os.path.join(os.fsencode(cloud.mountpoint), name))).read_bytes() \
            == name
    wait_for(lambda: os.path.islink(cloud.remotes["c"] / "escape"), what="the link copied")
    assert os.readlink(cloud.mountpoint / "escape") == str(outside)
    assert list(outside.iterdir()) == []  # nothing was synced through the link


def test_a_remote_edit_during_our_upload_of_that_file_keeps_both(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw", "b": "rw"}, block_size="256 KiB")
    cloud.mount()
    (cloud.mountpoint / "movie").write_bytes(b"v1")
    cloud.wait_synced()
    ours = os.urandom(300 * 1024 * 1024)
    (cloud.mountpoint / "movie").write_bytes(ours)
    wait_for(lambda: any(p.name.endswith(TEMP_SUFFIX) for p in cloud.remotes["a"].iterdir()),
             what="our upload to a under way")
    (cloud.remotes["a"] / "movie").write_bytes(b"edited on a meanwhile")
    cloud.wait_synced(timeout=120)
    cloud.umount()
    for name, remote in cloud.remotes.items():
        versions = sorted(p.read_bytes()[:30] for p in remote.iterdir() if p.name.startswith("movie"))
        assert versions == sorted([ours[:30], b"edited on a meanwhile"]), name


def test_hostile_names_from_a_remote_are_refused() -> None:
    for path in ["../etc/passwd", "a/../../b", "/abs", "a//b", ".", "x/./y", "nul\0byte",
                 "n" * 256, "ok/" + "é" * 128]:
        assert bad_path_reason(path) is not None, path
    for path in ["ok", "a/b/c", "spaces are fine", "caf\udce9", "n" * 255, "..hidden", "a..b"]:
        assert bad_path_reason(path) is None, path


def test_a_name_never_vanishes_while_a_remote_replaces_its_file(cloud: Cloud) -> None:
    """A remote's newer version takes the name as a new inode; the kernel may still hold the
    old one under that name until it is told, and reaching it must give the old version
    (the other remotes hold it), not fail with ENOENT."""
    a = cloud.remotes["a"]
    mnt = cloud.mountpoint
    (a / "hot.txt").write_bytes(b"version 0")
    failures: list[str] = []
    for version in range(1, 16):
        before = f"version {version - 1}".encode()
        wait_for(functools.partial(everywhere, cloud, "hot.txt", before),
                 what=f"version {version - 1}")
        content = f"version {version}".encode()
        (a / "hot.txt").write_bytes(content)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if (mnt / "hot.txt").read_bytes() == content:
                    break
            except FileNotFoundError as error:
                failures.append(f"version {version}: {error}")
                break
        else:
            failures.append(f"version {version} never showed")
    assert not failures


def test_unmount_while_a_remote_renames_names_the_kernel_has_cached(
        make_cloud: MakeCloud) -> None:
    """Every name a remote renames is invalidated in the kernel's cache, from a thread: an
    unmount in the middle of that stream returns, and the daemon exits, each time."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, poll_interval="0.05s")
    a = cloud.remotes["a"]
    for n in range(40):
        (a / f"f{n}").write_bytes(b"x")
    for _ in range(3):
        cloud.mount()
        wait_for(lambda: len(os.listdir(cloud.mountpoint)) >= 40, what="the first listing")
        stop = time.monotonic() + 1.5
        flip = 0
        while time.monotonic() < stop:  # names renamed on a while the kernel looks them up
            for n in range(40):
                old, new = (f"f{n}", f"g{n}") if flip % 2 == 0 else (f"g{n}", f"f{n}")
                with contextlib.suppress(FileNotFoundError):
                    (a / old).rename(a / new)
            flip += 1
            for name in os.listdir(cloud.mountpoint):
                with contextlib.suppress(FileNotFoundError):
                    os.stat(cloud.mountpoint / name)
        pid = cloud.pid
        cloud.umount()  # returns once the daemon has exited
        assert not is_mounted(cloud.mountpoint)
        with contextlib.suppress(FileNotFoundError):  # gone, or a zombie for init to reap
            assert Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"


def test_a_folder_deleted_and_another_made_with_its_number_is_no_rename(
        make_cloud: MakeCloud) -> None:
    """The file system gives the new folder the number of the one just deleted: the same
    file id, yet no rename (its file differs), so the delete and the creation travel."""
    cloud = make_cloud({"a": "rw", "b": "rw"})
    a = cloud.remotes["a"]
    (a / "old").mkdir()
    (a / "old" / "f.txt").write_bytes(b"old content")
    cloud.mount()
    wait_for(lambda: everywhere(cloud, "old/f.txt", b"old content"), what="the first copy")
    cloud.wait_synced()
    made_with_the_number_of(a / "old", a / "new",
                            lambda old: (old / "f.txt").write_bytes(b"old content"))
    (a / "new" / "g.txt").write_bytes(b"new content, longer")
    wait_for(lambda: everywhere(cloud, "new/g.txt", b"new content, longer")
             and not any(os.path.lexists(place / "old")
                         for place in [cloud.mountpoint, *cloud.remotes.values()]),
             what="the delete and the creation everywhere")
    assert sorted(os.listdir(cloud.mountpoint / "new")) == ["g.txt"]
    assert "conflict" not in cloud.log.lower()
    cloud.umount()


def test_an_empty_folder_deleted_and_another_made_with_its_number_keeps_what_the_mount_put_in_it(
        make_cloud: MakeCloud) -> None:
    """The remote's copy of a folder is empty (what the mount put in it waits to go), and the
    folder made after it was deleted there gets its number: that is no rename, so the
    mount's file stays where it was put, and the new folder comes in empty."""
    cloud = make_cloud({"a": "rw"}, upload_delay="1h")
    a = cloud.remotes["a"]
    (a / "old").mkdir()
    cloud.mount()
    wait_for(lambda: (cloud.mountpoint / "old").is_dir(), what="the folder in the mount")
    (cloud.mountpoint / "old" / "mine.txt").write_bytes(b"written in the mount")
    made_with_the_number_of(a / "old", a / "new")
    wait_for(lambda: (cloud.mountpoint / "new").is_dir() and (a / "old").is_dir(),
             what="the new folder in the mount and the old one made again on the remote")
    assert os.listdir(cloud.mountpoint / "new") == []
    assert (cloud.mountpoint / "old" / "mine.txt").read_bytes() == b"written in the mount"
    cloud.umount()  # which sends what waited
    assert (a / "old" / "mine.txt").read_bytes() == b"written in the mount"
    assert os.listdir(a / "new") == []


@pytest.mark.parametrize("later", ["mount", "remote"])
def test_a_conflict_of_a_name_near_the_longest_gets_a_conflict_name_that_fits(
        make_cloud: MakeCloud, later: str) -> None:
    """A name of 250 bytes: its conflict name, suffix included, is cut to 255 bytes. It
    used to go past them: the rename there failed (ENAMETOOLONG), so the conflict never
    settled, and the upload was tried again five times a second until the remote stalled
    (onitufs umount: exit 2, changes queued), at every mount."""
    name = "n" * 246 + ".txt"
    cloud = everywhere_then_held_back(make_cloud, name, b"base")
    winner, loser = edit_both(cloud, name, later)

    def copies(root: Path) -> list[Path]:
        return [path for path in root.iterdir() if " (conflict from " in path.name]
    wait_for(lambda: [path.read_bytes() for path in copies(cloud.mountpoint)] == [loser],
             what="the earlier version kept beside the later one")
    cloud.umount()
    for remote_name, remote in cloud.remotes.items():
        assert (remote / name).read_bytes() == winner, remote_name
        assert [path.read_bytes() for path in copies(remote)] == [loser], remote_name
        assert len(os.fsencode(copies(remote)[0].name)) == 255


def test_a_conflict_that_cannot_be_kept_apart_stalls_and_unmount_says_so(
        make_cloud: MakeCloud) -> None:
    """The remote's version cannot be renamed aside there (its folder append-only: EPERM):
    the remote stalls, onitufs umount says so (exit 2) with both versions where they were,
    and once the rename can be made, the next mount keeps both."""
    cloud = make_cloud(upload_delay="1h", stall="3s")
    cloud.mount()
    (cloud.mountpoint / "x").write_bytes(b"base")
    os.setxattr(cloud.mountpoint, "user.onitufs.flush", b"1")
    cloud.wait_synced()
    (cloud.mountpoint / "x").write_bytes(b"mount's, later")
    theirs = cloud.remotes["a"] / "x"
    run_chattr = functools.partial(subprocess.run, check=True)
    # Before a's version is written: onitufs may try to keep it aside as soon as it is seen.
    run_chattr(["chattr", "+a", str(theirs.parent)])
    try:
        with theirs.open("r+b") as file:  # in place: its entry stays, in a folder that
            file.truncate()  # lets none go
            file.write(b"a's, earlier")
        stamp = time.time() - 60
        os.utime(theirs, (stamp, stamp))
        result = run("umount", cloud.mountpoint, check=False)
    finally:
        run_chattr(["chattr", "-a", str(theirs.parent)])
    assert result.returncode == 2, result.stderr
    assert "a:" in result.stderr and "still queued" in result.stderr, result.stderr
    assert theirs.read_bytes() == b"a's, earlier"
    cloud.mount()  # the next mount carries on, and keeps both
    wait_for(lambda: conflict_copies(cloud.mountpoint, "x") == [b"a's, earlier"],
             what="a's version kept beside")
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert (remote / "x").read_bytes() == b"mount's, later", name


def older_and_immutable_on_a(cloud: Cloud, content: bytes) -> Path:
    """Mount with x synced everywhere, then a's x rewritten as an older version and made
    immutable (chattr +i: its rename aside fails with EPERM); the caller takes the flag
    off."""
    cloud.mount()
    (cloud.mountpoint / "x").write_bytes(b"base")
    cloud.wait_synced()
    theirs = cloud.remotes["a"] / "x"
    theirs.write_bytes(content)
    stamp = time.time() - 60
    os.utime(theirs, (stamp, stamp))
    subprocess.run(["chattr", "+i", str(theirs)], check=True)
    return theirs


def conflict_tries(cloud: Cloud) -> int:
    """The tries of x's upload to a, each ending in the conflict."""
    return cloud.log.count("remote a: end_upload x: Conflict: ")


def both_kept_everywhere(cloud: Cloud, ours: bytes, theirs: bytes) -> None:
    """Once a's version can be renamed: x holds ours and a conflict copy a's, in the mount
    and, after the unmount, on every remote."""
    wait_for(lambda: conflict_copies(cloud.mountpoint, "x") == [theirs], timeout=60,
             what="a's version kept beside, once it can be renamed")
    cloud.umount()
    for name, remote in cloud.remotes.items():
        assert (remote / "x").read_bytes() == ours, name
        assert conflict_copies(remote, "x") == [theirs], name


@pytest.mark.parametrize("kind", ["local", "ssh"])
def test_an_upload_whose_conflict_cannot_be_kept_apart_goes_on_from_where_it_was_saved(
        kind: str, request: pytest.FixtureRequest, make_cloud: MakeCloud) -> None:
    """Each try of a 12 MiB upload that ends in a conflict the remote will not let be
    settled (its version immutable there) sends the last trip of 4 MiB again, not the
    whole file: the upload stays on the remote while the conflict waits (and an SSH
    remote's connection goes back to its pool meanwhile)."""
    if kind == "local":
        cloud = make_cloud({"a": "rw", "b": "rw"}, poll_interval="1h")
    else:
        cloud = request.getfixturevalue("make_ssh_cloud")(
            {"b": "rw"}, {"a": SshRemote(request.getfixturevalue("sshd"))}, poll_interval="1h")
    theirs = older_and_immutable_on_a(cloud, b"a's, earlier")
    ours = os.urandom(12 << 20)
    logged = len(cloud.log)
    try:
        (cloud.mountpoint / "x").write_bytes(ours)
        wait_for(lambda: conflict_tries(cloud) >= 3, what="three tries of the upload")
        since, tried = cloud.log[logged:], conflict_tries(cloud)
        sent = since.count("remote a: upload_chunk x ")
        assert sent <= 12 + 4 * (tried - 1), f"{sent} blocks sent in {tried} tries"
    finally:
        subprocess.run(["chattr", "-i", str(theirs)], check=True)
    both_kept_everywhere(cloud, ours, b"a's, earlier")


def test_a_conflict_that_cannot_be_kept_apart_is_tried_again_less_and_less_often(
        make_cloud: MakeCloud) -> None:
    """The remote's version cannot be renamed aside there (the file immutable: EPERM):
    the upload waits as after any failure, longer each time, instead of trying again five
    times a second for as long as the rename fails; and so do the driver's reports of that
    version, each of which read the remote's copy whole to compare it with ours (the sizes
    are one) before trying the rename. Once it can be made, both are kept."""
    cloud = make_cloud({"a": "rw", "b": "rw"}, poll_interval="1h")
    theirs = older_and_immutable_on_a(cloud, b"a's, earlier!!")
    try:
        (cloud.mountpoint / "x").write_bytes(b"mount's, later")

        def reads() -> int:  # of a's copy, to compare it with ours
            return cloud.log.count("remote a: get_chunk x 0 14")

        wait_for(lambda: conflict_tries(cloud) > 0, what="the upload to meet the conflict")
        time.sleep(10)
        # a try, then after 1, 2 and 4 s, both kinds: not the twenty and more of a read
        # at each report and a try every 0.2 s
        tried = conflict_tries(cloud)
        assert tried <= 6, f"the upload was tried {tried} times in 10 s"
        assert reads() <= 6, f"a's copy was read {reads()} times in 10 s"
        assert theirs.read_bytes() == b"a's, earlier!!"
    finally:
        subprocess.run(["chattr", "-i", str(theirs)], check=True)
    both_kept_everywhere(cloud, b"mount's, later", b"a's, earlier!!")
