"""Trusting a server's host key as ssh does at a first connection: shown, asked, added.

`onitufs trust CONFIG REMOTE` calls trust(options, confirm). It connects only
as far as the key exchange (no login), so the key is the one the server
proved it holds. A key known_hosts already has is left as it is; a
different key of the same type is refused with ssh's warning and never
replaced; an unknown key is added to the remote's known_hosts only when
confirm() says the user answered yes.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import paramiko

from onitufs.config import ConfigError, Options

from .connect import ConnectError, KnownKey, known_keys, open_transport, trust_command
from .settings import Settings, read

BANNER = "@" * 59


def trust(options: Options, confirm: Callable[[str], bool]) -> str:
    """Show the server's key and add it to known_hosts if confirm() is given a yes.

    Returns the line that says what was done; raises ConfigError when nothing was."""
    settings = read(options)
    try:
        known = known_keys(settings)
        transport = open_transport(settings, known)
    except ConnectError as error:
        message = str(error)
        raise ConfigError(message if message.startswith(settings.where)
                          else f"{settings.where}: {message}") from None
    try:
        offered = transport.get_remote_server_key()
    finally:
        transport.close()
    host, kind = settings.host_name, offered.algorithm_name
    same = [entry for entry in known if entry.key == offered]
    if same:
        return (f"'{host}' is already known: its {kind} key {offered.fingerprint} is on line "
                f"{same[0].line} of {settings.known_hosts}")
    changed = [entry for entry in known if entry.key.get_name() == offered.get_name()]
    if changed:
        raise ConfigError(changed_warning(settings, offered, changed))
    question = "\n".join([
        f"The authenticity of host '{host}' can't be established"
        + ("\nbut keys of different type are already known for this host." if known else "."),
        f"{kind} key fingerprint is {offered.fingerprint}.",
        "Are you sure you want to continue connecting (yes/no)? "])
    if not confirm(question):
        raise ConfigError(f"{settings.where}: the host key of {host} was not accepted; "
                          f"nothing was added to {settings.known_hosts}")
    try:
        add(settings.known_hosts, host, offered)
    except OSError as error:
        raise ConfigError(f"{settings.where}.known_hosts: cannot write {settings.known_hosts}: "
                          f"{error.strerror or error}") from None
    return f"Permanently added '{host}' ({kind}) to {settings.known_hosts}"


def changed_warning(settings: Settings, offered: paramiko.PKey, changed: list[KnownKey]) -> str:
    """ssh's warning for a host key that is not the one known_hosts has, naming its lines."""
    host, known_hosts, kind = settings.host_name, settings.known_hosts, offered.algorithm_name
    return "\n".join([
        f"{settings.where}: the host key of {host} has changed; not trusting it",
        BANNER,
        "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
        BANNER,
        "IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!",
        "Someone could be eavesdropping on you right now (man-in-the-middle attack)!",
        "It is also possible that a host key has just been changed.",
        f"The fingerprint for the {kind} key sent by the remote host is",
        f"{offered.fingerprint}.",
        *(f"Offending {kind} key in {known_hosts}:{entry.line} ({entry.key.fingerprint})"
          for entry in changed),
        "Nothing was written. If the server's key was really replaced (ask its administrator),",
        "remove the offending line, for example with:",
        f"  ssh-keygen -f '{known_hosts}' -R '{host}'",
        f"and run {trust_command(settings)} again.",
    ])


def add(known_hosts: Path, host: str, key: paramiko.PKey) -> None:
    """Append the key to known_hosts as ssh writes it, making the file (0600) and its folder
    (0700) if missing. The host name is hashed when every name in the file already is, as
    where ssh's HashKnownHosts is on, so as not to leave the one name in the clear."""
    known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(known_hosts, os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
    with open(fd, "r+", encoding="utf-8", errors="replace", newline="") as file:
        text = file.read()
        name = paramiko.HostKeys.hash_host(host) if hashed(text) else host
        start = "\n" if text and not text.endswith("\n") else ""
        file.write(f"{start}{name} {key.get_name()} {key.get_base64()}\n")
        file.flush()
        os.fsync(file.fileno())


def hashed(text: str) -> bool:
    """Whether a known_hosts file has host names and all of them are hashed."""
    names = [name for line in text.splitlines()
             if line.strip() and not line.lstrip().startswith(("#", "@"))
             for name in line.split()[0].split(",")]
    return bool(names) and all(name.startswith("|1|") for name in names)
