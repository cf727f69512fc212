"""The daemon helper: its config is one kafkad accepts, and it manages the real process."""

from __future__ import annotations

import os
import tomllib

import pytest

from tests.support.daemon import KafkadProcess, merge, toml_dumps


def test_toml_dumps_round_trips_nested_tables():
    doc = {"kafka": {"bootstrap_servers": ["127.0.0.1:1", "127.0.0.1:2"], "idempotence": False,
                     "request_timeout_ms": 1500, "tls": {"ca_file": 'a "quoted" path'}},
           "shutdown": {"drain_timeout_s": 2.5}, "empty": {}}
    assert tomllib.loads(toml_dumps(doc)) == doc
    with pytest.raises(TypeError, match="object"):
        toml_dumps({"k": object()})


def test_merge_is_per_table():
    assert merge({"a": {"x": 1, "y": 2}, "b": 1}, {"a": {"y": 3}, "c": {"z": 0}}) == {
        "a": {"x": 1, "y": 3}, "b": 1, "c": {"z": 0}}


def test_written_config_is_accepted_by_kafkad_loader():
    from kafkad.configfile import load_config

    with KafkadProcess(["127.0.0.1:9"], request_timeout_ms=1234, drain_timeout_s=3.0, spool=True,
                       idempotence=False, extra={"kafka": {"linger_ms": 1.0},
                                                 "queue": {"max_messages": 5000}}) as d:
        cfg = load_config(d.config_path)
        assert cfg.kafka.bootstrap_servers == ("127.0.0.1:9",)
        assert cfg.kafka.request_timeout_ms == 1234 and cfg.kafka.idempotence is False
        assert cfg.kafka.linger_ms == 1.0 and cfg.queue.max_messages == 5000
        assert cfg.ipc.endpoint == d.endpoint and len(d.endpoint) < 100
        assert cfg.spool.enabled and cfg.spool.path == d.spool_path
        assert cfg.shutdown.drain_timeout_s == 3.0
        where = d.dir
    assert not os.path.exists(where)
