"""The line framing of git-annex's external special remote protocol, on bytes.

One message per line: a word, then a fixed number of parameters, each
separated by one space. Every parameter but the last is one word; the last
is the rest of the line and may hold spaces, or any byte but a newline (a
file name that is not UTF-8, say). There is no quoting. A message with fewer
words than its parameters gets empty ones, as git-annex reads it; one with
words where none belong is out of protocol. ARITY is how many parameters
each message has, for both directions, so that the host side (the annex
driver) and the program side read and write the same lines.
"""

from __future__ import annotations

from dataclasses import dataclass

# What git-annex takes for a separator (Haskell's isSpace, on the ASCII it sends).
WHITESPACE = b" \t\n\r\x0b\x0c"

ARITY: dict[str, int] = {
    # requests: git-annex (the host) to the program
    "EXTENSIONS": 1, "PREPARE": 0, "INITREMOTE": 0, "GETCOST": 0, "GETAVAILABILITY": 0,
    "GETORDERED": 0, "CLAIMURL": 1, "CHECKURL": 1, "TRANSFER": 3, "CHECKPRESENT": 1,
    "REMOVE": 1, "WHEREIS": 1, "LISTCONFIGS": 0, "GETINFO": 0, "EXPORTSUPPORTED": 0,
    "EXPORT": 1, "TRANSFEREXPORT": 3, "CHECKPRESENTEXPORT": 1, "REMOVEEXPORT": 1,
    "REMOVEEXPORTDIRECTORY": 1, "RENAMEEXPORT": 2, "IMPORTSUPPORTED": 0,
    "LISTIMPORTABLECONTENTS": 0, "IMPORT": 1, "RETRIEVEIMPORT": 1, "CHECKPRESENTIMPORT": 1,
    # replies: the program to the host (EXTENSIONS too, above)
    "PREPARE-SUCCESS": 0, "PREPARE-FAILURE": 1, "TRANSFER-SUCCESS": 2,
    "TRANSFER-FAILURE": 3, "TRANSFER-RETRIEVE-URL": 2, "CHECKPRESENT-SUCCESS": 1,
    "CHECKPRESENT-FAILURE": 1, "CHECKPRESENT-UNKNOWN": 2, "CHECKPRESENT-URL": 2,
    "REMOVE-SUCCESS": 1, "REMOVE-FAILURE": 2, "COST": 1, "AVAILABILITY": 1, "ORDERED": 0,
    "UNORDERED": 0, "INITREMOTE-SUCCESS": 0, "INITREMOTE-FAILURE": 1, "CLAIMURL-SUCCESS": 0,
    "CLAIMURL-FAILURE": 0, "CHECKURL-CONTENTS": 2, "CHECKURL-MULTI": 1, "CHECKURL-FAILURE": 1,
    "WHEREIS-SUCCESS": 1, "WHEREIS-FAILURE": 0, "CONFIG": 2, "CONFIGEND": 0, "INFOFIELD": 1,
    "INFOVALUE": 1, "INFOEND": 0, "EXPORTSUPPORTED-SUCCESS": 0,
    "EXPORTSUPPORTED-FAILURE": 0, "REMOVEEXPORTDIRECTORY-SUCCESS": 0,
    "REMOVEEXPORTDIRECTORY-FAILURE": 0, "RENAMEEXPORT-SUCCESS": 1, "RENAMEEXPORT-FAILURE": 1,
    "IMPORTSUPPORTED-SUCCESS": 0, "IMPORTSUPPORTED-FAILURE": 0, "IMPORTABLECONTENT": 2,
    "IMPORTABLECONTENTIDENTIFIER": 1, "IMPORTABLECONTENTEND": 0, "RETRIEVEIMPORT-SUCCESS": 0,
    "RETRIEVEIMPORT-FAILURE": 1, "RETRIEVEIMPORT-URL": 1, "DELEGATE": 1,
    "UNSUPPORTED-REQUEST": 0,
    # what the program may send while it handles a request
    "VERSION": 1, "PROGRESS": 1, "DIRHASH": 1, "DIRHASH-LOWER": 1, "SETCONFIG": 2,
    "GETCONFIG": 1, "SETCREDS": 3, "GETCREDS": 1, "GETUUID": 0, "GETGITDIR": 0,
    "GETGITREMOTENAME": 0, "SETWANTED": 1, "GETWANTED": 0, "SETSTATE": 2, "GETSTATE": 1,
    "SETURLPRESENT": 2, "SETURLMISSING": 2, "SETURIPRESENT": 2, "SETURIMISSING": 2,
    "GETURLS": 2, "DEBUG": 1, "INFO": 1,
    # the host's answers to those
    "VALUE": 1, "CREDS": 2,
    # either side, at any time; J wraps a message of one job of the ASYNC extension
    "ERROR": 1, "J": 2,
}


class ProtocolError(Exception):
    """A line that is not a message of the protocol."""


@dataclass(frozen=True)
class Message:
    command: str
    params: tuple[bytes, ...]

    def text(self, index: int) -> str:
        """Parameter `index` as a str (bytes that are not UTF-8 surrogate-escaped)."""
        return self.params[index].decode("utf-8", "surrogateescape")

    def number(self, index: int) -> int:
        value = self.params[index]
        if not value.isdigit():
            raise ProtocolError(f"{self.command}: {value!r} is not a number")
        return int(value)


def split_word(data: bytes) -> tuple[bytes, bytes]:
    """The first word and the rest, split at the first whitespace (which goes)."""
    for at, byte in enumerate(data):
        if byte in WHITESPACE:
            return data[:at], data[at + 1:]
    return data, b""


def parse(line: bytes) -> Message:
    """The message of one line (its newline, if any, taken off)."""
    if line.endswith(b"\n"):
        line = line[:-1]
    if b"\n" in line:
        raise ProtocolError(f"more than one line: {line!r}")
    word, rest = split_word(line)
    try:
        command = word.decode("ascii")
    except UnicodeDecodeError:
        raise ProtocolError(f"not a message: {line[:200]!r}") from None
    arity = ARITY.get(command)
    if arity is None:
        raise ProtocolError(f"not a message: {line[:200]!r}")
    if arity == 0:
        if rest:
            raise ProtocolError(f"{command} takes no parameters: {line[:200]!r}")
        return Message(command, ())
    params = []
    for _ in range(arity - 1):
        value, rest = split_word(rest)
        params.append(value)
    params.append(rest)
    return Message(command, tuple(params))


def line(command: str, *params: bytes | str | int) -> bytes:
    """The line of a message, newline included. Every parameter but the last must be one
    word; no parameter may hold a newline (ValueError: no line could carry it)."""
    if ARITY.get(command) != len(params):
        raise ValueError(f"{command} takes {ARITY.get(command)} parameters, not {len(params)}")
    encoded = [param.encode("utf-8", "surrogateescape") if isinstance(param, str)
               else str(param).encode() if isinstance(param, int) else param
               for param in params]
    for at, param in enumerate(encoded):
        if b"\n" in param:
            raise ValueError(f"{command}: a parameter holds a newline: {param!r}")
        if at < len(encoded) - 1 and any(byte in WHITESPACE for byte in param):
            raise ValueError(f"{command}: parameter {at + 1} holds whitespace: {param!r}")
    return b" ".join([command.encode(), *encoded]) + b"\n"
