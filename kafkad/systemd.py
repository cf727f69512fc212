"""The systemd service-manager protocol: sd_notify messages and the watchdog.

`Notifier` is what the daemon talks to. It sends through
`systemd.daemon.notify` (systemd-python) when that imports, and otherwise
writes the same datagram itself, so the daemon behaves identically on a
machine without systemd-python. Outside systemd (no ``NOTIFY_SOCKET`` in the
environment) every method is a cheap no-op.

The watchdog interval is read from ``WATCHDOG_USEC`` and honoured only when
``WATCHDOG_PID`` is unset or names this process (systemd sets it so a child
does not answer for its parent); the daemon pings at half that interval.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from typing import Callable, Mapping

try:  # systemd-python is a daemon dependency, but kafkad must run without it.
    from systemd import daemon as _sd_daemon
except ImportError:  # pragma: no cover - depends on the installation
    _sd_daemon = None

__all__ = ["Notifier", "monotonic_usec", "watchdog_interval"]

log = logging.getLogger("kafkad.systemd")


def monotonic_usec() -> int:
    """CLOCK_MONOTONIC in microseconds, as systemd wants it in MONOTONIC_USEC=."""
    return time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000


def watchdog_interval(environ: Mapping[str, str], pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds that systemd asks this process to honour, or None."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    try:
        value = int(usec)
    except ValueError:
        log.warning("ignoring WATCHDOG_USEC=%r: not an integer", usec)
        return None
    return value / 1_000_000 if value > 0 else None


def _send_datagram(address: str, payload: bytes) -> bool:
    """sd_notify without libsystemd: one datagram to NOTIFY_SOCKET ('@' = abstract namespace)."""
    target = "\0" + address[1:] if address.startswith("@") else address
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.sendto(payload, target)
        return True
    except OSError as exc:
        log.warning("sd_notify to %s failed: %s", address, exc)
        return False


class Notifier:
    """Sends sd_notify state lines; a no-op when not started by systemd with Type=notify."""

    def __init__(self, environ: Mapping[str, str] | None = None, *,
                 sender: Callable[[str], bool] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = env.get("NOTIFY_SOCKET", "")
        self._watchdog = watchdog_interval(env)
        if sender is not None:
            self._sender = sender
        elif _sd_daemon is not None and environ is None:
            # libsystemd reads NOTIFY_SOCKET from the real environment itself.
            self._sender = lambda text: bool(_sd_daemon.notify(text))
        else:
            self._sender = lambda text: _send_datagram(self.address, text.encode())

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    @property
    def watchdog_interval(self) -> float | None:
        """Seconds between required WATCHDOG=1 pings' deadlines (ping at half of it), or None."""
        return self._watchdog if self.enabled else None

    def notify(self, *lines: str) -> bool:
        """Send the given ``KEY=value`` lines as one message; False when not sent."""
        if not self.enabled or not lines:
            return False
        for line in lines:
            if "\n" in line:
                raise ValueError(f"sd_notify line must not contain a newline: {line!r}")
        return self._sender("\n".join(lines))

    def ready(self, status: str | None = None) -> bool:
        return self.notify("READY=1", *((f"STATUS={status}",) if status else ()))

    def reloading(self) -> bool:
        # systemd (since v253) wants the reload start time with RELOADING=1.
        return self.notify("RELOADING=1", f"MONOTONIC_USEC={monotonic_usec()}")

    def stopping(self, status: str | None = None) -> bool:
        return self.notify("STOPPING=1", *((f"STATUS={status}",) if status else ()))

    def status(self, text: str) -> bool:
        return self.notify(f"STATUS={text}")

    def extend_start(self, seconds: float, status: str) -> bool:
        """Ask systemd for `seconds` more to start (EXTEND_TIMEOUT_USEC, systemd 236+; older
        ones ignore it), with a STATUS= line saying why."""
        return self.notify(f"EXTEND_TIMEOUT_USEC={int(seconds * 1_000_000)}", f"STATUS={status}")

    def watchdog(self) -> bool:
        return self.notify("WATCHDOG=1")

    def __repr__(self) -> str:
        state = f"socket={self.address!r}" if self.enabled else "disabled"
        return f"<Notifier {state} watchdog={self.watchdog_interval}>"
