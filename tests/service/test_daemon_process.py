"""The real `kafkad run` process, watched the way systemd watches it.

Each test starts `python -m kafkad run --config PATH` with NOTIFY_SOCKET
pointed at an AF_UNIX datagram socket the test owns (tests/support/daemon.py)
and checks what systemd would see: READY=1, STATUS=, WATCHDOG=1, RELOADING=1
with MONOTONIC_USEC then READY=1, STOPPING=1 and the exit status.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.error
import urllib.request

import pytest

from tests.service.conftest import daemon_env, kafkad_cmd
from tests.support.daemon import KafkadProcess
from tests.support.net import free_port

# Keep the daemon's logs on stderr (captured by the helper) even if the tests run under systemd.
NOT_UNDER_SYSTEMD = {"INVOCATION_ID": "", "JOURNAL_STREAM": ""}

# urlopen honours http_proxy, and without no_proxy it would send a request for
# 127.0.0.1 to the proxy: this opener always connects directly.
LOCAL_HTTP = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def unreachable_broker() -> str:
    """A loopback address where nothing listens (connections are refused at once)."""
    return f"127.0.0.1:{free_port()}"


def event_lines(logs: str, name: str) -> list[str]:
    return [line for line in logs.splitlines() if re.search(rf": {re.escape(name)}( |$)", line)]


def test_ready_status_watchdog_and_stop_without_a_broker():
    env = dict(NOT_UNDER_SYSTEMD, WATCHDOG_USEC="400000")
    with KafkadProcess(unreachable_broker(), request_timeout_ms=1000, drain_timeout_s=2.0, env=env,
                       extra={"stats": {"status_interval_s": 0.1}}) as d:
        d.start()  # READY=1 although no broker is reachable
        d.wait_notification(lambda line: line.startswith("STATUS=queued "))
        # Pings keep coming (every 0.2 s here), not just one at start.
        after = 0
        for _ in range(3):
            d.wait_notification("WATCHDOG=1", since=after)
            after = d.notifications.index("WATCHDOG=1", after) + 1
        assert d.term() == 0
        assert "STOPPING=1" in d.notifications
        assert d.notifications.index("STOPPING=1") > d.notifications.index("READY=1")
        logs = d.logs()
        assert event_lines(logs, "ready"), logs
        drained = event_lines(logs, "drained")
        assert len(drained) == 1 and " undelivered=0 " in drained[0] + " ", logs
        assert event_lines(logs, "stopped")
        assert "Traceback" not in logs


def test_no_watchdog_pings_unless_asked():
    with KafkadProcess(unreachable_broker(), env=NOT_UNDER_SYSTEMD,
                       extra={"stats": {"status_interval_s": 0.1}}) as d:
        d.start()
        # Two STATUS= refreshes span more than any plausible ping interval.
        d.wait_notification(lambda line: line.startswith("STATUS=queued "))
        n = len(d.notifications)
        d.wait_notification(lambda line: line.startswith("STATUS=queued "), since=n)
        assert "WATCHDOG=1" not in d.notifications
        assert d.term() == 0


def test_sighup_reloads_and_names_what_needs_a_restart():
    with KafkadProcess(unreachable_broker(), env=NOT_UNDER_SYSTEMD) as d:
        d.start()
        since = len(d.notifications)
        d.config["shutdown"]["drain_timeout_s"] = 1.5
        d.config["ipc"]["max_sessions"] = 50
        d.config["kafka"]["client_id"] = "renamed"        # the broker layer says: restart
        d.config["kafka"]["linger_ms"] = 4.0              # the broker layer applies it
        d.write_config()
        d.sighup()
        d.wait_notification("RELOADING=1", since=since)
        i = d.notifications.index("RELOADING=1", since)
        assert d.notifications[i + 1].startswith("MONOTONIC_USEC=")
        assert int(d.notifications[i + 1].split("=", 1)[1]) > 0
        d.wait_notification("READY=1", since=i)
        reloaded = event_lines(d.logs(), "reloaded")
        assert len(reloaded) == 1
        assert "changed=4" in reloaded[0]
        assert "applied=kafka.linger_ms,shutdown.drain_timeout_s" in reloaded[0]
        assert "needs_restart=kafka.client_id,ipc.max_sessions" in reloaded[0]
        restart = event_lines(d.logs(), "restart_needed")
        assert len(restart) == 1 and "keys=kafka.client_id,ipc.max_sessions" in restart[0]

        # A broken file is refused line by line and the running config stays.
        since = len(d.notifications)
        with open(d.config_path, "w") as f:
            f.write("[shutdown]\ndrain_timeout_s = -1\n[kafka]\nbogus = 1\n")
        d.sighup()
        d.wait_notification("RELOADING=1", since=since)
        d.wait_notification("READY=1", since=since)
        logs = d.logs()
        failed = event_lines(logs, "reload_failed")
        assert [re.search(r'problem="(.*)"$', line).group(1) for line in failed] == [
            f"{d.config_path}:2: shutdown.drain_timeout_s: must be between 0 and 86400, not -1",
            f"{d.config_path}:4: kafka.bogus: unknown key in [kafka]",
        ]
        assert len(event_lines(logs, "reload_rejected")) == 1
        assert d.running
        assert d.term() == 0
        # The drain used the reloaded timeout, not the broken file's.
        assert "drain_timeout_s=1.5" in event_lines(d.logs(), "stopping")[0]


def queue_undeliverable(d: KafkadProcess, n: int):
    """Have the daemon accept `n` messages that cannot be delivered (no broker); returns the producer."""
    from client_shim import Producer

    producer = Producer(d.endpoint, async_send=True, batch_send_every_n=1, async_stop_timeout=1)
    for i in range(n):
        producer.send_messages("nowhere", 0, b"m%d" % i)
    deadline = time.monotonic() + 20
    while (snap := d.stats())["accepted"] < n:
        assert time.monotonic() < deadline, f"the daemon never accepted {n} messages: {snap}"
    assert snap["queued_messages"] == n and snap["unaccounted"] == 0
    return producer


def test_stop_hands_back_to_live_shims_and_fails_what_gone_ones_sent():
    """No spool: at the end of the drain the undelivered messages of a connected
    shim are handed back to it (it replays them to the next daemon); those of a
    process that is gone are failed, logged per partition with their contents."""
    with KafkadProcess(unreachable_broker(), request_timeout_ms=1000, drain_timeout_s=0.5,
                       env=NOT_UNDER_SYSTEMD) as d:
        d.start()
        producer = queue_undeliverable(d, 7)
        script = ("import sys; from client_shim import Producer\n"
                  "p = Producer(sys.argv[1], async_send=True, batch_send_every_n=1)\n"
                  "[p.send_messages('nowhere', 1, b'gone-%d' % i) for i in range(4)]\n"
                  "print('sent', flush=True); sys.stdin.read()\n")
        gone = subprocess.Popen([sys.executable, "-c", script, d.endpoint], stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, text=True, env=daemon_env())
        try:
            assert gone.stdout.readline() == "sent\n"
            deadline = time.monotonic() + 20
            while d.stats()["accepted"] < 11:
                assert time.monotonic() < deadline, "the daemon never accepted the gone process's messages"
            gone.kill()                   # no shim left to keep its messages
            gone.wait(10)
            while d.stats()["ipc"]["peers_disconnected"] < 1:
                assert time.monotonic() < deadline, "the daemon never saw the process go"
            assert d.term() == 0
        finally:
            if gone.poll() is None:
                gone.kill()
            gone.wait(10)
            gone.stdin.close()
            gone.stdout.close()
            producer.stop()
        logs = d.logs()
        assert "queued=11 " in event_lines(logs, "stopping")[0]
        assert [line.split(": ", 1)[1] for line in event_lines(logs, "handed_back")] == [
            "handed_back topic=nowhere partition=0 messages=7 "
            "to=\"their shims, which replay them to the next daemon\""]
        assert [line.split(": ", 1)[1] for line in event_lines(logs, "undelivered")] == [
            "undelivered topic=nowhere partition=1 messages=4"]
        failures = [line for line in logs.splitlines() if " ERROR kafkad.ipc: " in line]
        assert all(any(f"b'gone-{i}'" in line for line in failures) for i in range(4)), failures
        drained = event_lines(logs, "drained")
        assert len(drained) == 1 and "undelivered=11 handed_back=7 " in drained[0] \
            and " WARNING " in drained[0]


def test_a_second_sigterm_cuts_the_drain_short():
    with KafkadProcess(unreachable_broker(), request_timeout_ms=1000, drain_timeout_s=600,
                       env=NOT_UNDER_SYSTEMD, extra={"stats": {"status_interval_s": 0.1}}) as d:
        d.start()
        producer = queue_undeliverable(d, 3)
        try:
            d.signal(signal.SIGTERM)
            d.wait_notification("STOPPING=1")
            # While it drains, STATUS= keeps saying so, with what is left.
            d.wait_notification(lambda line: line.startswith("STATUS=stopping: draining; queued 3 "))
            assert d.term(timeout=30) == 0   # the second SIGTERM; the drain would take 600 s
        finally:
            producer.stop()
        logs = d.logs()
        assert len(event_lines(logs, "drain_cut_short")) == 1
        assert "undelivered=3 " in event_lines(logs, "drained")[0]


def test_second_daemon_on_the_same_endpoint_refuses_clearly():
    with KafkadProcess(unreachable_broker(), env=NOT_UNDER_SYSTEMD) as d:
        d.start()
        r = subprocess.run(kafkad_cmd("run", "--config", d.config_path), capture_output=True,
                           text=True, timeout=30, env=daemon_env(**NOT_UNDER_SYSTEMD))
        assert r.returncode == 1
        message = [line for line in r.stderr.splitlines() if line.startswith("kafkad: cannot start: ")]
        assert len(message) == 1 and d.endpoint.removeprefix("ipc://") in message[0], r.stderr
        assert "Traceback" not in r.stderr
        # The first daemon is untouched and still answers.
        assert d.stats()["state"] == "running"
        assert d.term() == 0


def test_prometheus_address_in_use_is_a_clear_start_failure(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "k.toml"
        config.write_text(f'[kafka]\nbootstrap_servers = ["{unreachable_broker()}"]\n'
                          f'[ipc]\nendpoint = "ipc://{tmp_path}/k.sock"\n'
                          f'[stats]\nprometheus_listen = "127.0.0.1:{port}"\n')
        r = subprocess.run(kafkad_cmd("run", "--config", str(config)), capture_output=True, text=True,
                           timeout=30, env=daemon_env(**NOT_UNDER_SYSTEMD))
    assert r.returncode == 1
    assert (f"kafkad: cannot start: cannot serve Prometheus metrics on 127.0.0.1:{port}: "
            "Address already in use") in r.stderr.splitlines()
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "k.sock").exists(), "the IPC socket was left behind"


def test_a_spool_of_an_unknown_format_version_is_refused_and_left_untouched(tmp_path):
    spool = tmp_path / "spool"
    spool.mkdir()
    (spool / "FORMAT").write_text("kafkad-spool 99\n")
    (spool / "00000000000000000001.seg").write_bytes(b"from a future kafkad")
    before = {p.name: p.read_bytes() for p in spool.iterdir()}
    config = tmp_path / "k.toml"
    config.write_text(f'[ipc]\nendpoint = "ipc://{tmp_path}/k.sock"\n'
                      f'[spool]\nenabled = true\npath = "{spool}"\n')
    r = subprocess.run(kafkad_cmd("run", "--config", str(config)), capture_output=True, text=True,
                       timeout=30, env=daemon_env(**NOT_UNDER_SYSTEMD))
    assert r.returncode == 1
    lines = [line for line in r.stderr.splitlines() if line.startswith("kafkad: cannot start:")]
    assert len(lines) == 1 and f"cannot open the spool {spool}" in lines[0], r.stderr
    assert "Traceback" not in r.stderr and not (tmp_path / "k.sock").exists()
    assert {p.name: p.read_bytes() for p in spool.iterdir()} == before, "the spool was changed"


def test_socket_mode_and_restart_after_a_crash():
    with KafkadProcess(unreachable_broker(), env=NOT_UNDER_SYSTEMD,
                       extra={"ipc": {"socket_mode": "0640"}}) as d:
        d.start()
        path = d.endpoint.removeprefix("ipc://")
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o640
        assert d.kill9() == -signal.SIGKILL
        assert os.path.exists(path)          # a crash leaves the socket file behind
        d.restart()                          # ...and the next start replaces it
        assert d.stats()["state"] == "running"
        assert d.term() == 0
        assert not os.path.exists(path)      # a clean stop removes it


def test_sigint_stops_like_sigterm():
    with KafkadProcess(unreachable_broker(), env=NOT_UNDER_SYSTEMD) as d:
        d.start()
        d.signal(signal.SIGINT)
        assert d.proc.wait(30) == 0
        assert "STOPPING=1" in d.notifications
        assert "signal=SIGINT" in event_lines(d.logs(), "stopping")[0]


@pytest.mark.broker
def test_with_tansu_stats_prometheus_and_clean_stop(tansu, topic):
    from client_shim import SimpleProducer

    port = free_port()
    with KafkadProcess(tansu.bootstrap, env=NOT_UNDER_SYSTEMD,
                       extra={"stats": {"prometheus_listen": f"127.0.0.1:{port}"}}) as d:
        d.start()
        producer = SimpleProducer(d.endpoint)
        try:
            for i in range(5):
                payload = producer.send_messages(topic, f"m{i}".encode())
                assert len(payload) == 1 and payload[0].error == 0
        finally:
            producer.stop()

        snap = d.stats()
        assert snap["accepted"] >= 5 and snap["delivered"] >= 5
        assert snap["unaccounted"] == 0
        assert snap["accepted"] == (snap["delivered"] + snap["failed"] + snap["dropped"] + snap["handed_back"]
                                    + snap["queued_messages"] + snap["in_flight"])

        r = subprocess.run(kafkad_cmd("stats", "--endpoint", d.endpoint), capture_output=True,
                           text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        assert r.stdout.startswith("kafkad ")
        assert ("accounting: accepted = delivered + failed + dropped + handed back + kept in spool + queued "
                "+ in flight: balanced") in r.stdout
        delivered_row = next(line for line in r.stdout.splitlines() if line.strip().startswith("delivered"))
        assert int(delivered_row.split()[1]) >= 5

        with LOCAL_HTTP.open(f"http://127.0.0.1:{port}/metrics", timeout=10) as resp:
            assert resp.headers["Content-Type"].startswith("text/plain; version=0.0.4")
            metrics = resp.read().decode()
        values = {line.split()[0]: float(line.split()[1]) for line in metrics.splitlines()
                  if line and not line.startswith("#")}
        assert values["kafkad_messages_delivered_total"] >= 5
        assert values["kafkad_unaccounted_messages"] == 0
        with pytest.raises(urllib.error.HTTPError) as info:
            LOCAL_HTTP.open(f"http://127.0.0.1:{port}/other", timeout=10)
        assert info.value.code == 404

        assert d.term() == 0
        assert "STOPPING=1" in d.notifications
        drained = event_lines(d.logs(), "drained")
        assert len(drained) == 1 and "undelivered=0" in drained[0]


def test_stats_json_of_an_idle_daemon():
    with KafkadProcess(unreachable_broker(), env=NOT_UNDER_SYSTEMD) as d:
        d.start()
        r = subprocess.run(kafkad_cmd("stats", "--json", "--endpoint", d.endpoint),
                           capture_output=True, text=True, timeout=30)
        assert r.returncode == 0, r.stderr
        snap = json.loads(r.stdout)
        assert snap["pid"] == d.pid
        assert snap["state"] == "running"
        for key in ("accepted", "delivered", "failed", "dropped", "retried", "queued_messages",
                    "queued_bytes", "in_flight", "unaccounted", "brokers", "topics", "ipc"):
            assert key in snap
        assert snap["accepted"] == 0 and snap["unaccounted"] == 0
        assert d.term() == 0
