"""The shared git-annex protocol code: keys, their directory hashes checked against git-annex
itself, and the framing of lines."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from pathlib import Path

import pytest

from onitufs.gitannex.keys import Key, content_key, dirhash_lower, dirhash_mixed, parse_key
from onitufs.gitannex.protocol import Message, ProtocolError, line, parse

# PyPI's git-annex, installed by `make test` (the dev extra) beside this Python.
GIT_ANNEX = Path(sys.executable).parent / "git-annex"


def some_keys() -> list[str]:
    rng = random.Random(15)
    keys = [content_key(hashlib.sha256(b"x" * n).digest(), n) for n in range(40)]
    keys += [content_key(rng.randbytes(32), rng.randrange(10**12), ext)
             for ext in ("", ".txt", ".tar.gz", ".x") for _ in range(40)]
    keys += [f"SHA256E-s{size}-S1048576-C{n}--{rng.randbytes(32).hex()}.bin"
             for n, size in enumerate((5 * 2**20, 10**9, 3), start=1)]
    keys += ["WORM-s5-m1700000000--some%20name", "URL--http&c%%example.com%foo",
             "GPGHMACSHA1--" + "ab" * 20, "MD5E-s0--d41d8cd98f00b204e9800998ecf8427e",
             "SHA1-s7-m3--" + "0" * 40, "X-s1--y"]
    return keys


def test_dirhash_is_what_git_annex_computes(tmp_path: Path) -> None:
    assert GIT_ANNEX.exists(), f"{GIT_ANNEX}: missing; make test installs it (pip '.[dev]')"
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    subprocess.run([str(GIT_ANNEX), "init", "-q"], cwd=tmp_path, check=True,
                   capture_output=True)
    keys = some_keys()
    answer = subprocess.run([str(GIT_ANNEX), "examinekey", "--batch",
                             "--format=${hashdirmixed} ${hashdirlower}\n"],
                            input="\n".join(keys) + "\n", cwd=tmp_path, check=True,
                            capture_output=True, text=True).stdout.splitlines()
    assert len(answer) == len(keys)
    for key, expected in zip(keys, answer, strict=True):
        assert f"{dirhash_mixed(key)} {dirhash_lower(key)}" == expected, key


def test_known_directory_hashes() -> None:
    # from the protocol notes, checked against git-annex there too
    txt = "SHA256E-s6--5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03.txt"
    assert dirhash_mixed(txt) == "mK/4w/"
    big = ("SHA256E-s1048576--b0a0314944eb1bf75fd043133fa3f6ad95bfe86db7868f01040fb0a6a97ea393"
           ".this-is-a-test-key")
    assert dirhash_lower(big) == "fe5/645/"
    chunk = big.replace("-s1048576--", "-s1048576-S1000-C2--")
    assert dirhash_lower(chunk) == dirhash_lower(big)  # a chunk lands beside its key


def test_keys_parse_and_print() -> None:
    key = parse_key("SHA256E-s10-m5-S4-C2--abc--def.txt")
    assert key == Key("SHA256E", "abc--def.txt", 10, 5, 4, 2)
    assert str(key) == "SHA256E-s10-m5-S4-C2--abc--def.txt"
    assert str(key.whole()) == "SHA256E-s10-m5--abc--def.txt"
    assert content_key(bytes(32), 3) == "SHA256E-s3--" + "00" * 32
    for bad in ("", "SHA256", "SHA256--", "--x", "SHA256-q1--x", "SHA256-s--x",
                "SHA256-s1-s2--x", "SHA1-m3-s7--x", "SHA256--a b", "SHA256-s\u0663--x"):
        with pytest.raises(ValueError):
            parse_key(bad)


def test_framing_keeps_the_last_parameter_whole() -> None:
    name = b"caf\xe9  two  spaces\tand a tab"
    sent = line("TRANSFER", "STORE", "SHA256E-s1--00", name)
    assert sent == b"TRANSFER STORE SHA256E-s1--00 " + name + b"\n"
    assert parse(sent) == Message("TRANSFER", (b"STORE", b"SHA256E-s1--00", name))
    assert parse(b"TRANSFER-FAILURE STORE KEY\n").params == (b"STORE", b"KEY", b"")
    assert parse(b"EXTENSIONS\n").params == (b"",)
    assert parse(b"VALUE \n").params == (b"",)
    assert parse(b"J 3 PROGRESS 10\n") == Message("J", (b"3", b"PROGRESS 10"))
    assert parse(b"SETCREDS s user pass word").params == (b"s", b"user", b"pass word")
    assert parse(b"PROGRESS 42\n").number(0) == 42
    assert parse(b"ERROR \xff broke\n").text(0) == "\udcff broke"


def test_framing_refuses_what_no_line_can_carry() -> None:
    for bad in (b"PREPARE-SUCCESS now\n", b"NONSENSE 1\n", b"\xff\n", b"", b"a\nb\n",
                b"prepare-success\n"):
        with pytest.raises(ProtocolError):
            parse(bad)
    with pytest.raises(ProtocolError):
        parse(b"PROGRESS many").number(0)
    with pytest.raises(ValueError):
        line("TRANSFER", "STORE", "a key", "file")
    with pytest.raises(ValueError):
        line("EXPORT", b"two\nlines")
    with pytest.raises(ValueError):
        line("PREPARE", "extra")
