"""An fstab line of type fuse.onitufs, mounted and unmounted by mount(8) and umount(8).

`mount -T FILE` reads a private fstab, so /etc/fstab is never touched; mount(8) runs
mount.fuse3, which runs `onitufs CONFIG MOUNTPOINT -o OPTIONS` (see namespace.py for
where it finds onitufs).
"""

from __future__ import annotations

import errno
import json
import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .conftest import Cloud, MakeCloud, run, snapshot, wait_for
from .namespace import Namespace


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[Namespace]:
    with Namespace(tmp_path) as namespace:
        yield namespace


def fstab(cloud: Cloud, options: str) -> Path:
    path = cloud.root / "fstab"
    path.write_text(f"# onitufs\n{cloud.config} {cloud.mountpoint} fuse.onitufs {options} 0 0\n")
    return path


def status(ns: Namespace, cloud: Cloud) -> dict[str, object]:
    raw = os.getxattr(ns.path(cloud.mountpoint), "user.onitufs.status")
    found: dict[str, object] = json.loads(raw)
    return found


def test_an_fstab_line_mounts_with_its_options_and_umount_flushes(make_cloud: MakeCloud,
                                                                   ns: Namespace) -> None:
    cloud = make_cloud()  # its config uploads after 0.1 s and caches 256 MiB
    table = fstab(cloud, "defaults,_netdev,nofail,noatime,allow_other,x-systemd.automount,"
                         "cache.size=300MiB,sync.upload_delay=1h")
    ns.run("mount", "-T", table, cloud.mountpoint)
    line = ns.mount_line(cloud.mountpoint)
    assert line is not None
    separator = line.index("-")
    assert line[separator + 1:separator + 3] == ["fuse.onitufs", str(cloud.config)]
    assert "noatime" in line[5].split(",")
    assert "allow_other" in line[separator + 3].split(",")
    # the options that set config keys took the place of the file's
    assert status(ns, cloud)["cache_limit"] == 300 * 1024**2
    (ns.path(cloud.mountpoint) / "hello.txt").write_text("hello")
    time.sleep(1)  # the config's upload_delay would have sent it by now
    assert all(snapshot(remote) == {} for remote in cloud.remotes.values())
    # mount -a finds the line mounted already (the mount's source is the config)
    ns.run("mount", "-a", "-T", table)
    pid = status(ns, cloud)["pid"]
    ns.run("umount", cloud.mountpoint)
    assert ns.mount_line(cloud.mountpoint) is None
    # The kernel has let go; the daemon uploads what is queued, then exits.
    wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="the daemon to exit")
    for remote in cloud.remotes.values():
        assert snapshot(remote) == {"hello.txt": ("file", b"hello")}
    assert "all remotes up to date" in cloud.log


def test_a_read_only_fstab_mount(make_cloud: MakeCloud, ns: Namespace) -> None:
    cloud = make_cloud()
    (cloud.remotes["a"] / "kept.txt").write_text("kept")
    table = fstab(cloud, "ro,noauto,user")
    ns.run("mount", "-T", table, cloud.mountpoint)
    mounted = ns.path(cloud.mountpoint)
    wait_for(lambda: (mounted / "kept.txt").exists(), what="the remote's file")
    assert (mounted / "kept.txt").read_text() == "kept"
    with pytest.raises(OSError) as refused:
        (mounted / "new.txt").write_text("no")
    assert refused.value.errno == errno.EROFS
    ns.run("umount", cloud.mountpoint)


def test_a_bad_option_in_fstab_is_one_line_and_mounts_nothing(make_cloud: MakeCloud,
                                                              ns: Namespace) -> None:
    cloud = make_cloud()
    result = ns.run("mount", "-T", fstab(cloud, "defaults,cache.size=lots"), cloud.mountpoint,
                    check=False)
    assert result.returncode != 0
    assert "onitufs: -o cache.size: 'lots' is not a size" in result.stderr
    assert ns.mount_line(cloud.mountpoint) is None
    assert not cloud.cache.exists()


def test_config_keys_given_as_options_are_checked_as_in_the_file(make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    for option, said in (("remotes.a.path=x", "only the keys of [cache] and [sync]"),
                         ("sync.upload_dely=5s", "-o sync.upload_dely: unknown key"),
                         ("cache.block_size=3000", "-o cache.block_size: must be a multiple")):
        # as mount.fuse3 runs it
        result = run(cloud.config, cloud.mountpoint, "-o", f"rw,dev,suid,{option}", check=False)
        assert result.returncode == 1
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("onitufs: ") and said in lines[0], option
    assert not cloud.cache.exists()
