"""A small git-annex special remote for the annex driver's tests: keys as files in a folder,
and, where its `fault` setting says so, one fault in the first STORE of a file's content.

Settings (GETCONFIG): `directory` (where keys go), `fault`: "" (none), "error" (sends
ERROR mid-transfer), "hang" (stops answering), "garbage" (sends a line that is no
message), "exit" (dies mid-transfer, a last word on standard error). The fault comes
once: a file in the directory remembers it. `fault_at`: "store" (the default) or "rename"
(the fault comes in the first RENAMEEXPORT of a file's content instead). `extensions`: "async" takes the ASYNC
extension and speaks in jobs; "refuse" answers EXTENSIONS, and GETCOST, with ERROR and
exits. `cost`: the answer to GETCOST (none: UNSUPPORTED-REQUEST). GETAVAILABILITY is answered
with what the file `.availability` in the directory says, while there is one. Keys go
below `.keys` in the directory; the export interface keeps its tree in the directory.
Written apart from onitufs's protocol code on purpose: the driver is tested against
another reading of the protocol.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

stdin = sys.stdin.buffer
stdout = sys.stdout.buffer
job: bytes | None = None  # the job of the request being handled (ASYNC)
jobs = False


def send(*words: bytes | str) -> None:
    text = b" ".join(word.encode() if isinstance(word, str) else word for word in words)
    stdout.write((b"J " + job + b" " + text if job is not None else text) + b"\n")
    stdout.flush()


def receive() -> list[bytes]:
    """The next request, split into its command and the rest; exits at end of input."""
    global job
    line = stdin.readline()
    if not line:
        sys.exit(0)
    line = line.rstrip(b"\n")
    if jobs:
        _, job, line = line.split(b" ", 2)
    return [*line.split(b" ", 1), b""]


def ask(*words: bytes | str) -> bytes:
    send(*words)
    command, rest = receive()[:2]
    assert command == b"VALUE", command
    return rest


EXPORTS = (b"TRANSFEREXPORT", b"CHECKPRESENTEXPORT", b"REMOVEEXPORT", b"RENAMEEXPORT")


def folder() -> Path:
    return Path(os.fsdecode(ask("GETCONFIG", "directory")))


def location(key: bytes) -> Path:
    """Where a key goes: apart from the tree the export interface keeps."""
    return folder() / ".keys" / os.fsdecode(ask("DIRHASH-LOWER", key)) / os.fsdecode(key)


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, temp)
    temp.replace(target)


def fault_now(key: bytes, size: int, at: str) -> str:
    """The fault to make in this request (a STORE or a RENAMEEXPORT: `at`), if any (once,
    for a file's content)."""
    fault = ask("GETCONFIG", "fault").decode()
    mark = Path(os.fsdecode(ask("GETCONFIG", "directory"))) / ".faulted"
    if not fault or (ask("GETCONFIG", "fault_at").decode() or "store") != at \
            or not key.startswith(b"SHA256E-") or key.endswith(b".onitufs-manifest") \
            or size < 1000 or mark.exists():
        return ""
    mark.touch()
    return fault


def misbehave(fault: str) -> None:
    """The fault, as far as it goes before the request could be answered."""
    if fault == "error":
        send("ERROR", "the disk went away")
        sys.exit(1)
    if fault == "hang":  # until onitufs kills it, or its input ends (onitufs died)
        stdin.read()
        sys.exit(1)
    if fault == "garbage":
        stdout.write(b"\xffthis is not a message\n")
        stdout.flush()
    if fault == "exit":
        sys.stderr.write("annex_remote: disk on fire\n")
        sys.stderr.flush()
        os._exit(3)


def store(key: bytes, file: bytes) -> None:
    source = Path(os.fsdecode(file))
    size = source.stat().st_size
    fault = fault_now(key, size, "store")
    send("PROGRESS", str(size // 2))
    misbehave(fault)
    copy(source, location(key))
    send("PROGRESS", str(size))
    send("TRANSFER-SUCCESS", "STORE", key)


def export(command: bytes, rest: bytes, exported: Path) -> None:
    """A request of the export interface, about the file `exported`."""
    if command == b"TRANSFEREXPORT":
        direction, key, file = rest.split(b" ", 2)
        if direction == b"STORE":
            copy(Path(os.fsdecode(file)), exported)
            send("TRANSFER-SUCCESS", "STORE", key)
        elif exported.is_file():
            copy(exported, Path(os.fsdecode(file)))
            send("TRANSFER-SUCCESS", "RETRIEVE", key)
        else:
            send("TRANSFER-FAILURE", "RETRIEVE", key, "not exported")
    elif command == b"CHECKPRESENTEXPORT":
        send("CHECKPRESENT-SUCCESS" if exported.is_file() else "CHECKPRESENT-FAILURE", rest)
    elif command == b"REMOVEEXPORT":
        exported.unlink(missing_ok=True)
        send("REMOVE-SUCCESS", rest)
    else:  # RENAMEEXPORT
        key, new = rest.split(b" ", 1)
        misbehave(fault_now(key, int(key.split(b"-s", 1)[1].split(b"-", 1)[0]), "rename"))
        if not exported.is_file():  # (another machine's removal, say)
            send("RENAMEEXPORT-FAILURE", key)
            return
        target = folder() / os.fsdecode(new)
        target.parent.mkdir(parents=True, exist_ok=True)
        exported.rename(target)
        send("RENAMEEXPORT-SUCCESS", key)


def main() -> None:
    global jobs, job
    named = b""  # by the last EXPORT
    send("VERSION", "2")
    while True:
        command, rest = receive()[:2]
        if command == b"EXTENSIONS":
            wanted = ask("GETCONFIG", "extensions")
            if wanted == b"refuse":  # as rclone does with what it does not know
                send("ERROR", "unexpected message EXTENSIONS")
                sys.exit(1)
            send("EXTENSIONS", "INFO ASYNC" if wanted == b"async" else "INFO")
            jobs = wanted == b"async"
        elif command == b"GETCOST":
            if ask("GETCONFIG", "extensions") == b"refuse":
                send("ERROR", "unexpected message GETCOST")
                sys.exit(1)
            cost = ask("GETCONFIG", "cost")
            send(*(("COST", cost) if cost else ("UNSUPPORTED-REQUEST",)))
        elif command == b"GETAVAILABILITY":
            said = folder() / ".availability"
            send(*(("AVAILABILITY", said.read_text().strip()) if said.exists()
                   else ("UNSUPPORTED-REQUEST",)))
        elif command == b"INITREMOTE":
            Path(os.fsdecode(ask("GETCONFIG", "directory"))).mkdir(exist_ok=True)
            send("INITREMOTE-SUCCESS")
        elif command == b"PREPARE":
            ok = Path(os.fsdecode(ask("GETCONFIG", "directory"))).is_dir()
            send("PREPARE-SUCCESS" if ok else "PREPARE-FAILURE no such directory")
        elif command == b"TRANSFER":
            direction, key, file = rest.split(b" ", 2)
            if direction == b"STORE":
                store(key, file)
            elif location(key).exists():
                shutil.copyfile(location(key), os.fsdecode(file))
                send("TRANSFER-SUCCESS", "RETRIEVE", key)
            else:
                send("TRANSFER-FAILURE", "RETRIEVE", key, "not here")
        elif command == b"CHECKPRESENT":
            send("CHECKPRESENT-SUCCESS" if location(rest).exists() else "CHECKPRESENT-FAILURE",
                 rest)
        elif command == b"REMOVE":
            location(rest).unlink(missing_ok=True)
            send("REMOVE-SUCCESS", rest)
        elif command == b"EXPORTSUPPORTED":
            send("EXPORTSUPPORTED-SUCCESS")
        elif command == b"EXPORT":
            named = rest  # no reply, nor a question: the next request comes at once
            continue
        elif command in EXPORTS:
            export(command, rest, folder() / os.fsdecode(named))
        elif command == b"REMOVEEXPORTDIRECTORY":
            shutil.rmtree(folder() / os.fsdecode(rest), ignore_errors=True)
            send("REMOVEEXPORTDIRECTORY-SUCCESS")
        else:
            send("UNSUPPORTED-REQUEST")
        job = None


if __name__ == "__main__":
    main()
