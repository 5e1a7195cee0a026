"""Every config key is checked, a mount point holding files is refused, and a mount that
fails leaves nothing behind that it made.

A key that no table knows (a typo such as `mdoe = "w"`) stops the mount with one line
that names it and the keys the table knows, at every mount, whatever the driver: the
core checks each remote's table against the keys its driver declares (OPTIONS). A
mount point with files in it is refused unless `-o nonempty` is given, since the
mount would hide them. A mount that fails makes no cache folder, index or log, or
takes away those it made.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import subprocess
import types
from collections.abc import Iterator
from pathlib import Path

import pytest
from onitufs_ssh import settings as ssh_settings

from onitufs.cli.mount import NewPaths
from onitufs.config import ConfigError, Options
from onitufs.index import Index
from onitufs.plug import check_keys

from .conftest import MakeCloud, daemons_of, is_mounted, run, tree, wait_for

LOCAL_KEYS = "driver, mode, path, poll_interval"
SSH_KEYS = ("driver, mode, host, port, user, path, identity, known_hosts, poll_interval, "
            "connections, upload_connections")


def write_config(root: Path, *tables: str, cache: str = "cache") -> Path:
    """onitufs.toml in root: the cache at `cache` (no [cache] table when empty), then
    `tables` as they are."""
    config = root / "onitufs.toml"
    head = ["[cache]", f'path = "{cache}"', 'size = "64 MiB"', ""] if cache else []
    config.write_text("\n".join([*head, "[sync]", 'upload_delay = "0.1s"', "", *tables]))
    return config


def local(name: str, *extra: str, path: str | None = None) -> str:
    return "\n".join([f"[remotes.{name}]", 'driver = "local"', f'path = "{path or name}"',
                      'poll_interval = "0.3s"', *extra, ""])


def refused(root: Path, config: Path, message: str, *options: str, where: Path | None = None,
            mountpoint: Path | None = None) -> None:
    """`onitufs mount [OPTIONS] MOUNTPOINT CONFIG` fails with exit 1 and one line holding
    `message`, and leaves nothing mounted and nothing new under root."""
    mountpoint = mountpoint or root / "mnt"
    before = tree(root)
    result = run("mount", *options, mountpoint, config, check=False)
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith(f"onitufs: {where or config}: "), result.stderr
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not is_mounted(mountpoint)
    assert tree(root) == before  # no cache folder, no index, no log


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """tmp_path with an empty mount point `mnt` and a folder `a` for a local remote;
    nothing mounted or running is left whatever the test did."""
    (tmp_path / "mnt").mkdir()
    (tmp_path / "a").mkdir()
    yield tmp_path
    if is_mounted(tmp_path / "mnt"):
        subprocess.run(["fusermount3", "-u", "-z", str(tmp_path / "mnt")], check=False,
                       capture_output=True)
    for pid in daemons_of(tmp_path / "onitufs.toml"):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        wait_for(lambda pid=pid: not Path(f"/proc/{pid}").exists(),  # type: ignore[misc]
                 what="the daemon to die")


# name: (the remote's extra lines, the key the line names)
LOCAL_TYPOS = {
    "mode": (['mdoe = "w"'], "mdoe"),
    "poll interval": (['poll_intervall = "1s"'], "poll_intervall"),
    "another driver's key": (['host = "server"'], "host"),
}


@pytest.mark.parametrize("name", list(LOCAL_TYPOS))
def test_an_unknown_key_of_a_local_remote_is_refused(root: Path, name: str) -> None:
    extra, key = LOCAL_TYPOS[name]
    config = write_config(root, local("a", *extra))
    refused(root, config, f"remotes.a: unknown key '{key}' (known: {LOCAL_KEYS})")


def test_an_unknown_key_is_refused_at_every_mount(root: Path) -> None:
    """Not only when the remote is new: `mdoe = "w"` added to a remote the cache knows
    would leave it read-write without a word."""
    (root / "b").mkdir()
    config = write_config(root, local("a"), local("b"))
    run("mount", root / "mnt", config)
    run("umount", root / "mnt")
    write_config(root, local("a"), local("b", 'mdoe = "w"'))
    refused(root, config, f"remotes.b: unknown key 'mdoe' (known: {LOCAL_KEYS})")
    for command in ("fsck", "verify"):
        result = run(command, config, check=False)
        assert result.returncode == 8
        assert result.stderr.strip() == (f"onitufs: {config}: remotes.b: unknown key 'mdoe' "
                                         f"(known: {LOCAL_KEYS})")


def ssh(name: str, *extra: str) -> str:
    """An SSH remote on a host that does not exist: the key check needs no server."""
    return "\n".join([f"[remotes.{name}]", 'driver = "ssh"', 'host = "nowhere.invalid"',
                      'path = "cloud"', *extra, ""])


@pytest.mark.parametrize("known", [False, True], ids=["new remote", "known remote"])
def test_an_unknown_key_of_an_ssh_remote_is_refused(root: Path, known: bool) -> None:
    if known:  # a remote the cache has seen: its driver's check() does not run any more
        index = Index(root / "cache", 2**30, 1024**2)
        index.remote_id("s")
        index.close()
    config = write_config(root, local("a"), ssh("s", 'poll_intervall = "1m"'))
    refused(root, config, f"remotes.s: unknown key 'poll_intervall' (known: {SSH_KEYS})")


def test_an_ssh_host_naming_another_user_than_user_is_refused(root: Path) -> None:
    table = ssh("s", 'user = "bob"').replace('host = "nowhere.invalid"',
                                             'host = "ann@nowhere.invalid"')
    config = write_config(root, local("a"), table)
    refused(root, config, "remotes.s.host: names the user 'ann', and user says 'bob': "
                          "keep one")


@pytest.mark.parametrize(("table", "login"), [
    ({"host": "nas"}, ("nas", "ann")),
    ({"host": "nas", "user": "bob"}, ("nas", "bob")),
    ({"host": "bob@nas"}, ("nas", "bob")),
    ({"host": "bob@nas", "user": "bob"}, ("nas", "bob")),
])
def test_an_ssh_host_may_name_its_user(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                       table: dict[str, str], login: tuple[str, str]) -> None:
    monkeypatch.setattr(getpass, "getuser", lambda: "ann")
    options = Options({"driver": "ssh", "path": "cloud", **table}, "remotes.s", tmp_path)
    settings = ssh_settings.read(options)
    assert (settings.host, settings.user) == login


@pytest.mark.parametrize("host", ["@nas", "bob@"])
def test_an_ssh_host_with_an_empty_user_or_name_is_refused(tmp_path: Path, host: str) -> None:
    options = Options({"driver": "ssh", "path": "cloud", "host": host}, "remotes.s", tmp_path)
    with pytest.raises(ConfigError, match=r"^remotes.s.host: expected HOST or USER@HOST$"):
        ssh_settings.read(options)


# name: (the tables, the line's message)
CORE_TYPOS = {
    "cache": ('[cache]\nszie = "1 GiB"\n', "cache: unknown key 'szie' "
              "(known: path, size, block_size, write_buffer)"),
    "sync": ('[sync]\nupload_dealy = "1s"\n', "sync: unknown key 'upload_dealy' "
             "(known: upload_delay, fsync, stall)"),
}


@pytest.mark.parametrize("name", list(CORE_TYPOS))
def test_an_unknown_key_of_cache_or_sync_is_refused(root: Path, name: str,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "xdg"))  # the default cache: in root
    table, message = CORE_TYPOS[name]
    config = root / "onitufs.toml"
    config.write_text(table + "\n" + local("a"))
    refused(root, config, message)


def test_a_driver_that_declares_no_keys_gets_its_table_unchecked(tmp_path: Path) -> None:
    options = Options({"driver": "x", "whatever": 1}, "c.toml: remotes.x", tmp_path)
    check_keys(types.ModuleType("undeclared"), options, "x")  # no OPTIONS: nothing refused
    declared = types.ModuleType("declared")
    declared.OPTIONS = ("path",)  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"^c.toml: remotes.x: unknown key 'whatever' "
                                          r"\(known: driver, mode, path\)$"):
        check_keys(declared, options, "x")
    declared.OPTIONS = "path"  # type: ignore[attr-defined]
    with pytest.raises(ConfigError, match=r"remotes.x.driver: driver 'x' \(declared\) "
                                          "declares OPTIONS that are not a tuple of key names"):
        check_keys(declared, options, "x")


def test_a_mount_point_holding_files_is_refused_unless_nonempty(make_cloud: MakeCloud) -> None:
    cloud = make_cloud({"a": "rw"})
    (cloud.mountpoint / "hidden.txt").write_text("under the mount")
    refused(cloud.root, cloud.config, "not empty: its files would be hidden while mounted "
            "(move them away, or mount over them with -o nonempty)", where=cloud.mountpoint)
    cloud.mount("nonempty")  # onitufs's own option: libfuse3 would refuse it
    assert not (cloud.mountpoint / "hidden.txt").exists()
    (cloud.mountpoint / "new.txt").write_text("in the mount")
    cloud.umount()
    assert (cloud.mountpoint / "hidden.txt").read_text() == "under the mount"
    assert (cloud.remotes["a"] / "new.txt").read_text() == "in the mount"
    assert not (cloud.remotes["a"] / "hidden.txt").exists()
    (cloud.mountpoint / "hidden.txt").unlink()  # as a list with another option, too
    (cloud.mountpoint / ".dotfile").write_text("")
    refused(cloud.root, cloud.config, "not empty", where=cloud.mountpoint)
    cloud.mount("allow_other,nonempty")
    assert (cloud.mountpoint / "new.txt").read_text() == "in the mount"
    cloud.umount()


def test_a_failed_mount_of_a_new_cache_leaves_nothing(root: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever fails, whether found before the cache is opened or after: no cache
    folder, no index, no log, no folder made for them."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(root / "xdg"))  # the default cache: in root
    for cache in ("cache", "deep/er/cache", ""):
        # A new remote's folder is missing: found by the driver's check, once the index
        # is open (in the background and in the foreground).
        config = write_config(root, local("a"), local("b"), cache=cache)
        for foreground in ([], ["-f"]):
            refused(root, config, f"remotes.b.path: {root}/b is not a directory", *foreground)
        # The mount point is missing, or the kernel refuses an option.
        config = write_config(root, local("a"), cache=cache)
        refused(root, config, "no such folder (create it first)", where=root / "nowhere",
                mountpoint=root / "nowhere")
        refused(root, config, "the kernel refused the mount", "-o", "no_such_option",
                where=root / "mnt")
        # A log of its own.
        refused(root, config, "no such folder", "--log", str(root / "logs" / "mount.log"),
                where=root / "nowhere", mountpoint=root / "nowhere")
        refused(root, config, "the kernel refused the mount", "--log",
                str(root / "logs" / "mount.log"), "-o", "no_such_option", where=root / "mnt")


def test_a_failed_mount_keeps_the_cache_of_earlier_ones(root: Path) -> None:
    config = write_config(root, local("a"))
    run("mount", root / "mnt", config)
    run("umount", root / "mnt")
    log = (root / "cache" / "onitufs.log").read_bytes()
    write_config(root, local("a"), local("b"))
    refused(root, config, f"remotes.b.path: {root}/b is not a directory")
    assert (root / "cache" / "data.mdb").exists()
    assert (root / "cache" / "onitufs.log").read_bytes().startswith(log)
    run("mount", root / "mnt", write_config(root, local("a")))
    assert is_mounted(root / "mnt")
    run("umount", root / "mnt")


def test_a_cache_in_use_is_never_taken_away(root: Path) -> None:
    """The daemon that failed is not the only one that may use a new cache folder: one
    held by another process stays, whatever the failed mount made."""
    made = NewPaths(root / "cache", root / "cache" / "onitufs.log")
    index = Index(root / "cache", 2**30, 1024**2)
    try:
        made.remove()
        assert {"data.mdb", "lock.mdb", "lock"} <= set(tree(root / "cache"))
    finally:
        index.close()
    made.remove()
    assert not (root / "cache").exists()

