"""One remote's Dropbox client, and what its failures mean to onitufs.

The SDK's own retries are off (it would retry a 429 for ever, and sleep
without regard for the mount ending): `call` retries rate limits (429,
waiting what retry_after says) and server errors (5xx, with backoff) for at
most RETRY_FOR seconds, then gives up with RemoteUnavailable, which the core
retries with its own backoff. An expired access token is refreshed by the
SDK from the refresh token (once per call); a token Dropbox refuses
(revoked, invalid) is TokenRefused, whose line tells the user to run
`onitufs auth`; no network is RemoteUnavailable. Errors of the API itself
(a path not found, a conflict) reach the caller as the SDK's ApiError.
Nothing here ever puts a token in a message.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import dropbox
import requests
from dropbox.exceptions import (
    ApiError,
    AuthError,
    BadInputError,
    HttpError,
    InternalServerError,
    RateLimitError,
)

from onitufs.plug import DriverError, RemoteUnavailable

from .settings import Settings

RETRY_FOR = 20.0  # seconds of 429s and 5xx within one call before it gives up
FIRST_BACKOFF = 0.25
MAX_WAIT = 10.0  # the longest single wait, whatever retry_after says
TIMEOUT = 60.0  # seconds without a packet from Dropbox
BLOCK = 4 * 1024 * 1024  # Dropbox's content_hash block, and the unit of session appends
T = TypeVar("T")


class TokenRefused(RemoteUnavailable):
    """Dropbox refused the refresh token (revoked, or never valid)."""


def token_refused(settings: Settings) -> TokenRefused:
    return TokenRefused(f"Dropbox refused the token in {settings.token_file} (revoked or "
                        f"invalid): run `{settings.auth_hint}`")


def make_client(settings: Settings, token: str) -> dropbox.Dropbox:
    return dropbox.Dropbox(oauth2_refresh_token=token, app_key=settings.app_key,
                           max_retries_on_error=0, max_retries_on_rate_limit=0,
                           timeout=TIMEOUT, user_agent="onitufs")


class Api:
    """The client with onitufs's retry rules; thread-safe (the SDK's client is)."""

    def __init__(self, settings: Settings, client: dropbox.Dropbox,
                 stopping: threading.Event) -> None:
        self.settings = settings
        self.client = client
        self.stopping = stopping
        # Whether Dropbox refused the token in use, and what to do then (its Lookout).
        self.refused = False
        self.on_refused: Callable[[], None] = lambda: None

    def call(self, function: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        waited, backoff = 0.0, FIRST_BACKOFF
        while True:
            try:
                return function(*args, **kwargs)
            except ApiError:
                raise
            except AuthError as error:
                if error.error.is_missing_scope():
                    raise DriverError(f"Dropbox: the app lacks a permission "
                                      f"({error.error.get_missing_scope().required_scope})") \
                        from None
                self.refused = True
                self.on_refused()
                raise token_refused(self.settings) from None
            except RateLimitError as error:
                wait = float(error.backoff) if error.backoff is not None else backoff
                reason = f"Dropbox: too many requests (429), asked to wait {wait:g} s"
            except InternalServerError as error:
                wait, reason = backoff, f"Dropbox: server error {error.status_code}"
            except BadInputError as error:
                raise DriverError(f"Dropbox refused the request: {str(error.message)[:200]}") \
                    from None
            except HttpError as error:
                raise DriverError(f"Dropbox: HTTP {error.status_code}") from None
            except requests.RequestException as error:
                raise RemoteUnavailable(f"cannot reach Dropbox: {type(error).__name__}") \
                    from None
            wait = min(wait, MAX_WAIT)
            if waited + wait > RETRY_FOR:
                raise RemoteUnavailable(f"{reason}; still failing after {waited:.0f} s")
            if self.stopping.wait(wait):
                raise RemoteUnavailable(f"{reason}; the mount is ending")
            waited += wait
            backoff = min(backoff * 2, MAX_WAIT)


def block_hashes(data: bytes | bytearray | memoryview) -> list[str]:
    """The SHA-256 of each 4 MiB block, as Dropbox's content_hash is made of them."""
    view = memoryview(data)
    return [hashlib.sha256(view[at:at + BLOCK]).hexdigest() for at in range(0, len(view), BLOCK)]


def content_hash(hashes: list[str]) -> str:
    """Dropbox's content_hash: the SHA-256 of the blocks' SHA-256s, end to end."""
    return hashlib.sha256(b"".join(bytes.fromhex(h) for h in hashes)).hexdigest()
