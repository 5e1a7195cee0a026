"""Where a mount logs, and how much: --log-level, standard error in the foreground, a
rotated file for the background daemon, the journal where there is one (once), and no
option value of the config in any of them."""

from __future__ import annotations

import errno
import importlib.util
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from onitufs.config import parse

from .conftest import ONITUFS, MakeCloud, is_mounted, run, wait_for
from .namespace import Namespace

COMMAND = Path(sys.executable).parent / "onitufs"


def test_log_level_bounds_what_the_daemon_logs(make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    cloud.mount()  # at debug level: every call to a driver
    (cloud.mountpoint / "a.txt").write_text("a")
    cloud.umount()
    assert " DEBUG onitufs.remotes: remote a: " in cloud.log
    (cloud.cache / "onitufs.log").unlink()
    run("mount", "--log-level", "warning", cloud.mountpoint, cloud.config)
    (cloud.mountpoint / "b.txt").write_text("b")
    cloud.umount()
    assert " DEBUG " not in cloud.log and " INFO " not in cloud.log


def test_there_is_one_way_to_set_the_log_level(make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    for wrong, said in ((["--log-level", "loud"], "invalid choice: 'loud'"),
                        (["--debug"], "unrecognized arguments: --debug")):
        result = run("mount", *wrong, cloud.mountpoint, cloud.config, check=False)
        assert result.returncode == 2 and said in result.stderr
        assert not is_mounted(cloud.mountpoint)


def test_the_foreground_logs_to_standard_error_only(make_cloud: MakeCloud) -> None:
    cloud = make_cloud()
    daemon = subprocess.Popen([*ONITUFS, "mount", "-f", cloud.mountpoint, cloud.config],
                              stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: is_mounted(cloud.mountpoint), what="the mount")
        cloud.umount()
        _, stderr = daemon.communicate(timeout=60)
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert daemon.returncode == 0
    assert f" INFO onitufs.daemon: mounted {cloud.mountpoint}\n" in stderr
    assert not (cloud.cache / "onitufs.log").exists()


ROTATE = """
import logging, os, sys
from pathlib import Path
from onitufs import logs
logs.MAX_BYTES = 2000
logs.setup("info", Path(sys.argv[1]), "%(message)s")
for number in range(200):
    logging.getLogger("test").info("line %03d %s", number, "x" * 40)
print("printed, not logged", file=sys.stderr, flush=True)
os.write(1, b"written to standard output\\n")
"""


def test_the_daemon_log_is_rotated_and_printed_output_follows_it(tmp_path: Path) -> None:
    log = tmp_path / "onitufs.log"
    with log.open("ab") as start:  # as `onitufs mount` starts the daemon
        subprocess.run([sys.executable, "-c", ROTATE, log], stdout=start, stderr=start,
                       check=True, timeout=60)
    assert sorted(path.name for path in tmp_path.iterdir()) == [
        "onitufs.log", "onitufs.log.1", "onitufs.log.2", "onitufs.log.3"]
    for path in tmp_path.iterdir():
        assert path.stat().st_size <= 2000
    assert log.read_text().endswith("line 199 " + "x" * 40 + "\nprinted, not logged\n"
                                    "written to standard output\n")


def test_a_secret_in_an_option_is_never_shown(tmp_path: Path) -> None:
    config = parse({"remotes": {"cloud": {"driver": "example", "token": "s3cr3t"}}},
                   tmp_path / "cloud.toml")
    assert "s3cr3t" not in repr(config) and "s3cr3t" not in str(config)
    assert "token" in repr(config)


@pytest.fixture
def ns(tmp_path: Path) -> Iterator[Namespace]:
    with Namespace(tmp_path) as namespace:
        yield namespace


def test_the_journal_gets_each_line_once(make_cloud: MakeCloud, ns: Namespace,
                                         tmp_path: Path) -> None:
    if importlib.util.find_spec("systemd") is None:
        pytest.fail("systemd-python is missing: pip install '.[journal]' (needs libsystemd-dev)")
    cloud = make_cloud()
    (ns.path("/run") / "systemd" / "journal").mkdir(parents=True)
    journal = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    journal.bind(str(ns.path("/run/systemd/journal/socket")))
    journal.settimeout(20)
    with journal:
        # the background daemon: to its file, and to the journal
        ns.run(COMMAND, "mount", cloud.mountpoint, cloud.config)
        ns.run(COMMAND, "umount", cloud.mountpoint)
        fields: dict[str, str] = {}
        while fields.get("MESSAGE") != f"mounted {cloud.mountpoint}":
            fields = dict(line.split("=", 1) for line in journal.recv(65536).decode().splitlines()
                          if "=" in line)
        assert (fields["PRIORITY"], fields["SYSLOG_IDENTIFIER"]) == ("6", "onitufs")
        assert f"mounted {cloud.mountpoint}" in cloud.log
        while True:  # what else the daemon sent
            journal.settimeout(0.5)
            try:
                journal.recv(65536)
            except TimeoutError:
                break
        # run by systemd (-f, standard error to the journal): standard error alone, each
        # line with its priority
        stderr = tmp_path / "stderr"
        with stderr.open("w") as stream:
            stat = os.fstat(stream.fileno())
            daemon = subprocess.Popen(ns.command(COMMAND, "mount", "-f", cloud.mountpoint,
                                                 cloud.config), stderr=stream,
                                      env={**os.environ,
                                           "JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
        try:
            wait_for(lambda: ns.mount_line(cloud.mountpoint) is not None, what="the mount")
            ns.run(COMMAND, "umount", cloud.mountpoint)
            assert daemon.wait(timeout=60) == 0
        finally:
            if daemon.poll() is None:
                daemon.kill()
                daemon.wait()
        assert f"<6>INFO onitufs.daemon: mounted {cloud.mountpoint}\n" in stderr.read_text()
        journal.setblocking(False)
        with pytest.raises(BlockingIOError) as nothing:
            journal.recv(65536)
        assert nothing.value.errno == errno.EAGAIN
