"""The daemon's small parts on their own: sd_notify, watchdog, logging, stats renderings."""

from __future__ import annotations

import asyncio
import io
import logging
import os
import socket
import tempfile
import time

import pytest

from kafkad import logs
from kafkad.config import Config
from kafkad.configfile import changed_keys
from kafkad.stats import (PrometheusServer, RateTracker, StatsCollector, render_prometheus,
                          render_table, status_line)
from kafkad.systemd import Notifier, monotonic_usec, watchdog_interval


@pytest.fixture
def notify_socket():
    d = tempfile.mkdtemp(prefix="kn-")
    path = os.path.join(d, "notify")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    s.settimeout(5)
    yield path, s
    s.close()
    os.unlink(path)
    os.rmdir(d)


# --- sd_notify ---------------------------------------------------------------------


def test_notifier_sends_one_datagram_per_message(notify_socket):
    path, sock = notify_socket
    n = Notifier({"NOTIFY_SOCKET": path})
    assert n.enabled
    before = monotonic_usec()
    assert n.reloading()
    lines = sock.recv(4096).decode().split("\n")
    assert lines[0] == "RELOADING=1"
    assert lines[1].startswith("MONOTONIC_USEC=")
    assert before <= int(lines[1].split("=")[1]) <= monotonic_usec()
    assert n.ready(status="ready; queued 0")
    assert sock.recv(4096) == b"READY=1\nSTATUS=ready; queued 0"
    n.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    n.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_notifier_abstract_socket():
    name = f"kafkad-test-{os.getpid()}-{time.monotonic_ns()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as s:
        s.bind("\0" + name)
        s.settimeout(5)
        assert Notifier({"NOTIFY_SOCKET": "@" + name}).status("hello")
        assert s.recv(100) == b"STATUS=hello"


def test_notifier_is_a_no_op_outside_systemd():
    sent = []
    n = Notifier({}, sender=lambda text: sent.append(text) or True)
    assert not n.enabled
    assert n.ready() is False and n.watchdog() is False
    assert n.watchdog_interval is None and sent == []


def test_notifier_rejects_newlines_in_a_line(notify_socket):
    path, _ = notify_socket
    with pytest.raises(ValueError, match="newline"):
        Notifier({"NOTIFY_SOCKET": path}).status("two\nlines")


@pytest.mark.parametrize("env,expected", [
    ({}, None),
    ({"WATCHDOG_USEC": "2000000"}, 2.0),
    ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "OURS"}, 0.5),
    ({"WATCHDOG_USEC": "500000", "WATCHDOG_PID": "1"}, None),   # meant for another process
    ({"WATCHDOG_USEC": "0"}, None),
    ({"WATCHDOG_USEC": "soon"}, None),
])
def test_watchdog_interval(env, expected):
    env = {k: (str(os.getpid()) if v == "OURS" else v) for k, v in env.items()}
    assert watchdog_interval(env) == expected


# --- logging -----------------------------------------------------------------------


def test_event_lines_are_key_value_and_quote_what_needs_it():
    assert logs.format_fields("reloaded", {"path": "/etc/k.toml", "keys": ["a.b", "c"], "n": 3,
                                           "why": 'say "no"', "empty": ""}) == \
        'reloaded path=/etc/k.toml keys=a.b,c n=3 why="say \\"no\\"" empty=""'


def test_setup_logging_to_a_stream_with_level():
    stream = io.StringIO()
    logs.setup_logging("warning", environ={}, stream=stream)
    try:
        log = logging.getLogger("kafkad.test")
        logs.event(log, logging.INFO, "hidden")
        logs.event(log, logging.WARNING, "shown", n=1)
        assert stream.getvalue().endswith(" WARNING kafkad.test: shown n=1\n")
        assert "hidden" not in stream.getvalue()
        logs.set_level("INFO")
        logs.event(log, logging.INFO, "now_shown")
        assert "now_shown" in stream.getvalue()
    finally:
        logs.setup_logging("INFO")


def test_setup_logging_uses_the_journal_under_systemd():
    from systemd.journal import JournalHandler

    try:
        handler = logs.setup_logging("INFO", environ={"INVOCATION_ID": "0123"}, stream=io.StringIO())
        assert isinstance(handler, JournalHandler)
        assert logging.getLogger("kafkad").handlers.count(handler) == 1
    finally:
        handler = logs.setup_logging("INFO")
    assert not isinstance(handler, JournalHandler) or logs.under_systemd()


def test_under_systemd_detection(tmp_path):
    with open(tmp_path / "f", "w") as f:
        st = os.fstat(f.fileno())
        assert logs.under_systemd({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}, f)
        assert not logs.under_systemd({"JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino + 1}"}, f)
        assert logs.under_systemd({"INVOCATION_ID": "abc"}, f)
        assert not logs.under_systemd({}, f)


# --- stats -------------------------------------------------------------------------

PRODUCER = {"accepted": 100, "delivered": 90, "failed": 3, "dropped": 1, "retried": 4,
            "queued": 4, "errors": {"NOT_LEADER_OR_FOLLOWER": 2}, "queued_bytes": 2048, "in_flight": 2, "requests": 12,
            "brokers": {1: {"host": "b1:9092", "latency_p50_ms": 1.5, "latency_p99_ms": 9.25}},
            "topics": {"orders": {"accepted": 60, "delivered": 55, "delivered_bytes": 5500}}}


def _collector(producer=PRODUCER, clock=None):
    t = [0.0]
    c = StatsCollector(lambda: producer, lambda: {"sessions": 3},
                       clock=clock or (lambda: t[0]))
    return c, t


def test_snapshot_balances_and_normalises_keys():
    c, _ = _collector()
    snap = c.snapshot()
    assert snap["unaccounted"] == 0
    assert snap["accepted"] == 100 and snap["queued_bytes"] == 2048
    assert snap["queued_messages"] == 4 and "queued" not in snap
    assert snap["brokers"] == {"1": {"host": "b1:9092", "latency_p50_ms": 1.5, "latency_p99_ms": 9.25}}
    assert snap["ipc"] == {"sessions": 3}
    assert snap["pid"] == os.getpid()


def test_snapshot_reports_an_accounting_gap():
    c, _ = _collector(dict(PRODUCER, delivered=80))
    assert c.snapshot()["unaccounted"] == 10
    assert "ACCOUNTING OFF BY 10" in status_line(c.snapshot())
    assert "OFF BY 10" in render_table(c.snapshot())


def test_rates_over_time():
    counts = dict(PRODUCER, topics={"orders": {"delivered": 0}})
    c, t = _collector(counts)
    c.snapshot()
    t[0] = 2.0
    counts["delivered"] = 190
    counts["accepted"] = 200
    counts["topics"] = {"orders": {"delivered": 40}}
    snap = c.snapshot()
    assert snap["delivered_per_s"] == 50.0
    assert snap["topics"]["orders"]["delivered_per_s"] == 20.0


def test_a_topic_seen_for_the_first_time_counts_from_zero():
    counts = dict(PRODUCER, topics={})
    c, t = _collector(counts)
    c.snapshot()
    t[0] = 4.0
    counts["topics"] = {"new": {"delivered": 100}}
    assert c.snapshot()["topics"]["new"]["delivered_per_s"] == 25.0


def test_rate_tracker_window_forgets_old_samples():
    r = RateTracker(window=10)
    r.update(0, {"x": 0})
    r.update(5, {"x": 1000})
    r.update(20, {"x": 1000})
    assert r.update(30, {"x": 1100}) == {"x": 10.0}


def test_table_and_status_line():
    c, _ = _collector()
    snap = c.snapshot()
    table = render_table(snap)
    assert ("accounting: accepted = delivered + failed + dropped + handed back + kept in spool + queued + in flight: "
            "balanced") in table
    assert "2.0 KiB" in table
    header = next(line for line in table.splitlines() if line.startswith("broker"))
    assert header.split() == ["broker", "host", "latency_p50_ms", "latency_p99_ms"]
    assert "orders" in table
    assert "  NOT_LEADER_OR_FOLLOWER  2" in table.splitlines()
    assert status_line(snap) == ("queued 4 (2.0 KiB), in flight 2, delivered 90 (0.0/s), "
                                 "failed 3, dropped 1, 3 sessions")


def test_prometheus_text():
    c, _ = _collector()
    text = render_prometheus(c.snapshot())
    lines = text.splitlines()
    assert "# TYPE kafkad_messages_accepted_total counter" in lines
    assert "kafkad_messages_accepted_total 100" in lines
    assert "kafkad_queued_bytes 2048" in lines
    assert 'kafkad_broker_latency_p99_ms{broker="1"} 9.25' in lines
    assert 'kafkad_topic_delivered_total{topic="orders"} 55' in lines
    assert "# TYPE kafkad_topic_delivered_bytes_total counter" in lines
    assert "# TYPE kafkad_topic_delivered_per_s gauge" in lines
    assert "kafkad_ipc_sessions 3" in lines
    assert 'kafkad_broker_errors_total{error="NOT_LEADER_OR_FOLLOWER"} 2' in lines
    assert "# TYPE kafkad_ipc_sessions gauge" in lines
    for line in lines:
        assert line.startswith("# ") or line.startswith("kafkad_"), line
    names = [line.split()[2] for line in lines if line.startswith("# TYPE")]
    assert len(names) == len(set(names)), "a metric family appears twice"


def test_sent_and_byte_totals_in_every_rendering():
    c, _ = _collector(dict(PRODUCER, sent=95, sent_bytes=3 * 1024 * 1024, delivered_bytes=5500))
    snap = c.snapshot()
    assert (snap["sent"], snap["sent_bytes"], snap["delivered_bytes"]) == (95, 3 * 1024 * 1024, 5500)
    lines = render_table(snap).splitlines()
    assert "  delivered      90  0.0/s  5.4 KiB" in lines
    assert "  sent           95  3.0 MiB written" in lines
    prom = render_prometheus(snap).splitlines()
    assert "# TYPE kafkad_messages_sent_total counter" in prom and "kafkad_messages_sent_total 95" in prom
    assert f"kafkad_sent_bytes_total {3 * 1024 * 1024}" in prom
    assert "kafkad_delivered_bytes_total 5500" in prom
    # a producer that does not count them (an older one) still gives every key
    assert {"sent", "sent_bytes", "delivered_bytes"} <= set(_collector()[0].snapshot())

def test_prometheus_server_serves_metrics_only():
    async def main():
        c, _ = _collector()
        server = PrometheusServer("127.0.0.1:0", c.snapshot)
        await server.start()
        try:
            async def get(path, method="GET"):
                reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
                writer.write(f"{method} {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                data = await reader.read()
                writer.close()
                return data.decode()

            ok = await get("/metrics")
            assert ok.startswith("HTTP/1.1 200 OK\r\n")
            assert "kafkad_messages_delivered_total 90" in ok
            assert (await get("/")).startswith("HTTP/1.1 404")
            assert (await get("/metrics", "POST")).startswith("HTTP/1.1 405")
        finally:
            await server.close()

    asyncio.run(main())


def test_changed_keys():
    import dataclasses
    old = Config()
    new = dataclasses.replace(old, kafka=dataclasses.replace(old.kafka, linger_ms=7.0),
                              ipc=dataclasses.replace(old.ipc, max_sessions=3))
    assert changed_keys(old, new) == ["kafka.linger_ms", "ipc.max_sessions"]
    assert changed_keys(old, old) == []


def test_everything_works_without_systemd_python(notify_socket):
    """With `systemd` unimportable, notify falls back to its own datagram and logs go to stderr."""
    import subprocess
    import sys

    path, sock = notify_socket
    code = ("import sys; sys.modules['systemd'] = None\n"
            "from kafkad.systemd import Notifier\n"
            "from kafkad import logs\n"
            "import logging\n"
            "logs.setup_logging('INFO')\n"
            "logs.event(logging.getLogger('kafkad.t'), logging.INFO, 'hello', n=1)\n"
            "assert Notifier().ready(status='fallback')\n")
    env = dict(os.environ, NOTIFY_SOCKET=path, INVOCATION_ID="under-systemd")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30, env=env)
    assert r.returncode == 0, r.stderr
    assert sock.recv(4096) == b"READY=1\nSTATUS=fallback"
    assert r.stderr.endswith(" INFO kafkad.t: hello n=1\n")
