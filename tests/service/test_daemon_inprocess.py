"""The daemon object in this process: state table, signal queue, and an internal failure."""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import io
import os
import signal
import tempfile

import pytest

from kafkad import logs
from kafkad.broker import BrokerProducer
from kafkad.config import Config, IpcConfig, KafkaConfig, ShutdownConfig
from kafkad.daemon import EXIT_CRASHED, GC_THRESHOLDS, Daemon, State
from kafkad.systemd import Notifier
from tests.support.net import free_port


@pytest.fixture
def config():
    with tempfile.TemporaryDirectory(prefix="kdi-") as d:
        yield dataclasses.replace(
            Config(),
            kafka=dataclasses.replace(KafkaConfig(), bootstrap_servers=(f"127.0.0.1:{free_port()}",)),
            ipc=dataclasses.replace(IpcConfig(), endpoint=f"ipc://{d}/k.sock"),
            shutdown=ShutdownConfig(drain_timeout_s=1.0))


@pytest.fixture
def log_stream():
    stream = io.StringIO()
    logs.setup_logging("INFO", environ={}, stream=stream)
    yield stream
    logs.setup_logging("INFO")


def _notifier(sent):
    return Notifier({"NOTIFY_SOCKET": "/unused"}, sender=lambda text: sent.append(text) or True)


def test_signals_are_dispatched_in_order_by_the_main_loop(config, log_stream):
    sent: list[str] = []
    states: list[State] = []

    def ready(d: Daemon) -> None:
        states.append(d.state)
        d.request(signal.SIGHUP)     # no config file: logged and skipped
        d.request(signal.SIGTERM)
        d.request(signal.SIGHUP)     # after the stop began: ignored

    daemon = Daemon(config, None, notifier=_notifier(sent), on_ready=ready)
    assert asyncio.run(daemon.run()) == 0
    assert states == [State.RUNNING] and daemon.state is State.STOPPED
    assert repr(daemon).startswith("<Daemon STOPPED ")
    kinds = [text.split("\n")[0] for text in sent]
    assert kinds[0] == "READY=1"
    assert kinds[1] == "RELOADING=1" and sent[1].split("\n")[1].startswith("MONOTONIC_USEC=")
    assert kinds[2] == "READY=1"
    assert kinds[3] == "STOPPING=1"
    assert "reload_skipped" in log_stream.getvalue()


def test_an_internal_error_is_logged_closed_and_exits_70(config, log_stream, monkeypatch):
    async def broken_drain(self, deadline):
        raise RuntimeError("engine bug")

    monkeypatch.setattr(BrokerProducer, "drain", broken_drain)
    daemon = Daemon(config, None, notifier=_notifier([]),
                    on_ready=lambda d: d.request(signal.SIGTERM))
    assert asyncio.run(daemon.run()) == EXIT_CRASHED
    text = log_stream.getvalue()
    assert "ERROR kafkad.daemon: crashed state=stopping error=RuntimeError" in text
    assert "RuntimeError: engine bug" in text   # the traceback is in the log
    socket_path = config.ipc.endpoint.removeprefix("ipc://")
    assert not os.path.exists(socket_path), "the IPC socket was not closed"


def test_the_engine_gets_the_daemons_message_logging_setting(config, log_stream):
    # The engine logs failed messages itself: [logging] log_messages_on_error must reach it.
    seen = []

    def ready(d: Daemon) -> None:
        seen.append(d._producer.engine.log_messages_on_error)
        d.request(signal.SIGTERM)

    off = dataclasses.replace(config, logging=dataclasses.replace(config.logging, log_messages_on_error=False))
    assert asyncio.run(Daemon(off, None, notifier=_notifier([]), on_ready=ready).run()) == 0
    assert seen == [False]


def test_state_table_refuses_a_wrong_transition(config):
    daemon = Daemon(config, None)
    with pytest.raises(RuntimeError, match="STARTING -> RELOADING is not allowed"):
        daemon._set_state(State.RELOADING)


def test_a_section_the_producer_cannot_reload_covers_its_keys(config, log_stream, monkeypatch, tmp_path):
    monkeypatch.setattr(BrokerProducer, "reload", lambda self, kafka, queue: ["kafka.tls"])
    path = tmp_path / "k.toml"
    path.write_text(f'[kafka]\nbootstrap_servers = ["{config.kafka.bootstrap_servers[0]}"]\n'
                    f'tls.check_hostname = false\n[ipc]\nendpoint = "{config.ipc.endpoint}"\n'
                    "[shutdown]\ndrain_timeout_s = 1.0\n")

    def ready(d: Daemon) -> None:
        d.request(signal.SIGHUP)
        d.request(signal.SIGTERM)

    assert asyncio.run(Daemon(config, str(path), notifier=_notifier([]), on_ready=ready).run()) == 0
    line = next(x for x in log_stream.getvalue().splitlines() if ": reloaded " in x)
    assert line.endswith(f"reloaded path={path} changed=1 applied=- needs_restart=kafka.tls.check_hostname")


def test_a_reload_applies_metadata_max_idle_ms_at_once(config, log_stream, tmp_path):
    path = tmp_path / "k.toml"
    path.write_text(f'[kafka]\nbootstrap_servers = ["{config.kafka.bootstrap_servers[0]}"]\n'
                    f'metadata_max_idle_ms = 1000\n[ipc]\nendpoint = "{config.ipc.endpoint}"\n'
                    "[shutdown]\ndrain_timeout_s = 1.0\n")
    seen = []

    def ready(d: Daemon) -> None:
        d.request(signal.SIGHUP)
        asyncio.get_running_loop().call_later(
            0.2, lambda: (seen.append(d._producer.engine.kafka.metadata_max_idle_ms),
                          d.request(signal.SIGTERM)))

    assert asyncio.run(Daemon(config, str(path), notifier=_notifier([]), on_ready=ready).run()) == 0
    line = next(x for x in log_stream.getvalue().splitlines() if ": reloaded " in x)
    assert line.endswith(f"reloaded path={path} changed=1 applied=kafka.metadata_max_idle_ms needs_restart=-")
    assert seen == [1000]


def test_collector_is_tuned_once_started(config, log_stream):
    before = gc.get_threshold()
    seen = []

    def ready(d: Daemon) -> None:
        seen.append((gc.get_threshold(), gc.get_freeze_count()))
        d.request(signal.SIGTERM)

    try:
        assert asyncio.run(Daemon(config, None, notifier=_notifier([]), on_ready=ready).run()) == 0
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
    assert seen[0][0] == GC_THRESHOLDS and seen[0][1] > 0


def test_a_slow_spool_open_asks_systemd_for_more_start_time(config, log_stream, monkeypatch, tmp_path):
    """A full spool takes about a minute to open; TimeoutStartSec (30 s) must not kill the start."""
    import time as _time

    import kafkad.daemon
    import kafkad.spool
    from kafkad.config import SpoolConfig

    real_open = kafkad.spool.open

    def slow_open(cfg):
        _time.sleep(0.35)
        return real_open(cfg)

    monkeypatch.setattr(kafkad.spool, "open", slow_open)
    monkeypatch.setattr(kafkad.daemon, "_SPOOL_OPEN_EXTEND_S", 0.3)   # a message every 0.1 s
    sent: list[str] = []
    spooled = dataclasses.replace(config, spool=SpoolConfig(enabled=True, path=str(tmp_path / "spool")))
    assert asyncio.run(Daemon(spooled, None, notifier=_notifier(sent),
                              on_ready=lambda d: d.request(signal.SIGTERM)).run()) == 0
    before_ready = sent[:next(i for i, t in enumerate(sent) if t.startswith("READY=1"))]
    extends = [t for t in before_ready if t.startswith("EXTEND_TIMEOUT_USEC=300000\n")]
    assert len(extends) >= 3, sent
    assert all("STATUS=opening the spool " in t for t in extends)
    assert not any(t.startswith("EXTEND_TIMEOUT_USEC") for t in sent[len(before_ready):])   # none after


def _start_then_stop_when(worker, condition):
    """An on_ready that starts `worker`, then asks for SIGTERM once `condition(daemon)` holds."""
    def ready(d: Daemon) -> None:
        worker.start()

        def check():
            if condition(d):
                d.request(signal.SIGTERM)
            else:
                asyncio.get_running_loop().call_later(0.02, check)
        check()
    return ready


def test_a_sync_send_failed_at_stop_counts_as_failed_not_dropped(config, log_stream):
    """Its caller is told (RequestTimedOutError): `dropped` is for messages nobody could be told of."""
    import threading

    import client_shim
    from client_shim import errors

    raised = []

    def send():
        p = client_shim.Producer(client_shim.DaemonClient(config.ipc.endpoint, timeout=20))
        try:
            p.send_messages("t", 0, b"never")       # the brokers are down: it waits for the stop
        except errors.KafkaError as exc:
            raised.append(exc)

    worker = threading.Thread(target=send)

    daemon = Daemon(config, None, notifier=_notifier([]),
                    on_ready=_start_then_stop_when(worker, lambda d: d._producer.stats()["queued"]))
    assert asyncio.run(daemon.run()) == 0
    worker.join(20)
    assert [type(e) for e in raised] == [errors.RequestTimedOutError]
    snap = daemon.stats.snapshot()
    assert (snap["failed"], snap["dropped"], snap["unaccounted"]) == (1, 0, 0), snap


def test_messages_kept_in_the_spool_at_stop_count_as_kept_not_dropped(config, log_stream, tmp_path):
    import threading

    import client_shim
    from kafkad.config import SpoolConfig

    spooled = dataclasses.replace(config, spool=SpoolConfig(enabled=True, path=str(tmp_path / "spool")))
    acked = threading.Event()

    def send():
        p = client_shim.Producer(client_shim.DaemonClient(spooled.ipc.endpoint, timeout=20), async_send=True,
                                 batch_send_every_n=1)
        p.send_messages("t", 0, b"one", b"two")
        p._session.wait_drained(20)          # acknowledged once spooled (the brokers are down)
        acked.set()

    worker = threading.Thread(target=send)

    daemon = Daemon(spooled, None, notifier=_notifier([]), on_ready=_start_then_stop_when(
        worker, lambda d: acked.is_set() and d._producer.stats()["queued"]))
    assert asyncio.run(daemon.run()) == 0
    worker.join(20)
    st = daemon._producer.stats()            # (the snapshot would read the closed spool)
    assert (st["kept_in_spool"], st["dropped"]) == (2, 0), st
    assert st["accepted"] == st["delivered"] + st["failed"] + st["dropped"] + st["handed_back"] + \
        st["kept_in_spool"] + st["queued"] + st["in_flight"]
    assert "kept_in_spool messages=2" in log_stream.getvalue()
