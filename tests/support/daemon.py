"""Run the real kafkad daemon as a process, the way systemd would, for black-box tests.

    with KafkadProcess(bootstrap="127.0.0.1:9092", request_timeout_ms=2000) as d:
        d.start()                 # returns once the daemon sent READY=1
        d.endpoint                # ipc://<short tmp dir>/kafkad.sock, for the shim
        d.stats()                 # `python -m kafkad stats --json --endpoint ...`, parsed
        d.sighup(); d.term()      # SIGTERM, wait, return the exit code
        d.kill9(); d.restart()    # same config, same endpoint, same spool

The helper owns an AF_UNIX datagram socket and passes it as NOTIFY_SOCKET, so
the daemon's sd_notify messages (READY=1, STATUS=..., STOPPING=1, ...) are
collected in `notifications`. Logs (stdout and stderr) go to a file;
`logs()` returns them and a failed start raises with their tail. Everything
lives in a short temporary directory under /tmp (AF_UNIX paths are limited
to 107 bytes, so pytest's long tmp_path is not used for sockets), which
`close()` removes after stopping the process; the context manager and the
`kafkad_factory` fixture always call it.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Mapping


def toml_dumps(doc: Mapping[str, Any]) -> str:
    """Enough TOML for a kafkad config: nested tables of str/int/float/bool/lists of those."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, (int, float)):
            return repr(v)
        if isinstance(v, str):
            return json.dumps(v)  # a JSON string is a valid TOML basic string
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        raise TypeError(f"cannot write {type(v).__name__} value {v!r} as TOML")

    lines: list[str] = []

    def table(prefix: str, t: Mapping[str, Any]) -> None:
        scalars = {k: v for k, v in t.items() if not isinstance(v, Mapping)}
        subs = {k: v for k, v in t.items() if isinstance(v, Mapping)}
        if prefix and (scalars or not subs):
            lines.append(f"[{prefix}]")
        for k, v in scalars.items():
            lines.append(f"{k} = {value(v)}")
        if scalars:
            lines.append("")
        for k, v in subs.items():
            table(f"{prefix}.{k}" if prefix else k, v)

    table("", doc)
    return "\n".join(lines) + "\n"


def merge(base: dict, extra: Mapping) -> dict:
    """`base` with `extra` merged in, table by table (extra wins)."""
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, Mapping) and isinstance(out.get(k), Mapping):
            out[k] = merge(dict(out[k]), v)
        else:
            out[k] = v
    return out


class DaemonError(RuntimeError):
    """The daemon did not do what the helper waited for; the message carries its log tail."""


class KafkadProcess:
    """One kafkad daemon process with its own config, endpoint, spool and notify socket."""

    def __init__(self, bootstrap: str | list[str], *, request_timeout_ms: int = 5000,
                 drain_timeout_s: float = 10.0, spool: bool = False,
                 idempotence: bool | None = None, extra: Mapping[str, Any] | None = None,
                 env: Mapping[str, str] | None = None, python: str = sys.executable):
        # "h1:p1,h2:p2" (what the mock cluster reports) or a list of "host:port".
        servers = bootstrap.split(",") if isinstance(bootstrap, str) else list(bootstrap)
        self.dir = tempfile.mkdtemp(prefix="kd-")
        self.endpoint = f"ipc://{self.dir}/kafkad.sock"
        self.spool_path = os.path.join(self.dir, "spool")
        self.config_path = os.path.join(self.dir, "kafkad.toml")
        self.log_path = os.path.join(self.dir, "kafkad.log")
        kafka: dict[str, Any] = {"bootstrap_servers": servers, "request_timeout_ms": request_timeout_ms}
        if idempotence is not None:
            kafka["idempotence"] = idempotence
        self.config: dict[str, Any] = {
            "kafka": kafka,
            "ipc": {"endpoint": self.endpoint},
            "spool": {"enabled": spool, "path": self.spool_path},
            "shutdown": {"drain_timeout_s": drain_timeout_s},
        }
        if extra:
            self.config = merge(self.config, extra)
        self.python = python
        self.env = dict(env or {})
        self.proc: subprocess.Popen | None = None
        self.notifications: list[str] = []
        self.starts = 0
        self._notify: socket.socket | None = None
        self._notify_path = os.path.join(self.dir, "notify.sock")
        self._cond = threading.Condition()
        self._reader: threading.Thread | None = None
        self._log_file = None
        self.write_config()

    # --- files ---------------------------------------------------------------

    def write_config(self, config: Mapping[str, Any] | None = None) -> str:
        """Write (or rewrite, e.g. before sighup()) the TOML config; returns its path."""
        if config is not None:
            self.config = dict(config)
        with open(self.config_path, "w") as f:
            f.write(toml_dumps(self.config))
        return self.config_path

    def logs(self) -> str:
        try:
            with open(self.log_path, errors="replace") as f:
                return f.read()
        except FileNotFoundError:
            return ""

    def _tail(self, n: int = 40) -> str:
        return "\n".join(self.logs().splitlines()[-n:])

    # --- notify socket ---------------------------------------------------------

    def _open_notify(self) -> None:
        if self._notify is not None:
            return
        s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        s.bind(self._notify_path)
        s.settimeout(0.2)
        self._notify = s
        self._reader = threading.Thread(target=self._read_notify, name="kafkad-notify", daemon=True)
        self._reader.start()

    def _read_notify(self) -> None:
        s = self._notify
        while s is not None and s.fileno() >= 0:
            try:
                data = s.recv(65536)
            except socket.timeout:
                continue
            except OSError:
                return
            with self._cond:
                self.notifications.extend(data.decode(errors="replace").splitlines())
                self._cond.notify_all()

    def wait_notification(self, predicate: Callable[[str], bool] | str, timeout: float = 20.0,
                          since: int = 0) -> str:
        """The first notification line (from index `since`) matching `predicate` (a line or a test)."""
        test = (lambda line: line == predicate) if isinstance(predicate, str) else predicate
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.notifications[since:]:
                    if test(line):
                        return line
                if self.proc is not None and self.proc.poll() is not None:
                    raise DaemonError(f"kafkad exited with {self.proc.returncode} while waiting for "
                                      f"{predicate!r}; log tail:\n{self._tail()}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise DaemonError(f"no {predicate!r} from kafkad after {timeout}s "
                                      f"(got {self.notifications[since:]}); log tail:\n{self._tail()}")
                self._cond.wait(min(left, 0.2))

    # --- life cycle ----------------------------------------------------------

    def start(self, timeout: float = 20.0) -> "KafkadProcess":
        """Start `python -m kafkad run --config PATH` and wait for READY=1."""
        if self.running:
            raise DaemonError(f"kafkad (pid {self.pid}) is already running")
        self._open_notify()
        env = dict(os.environ)
        env.pop("JOURNAL_STREAM", None)      # log to stderr, which we capture
        env.pop("WATCHDOG_USEC", None)
        env.pop("WATCHDOG_PID", None)
        env.update(self.env)
        env["NOTIFY_SOCKET"] = self._notify_path
        env["PYTHONUNBUFFERED"] = "1"
        with self._cond:
            since = len(self.notifications)
        self._log_file = open(self.log_path, "ab")
        self._log_file.write(f"--- start {self.starts + 1} ---\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            [self.python, "-m", "kafkad", "run", "--config", self.config_path],
            stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, env=env)
        self.starts += 1
        try:
            self.wait_notification("READY=1", timeout, since=since)
        except DaemonError:
            self._hard_stop()
            raise
        return self

    @property
    def pid(self) -> int:
        if self.proc is None:
            raise DaemonError("kafkad was never started")
        return self.proc.pid

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig: int) -> None:
        if not self.running:
            raise DaemonError(f"kafkad is not running (exit code {self.proc and self.proc.returncode})")
        self.proc.send_signal(sig)

    def sighup(self) -> None:
        self.signal(signal.SIGHUP)

    def term(self, timeout: float = 60.0) -> int:
        """SIGTERM, wait for the exit (at most `timeout`), return the exit code."""
        self.signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self._hard_stop()
            raise DaemonError(f"kafkad did not exit within {timeout}s of SIGTERM; log tail:\n{self._tail()}")
        finally:
            self._close_log()

    def kill9(self) -> int:
        """SIGKILL and reap; returns the (negative) exit code."""
        self.signal(signal.SIGKILL)
        rc = self.proc.wait(10)
        self._close_log()
        return rc

    def restart(self, timeout: float = 20.0) -> "KafkadProcess":
        """Start again with the same config, endpoint and spool (after term() or kill9())."""
        if self.running:
            raise DaemonError("restart(): stop the running daemon first (term() or kill9())")
        return self.start(timeout)

    def _hard_stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
        self._close_log()

    def _close_log(self) -> None:
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None

    def close(self) -> None:
        """Stop the process (SIGKILL if still running), close the notify socket, remove the files."""
        self._hard_stop()
        if self._notify is not None:
            s, self._notify = self._notify, None
            s.close()
            if self._reader is not None:
                self._reader.join(2)
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "KafkadProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # --- observation ---------------------------------------------------------

    def stats(self, timeout: float = 10.0) -> dict:
        """The daemon's `kafkad stats --json`, parsed."""
        r = subprocess.run([self.python, "-m", "kafkad", "stats", "--json", "--endpoint", self.endpoint],
                           capture_output=True, text=True, timeout=timeout)
        if r.returncode != 0:
            raise DaemonError(f"kafkad stats exited {r.returncode}: {r.stderr.strip() or r.stdout.strip()}")
        return json.loads(r.stdout)

    def _status_kb(self, field_name: str) -> int:
        with open(f"/proc/{self.pid}/status") as f:
            for line in f:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
        raise DaemonError(f"no {field_name} in /proc/{self.pid}/status")

    def rss_kb(self) -> int:
        """Resident memory now (VmRSS)."""
        return self._status_kb("VmRSS")

    def peak_rss_kb(self) -> int:
        """Peak resident memory of this process so far (VmHWM)."""
        return self._status_kb("VmHWM")

    def fd_count(self) -> int:
        """Open file descriptors now."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))


def process_rss_kb(pid: int) -> int:
    """VmRSS of any process (e.g. a worker using the shim)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS in /proc/{pid}/status")
