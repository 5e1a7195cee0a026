"""A remote on a disk that ignores case (exFAT, as most USB disks are), local or behind
an SSH server.

Such a disk answers to `a.txt` with the `A.txt` it holds and cannot hold both. A name it
takes for another's stays off it, saying so, and nothing of the other is moved aside,
replaced or taken for deleted; a rename in case only reaches it; nothing a notice names
in another case comes back into the mount.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator

import pytest

pytest.register_assert_rewrite("tests.sshd", "tests.exfat")
from .conftest import Cloud, everywhere, run, snapshot, wait_for  # noqa: E402
from .exfat import exfat_disk  # noqa: E402
from .sshd import SshRemote  # noqa: E402

pytest_plugins = ["tests.sshd"]

CLASH = "which it takes for the same name (it ignores case)"


@pytest.fixture(params=["local", "ssh"])
def on_exfat(request: pytest.FixtureRequest) -> Iterator[Callable[..., Cloud]]:
    """Makes a cloud of two remotes: a, a local folder, and b, whose folder is on exFAT,
    kept by the local driver or by the SSH driver through a server on this machine."""
    with contextlib.ExitStack() as stack:
        def make(**settings: str) -> Cloud:
            cloud: Cloud
            if request.param == "local":
                cloud = request.getfixturevalue("make_cloud")({"a": "rw", "b": "rw"},
                                                              **settings)
            else:
                server = request.getfixturevalue("sshd")
                cloud = request.getfixturevalue("make_ssh_cloud")(
                    {"a": "rw"}, {"b": SshRemote(server)}, **settings)
            stack.enter_context(exfat_disk(cloud, cloud.remotes["b"]))
            return cloud

        yield make


def test_names_the_disk_takes_for_one_another_stay_off_it(
        on_exfat: Callable[..., Cloud]) -> None:
    cloud = on_exfat(stall="3s")
    usb = cloud.remotes["b"]
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "A.txt").write_bytes(b"upper")
    (mnt / "docs").mkdir()
    (mnt / "docs" / "one").write_bytes(b"lower folder")
    wait_for(lambda: everywhere(cloud, "A.txt", b"upper")
             and everywhere(cloud, "docs/one", b"lower folder"), what="the first names")
    (mnt / "a.txt").write_bytes(b"lower")
    (mnt / "Docs").mkdir()
    (mnt / "Docs" / "one").write_bytes(b"upper folder")
    wait_for(lambda: (cloud.remotes["a"] / "Docs" / "one").exists()
             and (cloud.remotes["a"] / "a.txt").exists(), what="remote a")
    wait_for(lambda: "'A.txt', " + CLASH in cloud.log and "'docs', " + CLASH in cloud.log,
             what="the clashes said")
    every = {"A.txt": ("file", b"upper"), "a.txt": ("file", b"lower"),
             "docs": ("dir", b""), "docs/one": ("file", b"lower folder"),
             "Docs": ("dir", b""), "Docs/one": ("file", b"upper folder")}
    first = {"A.txt": ("file", b"upper"), "docs": ("dir", b""),
             "docs/one": ("file", b"lower folder")}
    assert snapshot(usb) == first
    stopped = run("umount", mnt, check=False)
    assert stopped.returncode == 2 and CLASH in stopped.stderr, stopped

    # A whole listing of each remote, the disk's included, takes nothing for deleted.
    cloud.mount()
    cloud.wait_listed()
    assert snapshot(mnt) == every
    assert snapshot(cloud.remotes["a"]) == every
    assert snapshot(usb) == first

    # Once one of each pair is renamed, the disk takes it.
    (mnt / "a.txt").rename(mnt / "a2.txt")
    (mnt / "Docs").rename(mnt / "Docs2")
    cloud.umount()
    renamed = {"A.txt": ("file", b"upper"), "a2.txt": ("file", b"lower"),
               "docs": ("dir", b""), "docs/one": ("file", b"lower folder"),
               "Docs2": ("dir", b""), "Docs2/one": ("file", b"upper folder")}
    assert snapshot(usb) == renamed
    assert snapshot(cloud.remotes["a"]) == renamed


def test_a_rename_in_case_only_reaches_the_disk(on_exfat: Callable[..., Cloud]) -> None:
    # A local disk is watched, and listed whole only at the start: what its notices say
    # counts.
    cloud = on_exfat(poll_interval="10m", upload_delay="0.5s")
    usb = cloud.remotes["b"]
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "Word.txt").write_bytes(b"word")
    (mnt / "Dir").mkdir()
    (mnt / "Dir" / "f").write_bytes(b"in the folder")
    # Not looked at on the disk by name: exfat-fuse answers the old name's lookup
    # after the rename only where the kernel keeps no entry of it.
    cloud.wait_synced()
    (mnt / "Word.txt").rename(mnt / "word.txt")
    (mnt / "Dir").rename(mnt / "dir")
    renamed = {"word.txt": ("file", b"word"), "dir": ("dir", b""),
               "dir/f": ("file", b"in the folder")}
    wait_for(lambda: snapshot(usb) == renamed, what="the disk to take the new names")
    # The disk's change notices name the old names too, which it still answers to: a
    # file written after the renames is on every remote once they are all taken in.
    (mnt / "later").write_bytes(b"later")
    wait_for(lambda: everywhere(cloud, "later", b"later"), what="a later file")
    renamed["later"] = ("file", b"later")
    assert snapshot(cloud.remotes["a"]) == renamed
    assert snapshot(mnt) == renamed
    cloud.umount()
    cloud.mount()
    cloud.wait_listed()
    assert snapshot(mnt) == renamed
    cloud.umount()
    assert snapshot(usb) == renamed
    assert snapshot(cloud.remotes["a"]) == renamed


def test_a_name_the_disk_refuses_stays_off_it(on_exfat: Callable[..., Cloud]) -> None:
    """exFAT refuses " * : < > ? \\ | in a name: the file or folder stays off it, saying
    so, until it is renamed."""
    cloud = on_exfat(stall="3s")
    usb = cloud.remotes["b"]
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "what?.txt").write_bytes(b"question")
    (mnt / "at 10:30").mkdir()
    (mnt / "at 10:30" / "notes").write_bytes(b"notes")
    wait_for(lambda: (cloud.remotes["a"] / "at 10:30" / "notes").exists()
             and (cloud.remotes["a"] / "what?.txt").exists(), what="remote a")
    refused = "the remote's disk refuses this name"
    wait_for(lambda: f"what?.txt: {refused}" in cloud.log
             and f"at 10:30: {refused}" in cloud.log, what="the refusals said")
    assert snapshot(usb) == {}
    stopped = run("umount", mnt, check=False)
    assert stopped.returncode == 2 and refused in stopped.stderr, stopped

    cloud.mount()
    (mnt / "what?.txt").rename(mnt / "what.txt")
    (mnt / "at 10:30").rename(mnt / "at 10.30")
    (mnt / "fine.txt").write_bytes(b"fine")
    wait_for(lambda: everywhere(cloud, "fine.txt", b"fine"), what="fine.txt")
    (mnt / "fine.txt").rename(mnt / "fine|.txt")
    wait_for(lambda: "fine|.txt: " + refused in cloud.log, what="the moved name refused")
    (mnt / "fine|.txt").rename(mnt / "fine.txt")
    cloud.umount()
    renamed = {"what.txt": ("file", b"question"), "at 10.30": ("dir", b""),
               "at 10.30/notes": ("file", b"notes"), "fine.txt": ("file", b"fine")}
    assert snapshot(usb) == renamed
    assert snapshot(cloud.remotes["a"]) == renamed


def test_links_stay_off_a_disk_that_holds_none(on_exfat: Callable[..., Cloud]) -> None:
    """exFAT holds no symbolic links: they stay in the mount and on the other remotes, said
    once, and the disk is up to date without them."""
    cloud = on_exfat()
    usb = cloud.remotes["b"]
    cloud.mount()
    mnt = cloud.mountpoint
    (mnt / "f").write_bytes(b"file")
    (mnt / "link").symlink_to("f")
    (mnt / "d").mkdir()
    (mnt / "d" / "up").symlink_to("../f")
    cloud.wait_synced()
    assert "holds no symbolic links" in cloud.log
    cloud.umount()
    every = {"f": ("file", b"file"), "link": ("symlink", b"f"), "d": ("dir", b""),
             "d/up": ("symlink", b"../f")}
    assert snapshot(cloud.remotes["a"]) == every
    assert snapshot(usb) == {"f": ("file", b"file"), "d": ("dir", b"")}
    cloud.mount()
    cloud.wait_listed()
    (mnt / "later").write_bytes(b"later")
    wait_for(lambda: everywhere(cloud, "later", b"later"), what="a later file")
    assert snapshot(mnt) == {**every, "later": ("file", b"later")}
    cloud.umount()
