"""The man pages match the code: every config key the code reads is documented in
onitufs.toml(5), and spelled out in its example of every key."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from onitufs.config import _TOP_LEVEL, ConfigError, parse
from onitufs.plug import CORE_KEYS, load_driver

MAN = Path(__file__).parent.parent / "man"


def known_keys(table: str) -> list[str]:
    """The keys the config reads in `table`, as its refusal of an unknown key lists them."""
    with pytest.raises(ConfigError) as refused:
        parse({table: {"no_such_key": 1}}, Path("/x.toml"))
    listed = re.search(r"\(known: ([^)]*)\)", str(refused.value))
    assert listed is not None, refused.value
    return listed.group(1).split(", ")


def config_keys() -> dict[str, list[str]]:
    keys = {"": sorted(_TOP_LEVEL - {"cache", "sync", "remotes"}),
            "cache": known_keys("cache"), "sync": known_keys("sync")}
    for driver in ("local", "ssh", "annex", "dropbox"):
        keys[f"remotes ({driver})"] = [*CORE_KEYS, *load_driver(driver, "test").OPTIONS]
    return keys


def test_every_config_key_is_documented_and_in_the_full_example() -> None:
    page = (MAN / "onitufs.toml.5").read_text()
    documented = set(re.findall(r"^\.BR? (\w+)", page, re.MULTILINE))
    example = page[page.index("every key spelled"):]
    example = example[example.index(".EX"):example.index(".EE")]
    spelled = set(re.findall(r"^(\w+) =", example, re.MULTILINE))
    for table, keys in config_keys().items():
        for key in keys:
            assert key in documented, f"{table}.{key} is not described in onitufs.toml(5)"
            assert key in spelled, f"{table}.{key} is missing from the example of every key"


def test_the_man_pages_render_without_warnings() -> None:
    import subprocess

    for page in sorted(MAN.iterdir()):
        result = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                                text=True, env={"MANWIDTH": "80", "PATH": "/usr/bin:/bin"})
        assert result.returncode == 0 and not result.stderr, (page.name, result.stderr)
