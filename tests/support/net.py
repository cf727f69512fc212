"""Small helpers shared by the integration fixtures."""

from __future__ import annotations

import os
import socket
import time


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago on the loopback address."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listening on {host}:{port} after {timeout}s")
            time.sleep(0.05)


def socket_inodes(pids: list[int]) -> set[int]:
    """The inodes of the sockets these processes hold open (from /proc/<pid>/fd)."""
    inodes = set()
    for pid in pids:
        fd_dir = f"/proc/{pid}/fd"
        try:
            names = os.listdir(fd_dir)
        except OSError:
            continue
        for name in names:
            try:
                target = os.readlink(f"{fd_dir}/{name}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(int(target[8:-1]))
    return inodes


def tcp_sockets():
    """The host's TCP sockets from /proc/net/tcp and tcp6: (local port, remote port, state, inode).

    `state` is the kernel's hex code: "01" ESTABLISHED, "0A" LISTEN.
    """
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                rows = [line.split() for line in f]
        except OSError:
            continue
        for parts in rows:
            yield (int(parts[1].rsplit(":", 1)[1], 16), int(parts[2].rsplit(":", 1)[1], 16),
                   parts[3], int(parts[9]))


def listens(pid: int, port: int) -> bool:
    """Whether process `pid` holds the socket listening on TCP `port` (any local address)."""
    mine = socket_inodes([pid])
    return any(state == "0A" and local == port and inode in mine
               for local, _, state, inode in tcp_sockets())
