"""What a remote's program asked onitufs to keep, in the driver's folder of the cache.

git-annex keeps a special remote's settings in its branch; here they live
in the remote's folder of the cache (Plug.folder) and survive remounts: the
configuration INITREMOTE ran with and what the program set during it
(SETCONFIG), the state it keeps per key (SETSTATE), the remote's UUID, and
in a file of its own, readable by its owner alone, the credentials it gave
(SETCREDS), which no log ever shows.
"""

from __future__ import annotations

import json
import threading
import uuid
from pathlib import Path
from typing import Any

from onitufs.durable import write_atomically

# The UUID of a remote is made from its configuration: two machines given the same
# table talk to the same place, and their programs see the same UUID.
NAMESPACE = uuid.UUID("6f1d3b2e-8a41-4c5e-9d0b-7e2f4a6c1b35")


def read_json(path: Path) -> dict[str, Any]:
    try:
        value = json.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    return value if isinstance(value, dict) else {}


class ProgramState:
    """The settings, state and credentials of one remote's program; thread-safe."""

    def __init__(self, folder: Path, config: dict[str, str]) -> None:
        self._path = folder / "program.json"
        self._creds_path = folder / "creds.json"
        self.config = config
        self._lock = threading.Lock()
        saved = read_json(self._path)
        self._initremote: dict[str, Any] | None = saved.get("initremote")
        self._state: dict[str, str] = saved.get("state", {})
        self.uuid: str = saved.get("uuid") or str(uuid.uuid5(NAMESPACE, json.dumps(
            config, sort_keys=True)))
        self._creds: dict[str, list[str]] = read_json(self._creds_path)
        self._running: dict[str, str] = {}  # SETCONFIG after INITREMOTE: this run only

    def initialized(self) -> bool:
        """Whether INITREMOTE ran, with the configuration the remote has now."""
        with self._lock:
            return self._initremote is not None and self._initremote.get("config") == self.config

    def initremote_done(self, settings: dict[str, str]) -> None:
        """INITREMOTE succeeded, with these SETCONFIG: keep them."""
        with self._lock:
            self._initremote = {"config": dict(self.config), "set": settings}
            self._running.clear()
            self._save()

    def get_config(self, name: str) -> str:
        """What GETCONFIG answers: set by the program, or in the remote's `config` table."""
        with self._lock:
            if name in self._running:
                return self._running[name]
            settings = (self._initremote or {}).get("set", {})
            return str(settings.get(name, self.config.get(name, "")))

    def set_config(self, name: str, value: str) -> None:
        with self._lock:
            self._running[name] = value

    def set_creds(self, setting: str, user: str, password: str) -> None:
        with self._lock:
            self._creds[setting] = [user, password]
            write_atomically(self._creds_path, json.dumps(self._creds).encode())

    def get_creds(self, setting: str) -> tuple[str, str]:
        with self._lock:
            user, password = self._creds.get(setting, ["", ""])
            return user, password

    def get_state(self, key: str) -> str:
        with self._lock:
            return self._state.get(key, "")

    def set_state(self, key: str, value: str) -> None:
        with self._lock:
            if value:
                self._state[key] = value
            else:
                self._state.pop(key, None)
            self._save()

    def _save(self) -> None:
        write_atomically(self._path, json.dumps({"initremote": self._initremote,
                                                 "state": self._state,
                                                 "uuid": self.uuid}).encode())
