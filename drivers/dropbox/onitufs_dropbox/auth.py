"""The refresh token: kept in a file of its own that only its owner can read, and made
by `onitufs auth` through Dropbox's OAuth 2 PKCE flow (no app secret).

The file holds {"refresh_token": ...} as JSON, mode 0600. One that others can
read is refused, as ssh refuses a private key others can read; no message,
log or status line ever holds the token. Once Dropbox refused the token in use,
the file is looked at every second until `onitufs auth` put a new one there.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

from dropbox.oauth import DropboxOAuth2FlowNoRedirect

from onitufs.config import ConfigError, Options
from onitufs.durable import write_atomically

from .settings import Settings, read


def load_token(settings: Settings) -> str:
    """The refresh token, or ConfigError with the one line that says what to do."""
    path = settings.token_file
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise ConfigError(f"{settings.where}.token_file: {path} does not exist: run "
                          f"`{settings.auth_hint}` to authorize onitufs") from None
    except OSError as error:
        raise ConfigError(f"{settings.where}.token_file: cannot read {path}: "
                          f"{error.strerror}") from None
    try:
        st = os.fstat(fd)
        if st.st_mode & 0o077:
            raise ConfigError(f"{settings.where}.token_file: {path} can be read by others "
                              f"(mode {stat.S_IMODE(st.st_mode):04o}): chmod 600 it, or run "
                              f"`{settings.auth_hint}` again")
        with os.fdopen(os.dup(fd), "rb") as file:
            raw = file.read()
    finally:
        os.close(fd)
    try:
        token = json.loads(raw)["refresh_token"]
    except (ValueError, KeyError, TypeError):
        token = None
    if not isinstance(token, str) or not token:
        raise ConfigError(f"{settings.where}.token_file: {path} holds no refresh token: run "
                          f"`{settings.auth_hint}`")
    return token


def save_token(path: Path, token: str) -> None:
    """Write the token file atomically, mode 0600 from its creation on."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomically(path, json.dumps({"refresh_token": token}).encode(), 0o600)


def auth(options: Options, ask: Callable[[str], str]) -> str:
    """The hook of `onitufs auth`: show the authorization URL, take the code the user got
    by allowing onitufs, and store the offline refresh token it buys."""
    settings = read(options)
    flow = DropboxOAuth2FlowNoRedirect(settings.app_key, use_pkce=True,
                                       token_access_type="offline")
    url = flow.start()
    code = ask(f"1. Go to: {url}\n2. Click \"Allow\" (you may have to log in first).\n"
               "3. Copy the authorization code.\nEnter the authorization code here: ").strip()
    if not code:
        raise ConfigError(f"{settings.where}: no authorization code given; nothing written")
    try:
        result = flow.finish(code)
    except Exception as error:  # the SDK raises requests' errors and its own
        raise ConfigError(f"{settings.where}: Dropbox did not accept the code "
                          f"({type(error).__name__}); nothing written") from None
    if not result.refresh_token:
        raise ConfigError(f"{settings.where}: Dropbox gave no refresh token; nothing written")
    save_token(settings.token_file, result.refresh_token)
    return f"{settings.token_file}: refresh token saved (mode 0600)"


TOKEN_LOOK = 1.0  # seconds between looks at the token file after a refusal
