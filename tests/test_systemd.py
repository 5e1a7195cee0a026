"""The user unit systemd/onitufs@.service, and the config's mountpoint key it relies on.

systemd-analyze verifies the unit. No user service manager runs here, so the test plays
its part for the rest: it runs the unit's ExecStart with the specifiers expanded as
systemd expands them, listens on NOTIFY_SOCKET, and stops the service as `systemctl
--user stop` does with KillMode=mixed, by SIGTERM to the main process.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from .conftest import Cloud, MakeCloud, is_mounted, run, snapshot

UNIT = Path(__file__).parents[1] / "systemd" / "onitufs@.service"
MAN = Path(__file__).parents[1] / "man"
# systemd looks for a bare command in its own folders (/usr/local/bin, /usr/bin, ...);
# here the command is this checkout's.
ONITUFS = Path(sys.executable).parent / "onitufs"


def settings() -> dict[str, str]:
    """The unit's settings, as "Section.Key" to value."""
    found, section = {}, ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            section = line.strip("[]")
        elif line and not line.startswith("#"):
            key, _, value = line.partition("=")
            found[f"{section}.{key}"] = value
    return found


def exec_start(instance: str, config_home: Path) -> list[str]:
    """ExecStart as systemd runs it for onitufs@INSTANCE (systemd.unit(5), SPECIFIERS)."""
    line = settings()["Service.ExecStart"]
    for specifier, value in (("%i", instance), ("%E", str(config_home)), ("%%", "%")):
        line = line.replace(specifier, value)
    assert "%" not in line, f"a specifier the test does not expand: {line}"
    command = shlex.split(line)
    return [str(ONITUFS) if command[0] == "onitufs" else command[0], *command[1:]]


def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    assert analyze is not None, "systemd-analyze is missing (Debian package systemd)"
    unit = tmp_path / "onitufs@cloud.service"
    unit.write_text(UNIT.read_text().replace("ExecStart=onitufs ", f"ExecStart={ONITUFS} "))
    runtime = tmp_path / "runtime"  # a user manager's, which verify needs
    runtime.mkdir(mode=0o700)
    man = tmp_path / "man"  # for Documentation=: verify checks that the pages are there
    for page in ("onitufs.1", "onitufs.toml.5"):
        (man / f"man{page[-1]}").mkdir(parents=True, exist_ok=True)
        (man / f"man{page[-1]}" / page).symlink_to(MAN / page)
    result = subprocess.run([analyze, "--user", "verify", unit], capture_output=True, text=True,
                            env={**os.environ, "XDG_RUNTIME_DIR": str(runtime),
                                 "MANPATH": str(man)}, timeout=60)
    assert (result.returncode, result.stdout + result.stderr) == (0, "")
    assert settings()["Service.Type"] == "notify"
    assert settings()["Service.KillMode"] == "mixed"  # SIGTERM to the daemon alone


def test_the_unit_is_ready_once_mounted_and_stops_once_every_upload_is_done(
        make_cloud: MakeCloud, tmp_path: Path) -> None:
    cloud = make_cloud(upload_delay="1h")  # nothing uploads before the stop
    cloud.config.write_text('mountpoint = "mnt"\n' + cloud.config.read_text())
    config_home = tmp_path / "config"  # %E: $XDG_CONFIG_HOME, ~/.config by default
    (config_home / "onitufs").mkdir(parents=True)
    (config_home / "onitufs" / "cloud.toml").symlink_to(cloud.config)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(tmp_path / "notify"))
    listener.settimeout(30)
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify"),
           "XDG_CONFIG_HOME": str(config_home)}
    with (tmp_path / "journal").open("w") as journal:
        service = subprocess.Popen(exec_start("cloud", config_home), env=env,
                                   stdin=subprocess.DEVNULL, stdout=journal, stderr=journal)
    try:
        ready = listener.recv(4096).decode()
        assert "READY=1" in ready.splitlines()
        # ready means the mount answers
        assert is_mounted(cloud.mountpoint)
        assert cloud.status()["pid"] == service.pid
        (cloud.mountpoint / "work.txt").write_text("not lost")
        assert cloud.status()["remotes"][0]["pending"] == 1
        service.send_signal(signal.SIGTERM)
        assert "STOPPING=1" in listener.recv(4096).decode().splitlines()
        assert service.wait(timeout=60) == 0
        for remote in cloud.remotes.values():
            assert snapshot(remote) == {"work.txt": ("file", b"not lost")}
        assert not is_mounted(cloud.mountpoint)
    finally:
        listener.close()
        stop(service, cloud)


def stop(service: subprocess.Popen[bytes], cloud: Cloud) -> None:
    if service.poll() is None:
        service.kill()
        service.wait()
    cloud.cleanup()


def test_mount_with_one_argument_needs_the_mountpoint_key(make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    result = run("mount", cloud.config, check=False)
    assert result.returncode == 1
    assert result.stderr == (f"onitufs: {cloud.config}: no mount point: name one (onitufs mount "
                             'MOUNTPOINT CONFIG), or set mountpoint = "~/Cloud" in the config\n')
    assert not cloud.cache.exists()
    cloud.config.write_text('mountpoint = ""\n' + cloud.config.read_text())
    result = run("mount", cloud.config, check=False)
    assert result.stderr == f"onitufs: {cloud.config}: mountpoint: expected a non-empty string\n"
