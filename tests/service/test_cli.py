"""The `kafkad` command line as a person meets it: help, version, check-config, mistakes."""

from __future__ import annotations

import errno
import os
import select
import signal
import subprocess
import sys
import time

import pytest

import kafkad
from tests.service.conftest import ROOT, daemon_env, kafkad_cmd


def run(*args: str, env: dict | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(kafkad_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          cwd=ROOT, env=env)


def no_traceback(r: subprocess.CompletedProcess) -> None:
    assert "Traceback" not in r.stderr and "Traceback" not in r.stdout, r.stderr


def test_version():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"kafkad {kafkad.__version__}"


def test_help_lists_every_command_with_examples():
    r = run("--help")
    assert r.returncode == 0
    for command in ("run", "check-config", "stats", "dev"):
        assert f"\n    {command}" in r.stdout
    assert "kafkad check-config /etc/kafkad/kafkad.toml" in r.stdout
    assert "SIGHUP" in r.stdout


@pytest.mark.parametrize("command,expected", [
    ("run", "--config PATH"),
    ("check-config", "PATH"),
    ("stats", "--json"),
    ("dev", "Ctrl-C"),
])
def test_each_command_has_help(command, expected):
    r = run(command, "--help")
    assert r.returncode == 0
    assert f"usage: kafkad {command}" in r.stdout
    assert expected in r.stdout


def test_no_command_is_a_usage_error():
    r = run()
    assert r.returncode == 2
    assert "usage: kafkad" in r.stderr
    no_traceback(r)


def test_check_config_ok(tmp_path):
    path = tmp_path / "k.toml"
    path.write_text('[kafka]\nbootstrap_servers = ["127.0.0.1:9092"]\n')
    r = run("check-config", str(path))
    assert (r.returncode, r.stdout, r.stderr) == (0, f"{path}: OK\n", "")


def test_check_config_example_ok():
    r = run("check-config", str(ROOT / "kafkad.toml.example"))
    assert r.returncode == 0, r.stderr


def test_check_config_reports_every_problem_and_exits_2(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[kafka]\nrequest_timeout_ms = -1\nsecurity_protocol = "TLS"\n\n[ipc]\nsocketmode = "0660"\n')
    r = run("check-config", str(path))
    assert r.returncode == 2
    assert r.stdout == ""
    assert r.stderr.splitlines() == [
        f"{path}:2: kafka.request_timeout_ms: must be between 1 and 2147483647, not -1",
        f"{path}:3: kafka.security_protocol: must be one of 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT', "
        "'SASL_SSL', not 'TLS'",
        f"{path}:6: ipc.socketmode: unknown key in [ipc] (did you mean 'socket_mode'?)",
    ]
    no_traceback(r)


def test_check_config_syntax_error(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[kafka\n")
    r = run("check-config", str(path))
    assert r.returncode == 2
    assert r.stderr.startswith(f"{path}:1: invalid TOML: ")
    no_traceback(r)


def test_check_config_no_file_checks(tmp_path):
    path = tmp_path / "tls.toml"
    path.write_text('[kafka]\nsecurity_protocol = "SSL"\n[kafka.tls]\nca_file = "/nonexistent/ca.pem"\n')
    r = run("check-config", str(path))
    assert r.returncode == 2
    assert r.stderr == f"{path}:4: kafka.tls.ca_file: cannot read '/nonexistent/ca.pem': No such file or directory\n"
    assert run("check-config", "--no-file-checks", str(path)).returncode == 0


@pytest.mark.parametrize("command", ["check-config", "run --config"])
def test_missing_config_file(tmp_path, command):
    missing = tmp_path / "missing.toml"
    r = run(*command.split(), str(missing))
    assert r.returncode == 2
    assert r.stderr == f"{missing}:0: file: cannot read: No such file or directory\n"
    no_traceback(r)


def test_run_with_a_bad_config_exits_2_before_starting(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[shutdown]\ndrain_timeout_s = \"long\"\n")
    r = run("run", "--config", str(path))
    assert r.returncode == 2
    assert r.stderr == f"{path}:2: shutdown.drain_timeout_s: must be a number, not a string\n"


def _fifo_writer(fifo, p: subprocess.Popen, deadline: float) -> int:
    """The write end of `fifo`, opened once `p` reads it (until then opening fails)."""
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            assert exc.errno == errno.ENXIO and p.poll() is None and time.monotonic() < deadline
            time.sleep(0.005)


def test_sigterm_before_the_daemon_runs_exits_0_without_a_traceback(tmp_path):
    # The config file is a FIFO, so `kafkad run` waits in reading it until this test
    # writes: the signal lands there, right after the start and before Daemon.run
    # takes signals over. It used to kill the process (-15).
    fifo = tmp_path / "k.toml"
    os.mkfifo(fifo)
    config = (f'[kafka]\nbootstrap_servers = ["127.0.0.1:1"]\n'
              f'[ipc]\nendpoint = "ipc://{tmp_path}/k.sock"\n').encode()
    p = subprocess.Popen(kafkad_cmd("run", "--config", str(fifo)), cwd=ROOT, env=daemon_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    fd = None
    try:
        fd = _fifo_writer(fifo, p, time.monotonic() + 30)
        p.send_signal(signal.SIGTERM)
        # Then the config: a signal that came just before the read began is handled
        # once the read returns (Python runs handlers between bytecodes).
        try:
            os.write(fd, config)
        except BrokenPipeError:    # it is gone already
            pass
        os.close(fd)
        fd = None
        out, err = p.communicate(timeout=30)
    finally:
        if fd is not None:
            os.close(fd)
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0, err
    assert "Traceback" not in err and err.strip() == (
        "kafkad: SIGTERM before the daemon started; nothing was accepted, exiting")


def test_sighup_before_the_daemon_runs_is_a_reload_once_it_is_ready(tmp_path):
    # As above, the signal lands while the config is read; SIGHUP used to kill the
    # process (its default action). Meanwhile the file changed: the reload reads it.
    fifo = tmp_path / "k.toml"
    os.mkfifo(fifo)
    config = (f'[kafka]\nbootstrap_servers = ["127.0.0.1:1"]\n'
              f'[ipc]\nendpoint = "ipc://{tmp_path}/k.sock"\n')
    p = subprocess.Popen(kafkad_cmd("run", "--config", str(fifo)), cwd=ROOT, env=daemon_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        fd = _fifo_writer(fifo, p, deadline)
        p.send_signal(signal.SIGHUP)
        newer = tmp_path / "newer.toml"
        newer.write_text(config + "[logging]\nlevel = \"DEBUG\"\n")
        os.replace(newer, fifo)             # what the reload will read
        os.write(fd, config.encode())
        os.close(fd)
        lines = []                          # the daemon logs to stderr outside systemd
        while not any(" reloaded " in x for x in lines) and time.monotonic() < deadline:
            if select.select([p.stderr], [], [], deadline - time.monotonic())[0]:
                line = p.stderr.readline()
                if not line:
                    break                   # it ended
                lines.append(line)
        assert any(" reloaded " in x and "changed=1" in x for x in lines), "".join(lines)
        p.send_signal(signal.SIGTERM)
        p.communicate(timeout=30)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    assert p.returncode == 0


def test_sigint_while_the_command_line_is_imported_exits_130_without_a_traceback(tmp_path):
    # `python -m kafkad`: a Ctrl-C that lands while kafkad.cli is still being imported
    # (before main() runs) printed a KeyboardInterrupt traceback and died by SIGINT.
    code = (
        "import importlib.abc, os, runpy, signal, sys\n"
        "class Interrupt(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'kafkad.cli':\n"
        "            os.kill(os.getpid(), signal.SIGINT)\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        f"sys.argv = ['kafkad', 'run', '--config', {str(tmp_path / 'k.toml')!r}]\n"
        "runpy.run_module('kafkad', run_name='__main__', alter_sys=True)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                       cwd=ROOT, env=daemon_env())
    assert r.returncode == 130, r.stderr
    no_traceback(r)

def test_stats_without_a_daemon_says_so(tmp_path):
    endpoint = f"ipc://{tmp_path}/nobody.sock"
    r = run("stats", "--endpoint", endpoint, "--timeout", "0.5")
    assert r.returncode == 1
    assert f"no answer from a daemon at {endpoint}" in r.stderr
    no_traceback(r)


@pytest.mark.parametrize("args,message", [
    (["--endpoint", "localhost:9"], "kafkad stats: endpoint 'localhost:9': kafkad serves ipc:// or tcp://"),
    (["--endpoint", "ipc://"], "kafkad stats: endpoint 'ipc://': an ipc:// endpoint needs a socket path"),
    (["--timeout", "0"], "argument --timeout/-t: must be more than 0 and at most 86400 seconds, not 0"),
    (["--timeout", "soon"], "argument --timeout/-t: 'soon' is not a number of seconds"),
    (["--timeout", "inf"], "argument --timeout/-t: must be more than 0 and at most 86400 seconds, not inf"),
    (["--timeout", "1e300"], "at most 86400 seconds"),
])
def test_stats_usage_mistakes(args, message):
    r = run("stats", *args)
    assert r.returncode == 2
    assert message in r.stderr
    no_traceback(r)


def test_stats_endpoint_from_config_and_environment(tmp_path):
    path = tmp_path / "k.toml"
    endpoint = f"ipc://{tmp_path}/from-config.sock"
    path.write_text(f'[ipc]\nendpoint = "{endpoint}"\n')
    r = run("stats", "--config", str(path), "--timeout", "0.3")
    assert r.returncode == 1 and endpoint in r.stderr
    env = dict(os.environ, KAFKAD_ENDPOINT=f"ipc://{tmp_path}/from-env.sock")
    r = run("stats", "--timeout", "0.3", env=env)
    assert r.returncode == 1 and "from-env.sock" in r.stderr


def test_entry_point_script_matches_module():
    script = os.path.join(os.path.dirname(sys.executable), "kafkad")
    if not os.path.exists(script):
        pytest.skip(f"no kafkad console script beside {sys.executable} (package not installed with pip -e)")
    r = subprocess.run([script, "--version"], capture_output=True, text=True, timeout=30)
    assert r.stdout.strip() == f"kafkad {kafkad.__version__}"
