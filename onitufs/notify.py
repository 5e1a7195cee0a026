"""Telling systemd how a mount run by a Type=notify unit is doing (sd_notify(3)): ready
once mounted, stopping once its final flush starts. Nothing when $NOTIFY_SOCKET is unset.

The protocol is one datagram to that socket, too small to need a library.
"""

from __future__ import annotations

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*assignments: str) -> None:
    """Send "KEY=VALUE" lines such as READY=1 to the service manager, if there is one."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
        try:
            sock.sendto("\n".join(assignments).encode(), address)
        except OSError as error:
            log.warning("cannot tell the service manager %s (NOTIFY_SOCKET=%s): %s",
                        assignments[0], address.lstrip("\0"), error.strerror)
