"""`onitufs trust CONFIG REMOTE` against a real sshd: shown, asked, added only on yes, never replaced."""

from __future__ import annotations

import re
import shlex
import subprocess
from pathlib import Path

import pytest

from .conftest import ONITUFS, run
from .sshd import HOST, MakeSshCloud, Sshd, SshRemote, free_port, keygen

pytest_plugins = ["tests.sshd"]

QUESTION = "Are you sure you want to continue connecting (yes/no)? "


def trust(config: Path, remote: str, answer: str) -> subprocess.CompletedProcess[str]:
    """onitufs trust, with `answer` as its whole standard input (not a terminal)."""
    return subprocess.run([*ONITUFS, "trust", str(config), remote], input=answer,
                          capture_output=True, text=True, timeout=60)


def fingerprint(public_key: Path) -> str:
    """The SHA-256 fingerprint as ssh-keygen -l gives it."""
    out = subprocess.run(["ssh-keygen", "-l", "-E", "sha256", "-f", str(public_key)],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[1]


def ssh_finds(known_hosts: Path, host: str) -> bool:
    """Whether OpenSSH itself finds a key for host in the file (hashed names included)."""
    found = subprocess.run(["ssh-keygen", "-F", host, "-f", str(known_hosts)],
                           capture_output=True, text=True)
    return found.returncode == 0


def ssh_config(sshd: Sshd, root: Path, port: int | None = None) -> Path:
    """A config with one SSH remote, s, on the server (or on another port), and a local one."""
    (root / "folder").mkdir(exist_ok=True)
    config = root / "trust.toml"
    table = sshd.remote("s", root / "folder")
    if port is not None:
        table = [f"port = {port}" if line.startswith("port =") else line for line in table]
    config.write_text("\n".join([*table, "[remotes.l]", 'driver = "local"',
                                 f'path = "{root / "folder"}"', ""]))
    return config


def test_the_key_said_yes_to_is_added_as_ssh_writes_it_and_the_mount_works(
        make_ssh_cloud: MakeSshCloud, sshd: Sshd, tmp_path: Path) -> None:
    sshd.known_hosts = tmp_path / "home" / ".ssh" / "known_hosts"  # neither exists yet
    cloud = make_ssh_cloud({}, {"s": SshRemote(sshd)})
    # the mount's refusal names the command that accepts the key
    refused = run("mount", cloud.mountpoint, cloud.config, check=False)
    assert refused.returncode == 1
    command = re.search(r"trust it with: (onitufs trust .*)$", refused.stderr.strip())
    assert command, refused.stderr
    assert shlex.split(command.group(1)) == ["onitufs", "trust", str(cloud.config), "s"]
    result = trust(cloud.config, "s", "yes\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr.splitlines() == [
        f"The authenticity of host '{sshd.host_name}' can't be established.",
        f"ED25519 key fingerprint is {fingerprint(Path(f'{sshd.host_key}.pub'))}.",
        f"{QUESTION}yes"]
    assert result.stdout == (f"Permanently added '{sshd.host_name}' (ED25519) to "
                             f"{sshd.known_hosts}\n")
    kind, blob = Sshd.public(sshd.host_key).split()[:2]
    assert sshd.known_hosts.read_text() == f"{sshd.host_name} {kind} {blob}\n"
    assert sshd.known_hosts.stat().st_mode & 0o777 == 0o600
    assert sshd.known_hosts.parent.stat().st_mode & 0o777 == 0o700
    assert ssh_finds(sshd.known_hosts, sshd.host_name)
    cloud.mount()
    (cloud.mountpoint / "hello.txt").write_text("through a trusted server")
    cloud.wait_synced()
    assert (cloud.remotes["s"] / "hello.txt").read_text() == "through a trusted server"
    cloud.umount()


@pytest.mark.parametrize("answer", ["no\n", "", "y\n", "yes please\n"])
def test_anything_but_yes_writes_nothing(sshd: Sshd, tmp_path: Path, answer: str) -> None:
    sshd.known_hosts.unlink()
    result = trust(ssh_config(sshd, tmp_path), "s", answer)
    assert result.returncode == 1
    assert QUESTION in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last == (f"onitufs: {tmp_path / 'trust.toml'}: remotes.s: the host key of "
                    f"{sshd.host_name} was not accepted; nothing was added to {sshd.known_hosts}")
    assert result.stdout == ""
    assert not sshd.known_hosts.exists()


def test_a_key_already_known_is_left_as_it_is(sshd: Sshd, tmp_path: Path) -> None:
    before = sshd.known_hosts.read_text()
    result = trust(ssh_config(sshd, tmp_path), "s", "yes\n")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""  # nothing asked
    assert result.stdout == (f"'{sshd.host_name}' is already known: its ED25519 key "
                             f"{fingerprint(Path(f'{sshd.host_key}.pub'))} is on line 1 of "
                             f"{sshd.known_hosts}\n")
    assert sshd.known_hosts.read_text() == before


def test_a_file_of_hashed_names_gets_a_hashed_name(sshd: Sshd, tmp_path: Path) -> None:
    """As ssh does where HashKnownHosts is on, and found again through the hash."""
    other = tmp_path / "other"
    keygen(other)
    kind, blob = Sshd.public(other).split()[:2]
    sshd.known_hosts.write_text(f"elsewhere.example.org {kind} {blob}")  # no final newline
    subprocess.run(["ssh-keygen", "-H", "-f", str(sshd.known_hosts)], check=True,
                   capture_output=True)
    config = ssh_config(sshd, tmp_path)
    assert trust(config, "s", "yes\n").returncode == 0
    lines = sshd.known_hosts.read_text().splitlines()
    assert len(lines) == 2 and all(line.startswith("|1|") for line in lines), lines
    assert sshd.host_name not in sshd.known_hosts.read_text()
    assert ssh_finds(sshd.known_hosts, sshd.host_name)
    again = trust(config, "s", "")
    assert again.returncode == 0 and "is already known" in again.stdout
    assert len(sshd.known_hosts.read_text().splitlines()) == 2


def test_a_key_of_another_type_only_is_asked_about_as_ssh_does(
        sshd: Sshd, tmp_path: Path) -> None:
    other = tmp_path / "ecdsa"
    subprocess.run(["ssh-keygen", "-q", "-t", "ecdsa", "-N", "", "-f", str(other)], check=True)
    sshd.known_hosts.write_text(f"{sshd.host_name} {' '.join(Sshd.public(other).split()[:2])}\n")
    config = ssh_config(sshd, tmp_path)
    result = trust(config, "s", "yes\n")
    assert result.returncode == 0, result.stderr
    assert "but keys of different type are already known for this host." in result.stderr
    assert len(sshd.known_hosts.read_text().splitlines()) == 2
    assert "is already known" in trust(config, "s", "").stdout


def test_a_changed_key_is_refused_with_ssh_s_warning_and_the_file_left_alone(
        sshd: Sshd, tmp_path: Path) -> None:
    old = fingerprint(Path(f"{sshd.host_key}.pub"))
    sshd.stop()
    sshd.new_host_key()  # known_hosts keeps the old one
    sshd.start()
    new = fingerprint(Path(f"{sshd.host_key}.pub"))
    before = sshd.known_hosts.read_bytes()
    config = ssh_config(sshd, tmp_path)
    result = trust(config, "s", "yes\n")
    assert result.returncode == 1
    assert QUESTION not in result.stderr  # never even asked
    lines = result.stderr.splitlines()
    assert lines[0] == (f"onitufs: {config}: remotes.s: the host key of {sshd.host_name} has "
                        "changed; not trusting it")
    assert "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @" in lines
    assert new + "." in lines
    assert f"Offending ED25519 key in {sshd.known_hosts}:1 ({old})" in lines
    assert f"  ssh-keygen -f '{sshd.known_hosts}' -R '{sshd.host_name}'" in lines
    assert result.stdout == ""
    assert sshd.known_hosts.read_bytes() == before


def test_an_unreachable_server_is_one_line(sshd: Sshd, tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    config = ssh_config(sshd, tmp_path, port=port)
    result = trust(config, "s", "yes\n")
    assert result.returncode == 1
    assert result.stderr == (f"onitufs: {config}: remotes.s: cannot connect to {HOST} port "
                             f"{port}: Connection refused\n")
    assert result.stdout == ""


def test_a_remote_without_a_host_key_or_a_name_not_in_the_config(
        sshd: Sshd, tmp_path: Path) -> None:
    config = ssh_config(sshd, tmp_path)
    local = trust(config, "l", "yes\n")
    assert (local.returncode, local.stdout) == (1, "")
    assert local.stderr == "onitufs: remote l (driver local) has no host key to trust\n"
    missing = trust(config, "nas", "yes\n")
    assert (missing.returncode, missing.stdout) == (1, "")
    assert missing.stderr == f"onitufs: {config}: no remote named 'nas' (remotes: s, l)\n"
