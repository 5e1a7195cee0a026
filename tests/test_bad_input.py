"""Bad input gets one clear line, a non-zero exit, and leaves nothing mounted."""

from __future__ import annotations

from pathlib import Path

import pytest

from onitufs.config import ConfigError, load, parse_duration, parse_size

from .conftest import Cloud, MakeCloud, is_mounted, run


def test_sizes_and_durations() -> None:
    assert parse_size("4 GiB", "k") == 4 * 1024**3
    assert parse_size("1.5MiB", "k") == 1536 * 1024
    assert parse_size(4096, "k") == 4096
    assert parse_duration("500ms", "k") == 0.5
    assert parse_duration("2m", "k") == 120
    assert parse_duration(3, "k") == 3
    for bad in ("lots", "-1 GiB", "4 XB", True):
        with pytest.raises(ConfigError, match="is not a size"):
            parse_size(bad, "k")
    with pytest.raises(ConfigError, match="is not a duration"):
        parse_duration("soon", "k")


def test_the_default_cache_is_in_the_xdg_cache_home(tmp_path: Path, own_cache_home: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    config = tmp_path / "cloud.toml"
    config.write_text(f'[remotes.x]\ndriver = "local"\npath = "{tmp_path}"\n')
    assert load(config).cache_path.parent == own_cache_home / "onitufs"
    assert load(config).cache_path.name.startswith("cloud-")
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert load(config).cache_path.parent == Path.home() / ".cache" / "onitufs"


BROKEN_CONFIGS = {
    "not toml": ("[cache\npath = 1", "not valid TOML"),
    "no remotes": ('[cache]\npath = "c"\n', "no remotes"),
    "unknown driver": ('[remotes.x]\ndriver = "carrier-pigeon"\npath = "x"\n',
                       "no driver named 'carrier-pigeon'"),
    "missing driver": ('[remotes.x]\npath = "x"\n', "remotes.x: missing key 'driver'"),
    "bad mode": ('[remotes.x]\ndriver = "local"\npath = "x"\nmode = "rwx"\n',
                 "remotes.x.mode: expected one of rw, r, w"),
    "bad size": ('[cache]\nsize = "huge"\n[remotes.x]\ndriver = "local"\npath = "x"\n',
                 "cache.size: 'huge' is not a size"),
    "typo in cache": ('[cache]\nszie = "1 GiB"\n[remotes.x]\ndriver = "local"\npath = "x"\n',
                      "unknown key 'szie'"),
    "missing path": ('[remotes.x]\ndriver = "local"\npath = "does-not-exist"\n',
                     "does-not-exist is not a directory"),
    "write-only": ('[remotes.x]\ndriver = "local"\npath = "x"\nmode = "w"\n',
                   "at least one must be readable"),
    "bad fsync": ('[sync]\nfsync = "replicas:2"\n[remotes.x]\ndriver = "local"\npath = "x"\n',
                  "sync.fsync: expected \"local\" or \"replicas:K\" with K from 1 to 1"),
    "bad poll": ('[remotes.x]\ndriver = "local"\npath = "x"\npoll_interval = "often"\n',
                 "remotes.x.poll_interval: 'often' is not a duration"),
}


@pytest.mark.parametrize("name", sorted(BROKEN_CONFIGS))
def test_broken_config(tmp_path: Path, name: str) -> None:
    text, message = BROKEN_CONFIGS[name]
    (tmp_path / "x").mkdir()
    (tmp_path / "mnt").mkdir()
    config = tmp_path / "broken.toml"
    config.write_text(text)
    result = run("mount", tmp_path / "mnt", config, check=False)
    assert result.returncode == 1
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("onitufs: ")
    assert not is_mounted(tmp_path / "mnt")


def test_missing_config_file(tmp_path: Path) -> None:
    result = run("mount", tmp_path, tmp_path / "nope.toml", check=False)
    assert result.returncode == 1
    assert result.stderr.strip() == f"onitufs: {tmp_path / 'nope.toml'}: no such config file"


def test_a_folder_given_as_the_config(tmp_path: Path) -> None:
    """The mount point and the config swapped, or a mount point given to fsck or verify."""
    (tmp_path / "mnt").mkdir()
    config = tmp_path / "onitufs.toml"
    config.write_text('[remotes.a]\ndriver = "local"\npath = "a"\n')
    commands: list[tuple[list[str | Path], int]] = [
        (["mount", config, tmp_path / "mnt"], 1),
        (["fsck", tmp_path / "mnt"], 8),  # fsck(8)'s code for an operational error, as verify's
        (["verify", tmp_path / "mnt"], 8)]
    for command, code in commands:
        result = run(*command, check=False)
        assert result.returncode == code, (command, result.stderr)
        assert result.stderr == f"onitufs: {tmp_path / 'mnt'}: a folder, not a config file\n", \
            result.stderr
    assert not is_mounted(tmp_path / "mnt")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["mnt", "onitufs.toml"]


def test_mount_point_problems(make_cloud: MakeCloud, tmp_path: Path) -> None:
    cloud = make_cloud()
    result = run("mount", tmp_path / "nowhere", cloud.config, check=False)
    assert result.returncode == 1 and "no such folder" in result.stderr
    cloud.mount()
    other = make_cloud()
    result = run("mount", cloud.mountpoint, other.config, check=False)
    assert result.returncode == 1 and "already a mount point" in result.stderr
    second = tmp_path / "second"
    second.mkdir()
    result = run("mount", second, cloud.config, check=False)  # same cache, in use
    assert result.returncode == 1 and "cache in use by another onitufs process" in result.stderr
    assert not is_mounted(second)


def test_commands_on_a_folder_that_is_not_a_mount(tmp_path: Path) -> None:
    for command in ("status", "umount"):
        result = run(command, tmp_path, check=False)
        assert result.returncode == 1
        assert f"{tmp_path}: not a mount point" in result.stderr, result.stderr


def test_umount_of_a_busy_mount_says_so_and_keeps_it(cloud: Cloud) -> None:
    with open(cloud.mountpoint / "held-open", "wb"):
        result = run("umount", cloud.mountpoint, check=False)
        assert result.returncode == 1
        assert "cannot unmount" in result.stderr
        assert is_mounted(cloud.mountpoint)
    cloud.umount()


def test_changed_block_size_is_refused(make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    cloud.mount()
    cloud.umount()
    cloud.settings["block_size"] = "64 KiB"
    cloud.write_config()
    result = run("mount", cloud.mountpoint, cloud.config, check=False)
    assert result.returncode == 1 and "was made with blocks of 1048576 bytes" in result.stderr
