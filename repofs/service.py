"""Telling systemd how the service is doing (sd_notify(3)) when it runs repofs
with Type=notify (contrib/repofs@.service): READY=1 once the file system is
mounted, so that units ordered after it (libvirt's guests) find their images;
STOPPING=1 when it unmounts."""

import logging
import os
import socket

log = logging.getLogger(__name__)


def notify(*assignments: str) -> None:
    """Sends "KEY=VALUE" lines to $NOTIFY_SOCKET; nothing without one."""
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):  # an abstract socket
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto("\n".join(assignments).encode(), address)
    except OSError as exc:
        log.warning("cannot tell systemd %s: %s", ", ".join(assignments), exc)
