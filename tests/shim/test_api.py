"""The shim's public surface without a daemon: names, defaults, validation, errors, partitioners."""

from __future__ import annotations

import collections
import decimal
import fractions
import inspect
import math
import re
import subprocess
import sys
import warnings

import pytest

import client_shim
from client_shim import errors, schema
from client_shim.link import _groups_frame
from client_shim.partitioner import murmur2

NO_DAEMON = "ipc:///nonexistent-kafkad-dir/kafkad.sock"


def test_documented_constants_and_codecs():
    assert (client_shim.ACK_NOT_REQUIRED, client_shim.ACK_AFTER_LOCAL_WRITE,
            client_shim.ACK_AFTER_CLUSTER_COMMIT, client_shim.DEFAULT_ACK_TIMEOUT) == (0, 1, -1, 1000)
    p = client_shim.Producer
    assert (p.ACK_NOT_REQUIRED, p.ACK_AFTER_LOCAL_WRITE, p.ACK_AFTER_CLUSTER_COMMIT, p.DEFAULT_ACK_TIMEOUT) == \
        (0, 1, -1, 1000)
    assert (client_shim.CODEC_NONE, client_shim.CODEC_GZIP, client_shim.CODEC_SNAPPY, client_shim.CODEC_LZ4,
            client_shim.CODEC_ZSTD) == (0, 1, 2, 3, 4)
    assert set(client_shim.ALL_CODECS) == {0, 1, 2, 3, 4}


def test_producer_signature_has_every_documented_parameter_and_default():
    documented = dict(req_acks=1, ack_timeout=1000, codec=None, codec_compresslevel=None,
                      sync_fail_on_error=True, async_send=False, batch_send=False, batch_send_every_n=20,
                      batch_send_every_t=20, async_retry_limit=None, async_retry_backoff_ms=100,
                      async_retry_on_timeouts=True, async_queue_maxsize=0, async_queue_put_timeout=0,
                      async_log_messages_on_error=True, async_stop_timeout=30)
    params = inspect.signature(client_shim.Producer).parameters
    assert list(params)[0] == "client"
    for name, default in documented.items():
        assert params[name].default == default, name
    p = client_shim.SimpleProducer(NO_DAEMON)
    assert p.random_start is True
    assert all(getattr(p, k) == v for k, v in documented.items() if k not in ("batch_send", "codec"))
    assert p.codec == client_shim.CODEC_NONE


def test_async_spellings():
    assert client_shim.Producer(NO_DAEMON, **{"async": True}).async_send is True
    assert getattr(client_shim.Producer(NO_DAEMON, async_send=True), "async") is True
    with pytest.warns(DeprecationWarning, match="batch_send"):
        assert client_shim.Producer(NO_DAEMON, batch_send=True).async_send is True
    with pytest.raises(TypeError, match="unexpected keyword.*asynch"):
        client_shim.Producer(NO_DAEMON, asynch=True)


@pytest.mark.parametrize("kwargs,exc,word", [
    (dict(codec=9), errors.UnsupportedCodecError, "codec"),
    (dict(codec="gzip"), errors.UnsupportedCodecError, "codec"),
    (dict(req_acks=2), ValueError, "req_acks"),
    (dict(ack_timeout="1s"), TypeError, "ack_timeout"),
    (dict(ack_timeout=-1), ValueError, "ack_timeout"),
    (dict(codec_compresslevel=1.5), TypeError, "codec_compresslevel"),
    (dict(batch_send_every_n=0), ValueError, "batch_send_every_n"),
    (dict(batch_send_every_t=-1), ValueError, "batch_send_every_t"),
    (dict(async_retry_limit=-1), ValueError, "async_retry_limit"),
    (dict(async_queue_maxsize=1.5), TypeError, "async_queue_maxsize"),
    (dict(async_queue_put_timeout=-1), ValueError, "async_queue_put_timeout"),
    (dict(async_stop_timeout="x"), TypeError, "async_stop_timeout"),
    (dict(client=42), TypeError, "client"),
    (dict(client="not-an-endpoint"), ValueError, "endpoint"),
    # Values the daemon would refuse, or msgpack could not carry, once the producer
    # sends: they used to pass here and hang sync sends or stop the link's I/O thread.
    (dict(codec=1.0), errors.UnsupportedCodecError, "codec"),
    (dict(codec=decimal.Decimal(1)), errors.UnsupportedCodecError, "codec"),
    (dict(req_acks=1.0), ValueError, "req_acks"),
    (dict(req_acks=decimal.Decimal(1)), ValueError, "req_acks"),
    (dict(batch_send_every_t=math.inf), ValueError, "batch_send_every_t must be a finite"),
    (dict(batch_send_every_t=math.nan), ValueError, "batch_send_every_t must be a finite"),
    (dict(async_stop_timeout=math.inf), ValueError, "async_stop_timeout"),
    (dict(async_stop_timeout=10**30), ValueError, "async_stop_timeout must be <="),
    (dict(async_retry_backoff_ms=math.inf), ValueError, "async_retry_backoff_ms"),
    (dict(async_queue_maxsize=2**64), ValueError, "async_queue_maxsize must be <="),
    (dict(batch_send_every_n=2**64), ValueError, "batch_send_every_n must be <="),
    (dict(async_retry_limit=2**64), ValueError, "async_retry_limit must be <="),
    (dict(codec_compresslevel=2**40), ValueError, "codec_compresslevel must be <="),
])
def test_bad_constructor_arguments_name_the_argument(kwargs, exc, word):
    kwargs.setdefault("client", NO_DAEMON)
    with pytest.raises(exc, match=word):
        client_shim.Producer(**kwargs)


class _Int(int):
    """An integer that is not an int (as numpy's are): taken, and sent as a plain int."""


def test_integer_and_real_arguments_of_other_types_are_taken_as_plain_numbers():
    p = client_shim.Producer(NO_DAEMON, codec=_Int(1), req_acks=_Int(-1), ack_timeout=_Int(500),
                             batch_send_every_n=_Int(5), batch_send_every_t=fractions.Fraction(1, 4),
                             async_queue_maxsize=_Int(10), async_stop_timeout=fractions.Fraction(5, 2))
    settings = p._settings()
    for name, value in [("codec", 1), ("acks", -1), ("ack_timeout_ms", 500), ("batch_n", 5),
                        ("batch_t", 0.25), ("queue_maxsize", 10), ("stop_timeout_s", 2.5)]:
        assert settings[name] == value and type(settings[name]) in (int, float), name
    schema.decode_request(schema.encode([schema.REGISTER, schema.SCHEMA_VERSION, 1, b"s" * 16, 0, settings]),
                          1 << 20)                    # what the daemon checks first


def test_stop_with_a_bad_timeout_raises_and_leaves_the_producer_usable():
    p = client_shim.Producer(NO_DAEMON, async_send=True)
    with pytest.raises(ValueError, match="timeout must be a finite"):
        p.stop(math.inf)
    assert not p.stopped
    p.stop(0)


@pytest.mark.parametrize("codec,level,word", [
    (client_shim.CODEC_GZIP, 10, "gzip must be 0..9"),
    (client_shim.CODEC_GZIP, -1, "gzip must be 0..9"),
    (client_shim.CODEC_LZ4, 17, "lz4 must be 0..16"),
    (client_shim.CODEC_ZSTD, 23, "zstd must be -131072..22"),
    (client_shim.CODEC_ZSTD, -131073, "zstd must be -131072..22"),
])
def test_a_compression_level_the_codec_lacks_is_refused_at_construction(codec, level, word):
    """The daemon refuses such a level at every send (UnknownError), so the shim says so at once."""
    with pytest.raises(ValueError, match=f"codec_compresslevel for {word}"):
        client_shim.Producer(NO_DAEMON, codec=codec, codec_compresslevel=level)


def test_a_compression_level_is_ignored_for_codecs_without_levels_and_sent_for_the_others():
    """kafka-python ignored the level with no compression and with snappy; the daemon
    refuses one, so it is not sent. Levels at the ends of a range are taken."""
    for codec in (client_shim.CODEC_NONE, client_shim.CODEC_SNAPPY, None):
        p = client_shim.Producer(NO_DAEMON, codec=codec, codec_compresslevel=5)
        assert p.codec_compresslevel == 5 and p._settings()["codec_level"] is None
    for codec, level in ((client_shim.CODEC_GZIP, 0), (client_shim.CODEC_GZIP, 9), (client_shim.CODEC_LZ4, 16),
                         (client_shim.CODEC_ZSTD, -131072), (client_shim.CODEC_ZSTD, 22)):
        assert client_shim.Producer(NO_DAEMON, codec=codec, codec_compresslevel=level)._settings()["codec_level"] \
            == level


def test_the_shims_compression_levels_are_the_daemons():
    codecs = pytest.importorskip("kafkad.protocol.codecs", reason="kafkad (the daemon's codecs) not present")
    from client_shim import producer

    assert {c: lo_hi for c, lo_hi in producer.CODEC_LEVELS.items()} == \
        {c: (lo, hi) for c, (lo, hi, _) in codecs.LEVELS.items()}
    assert set(client_shim.ALL_CODECS) == set(codecs.CODEC_NAMES)
    for codec in client_shim.ALL_CODECS:            # what the shim sends, the daemon's compressor takes
        for level in (None, *producer.CODEC_LEVELS.get(codec, (0, 5))):
            sent = client_shim.Producer(NO_DAEMON, codec=codec, codec_compresslevel=level)._settings()
            codecs.compressor(sent["codec"], sent["codec_level"])


def test_unsupported_codec_error_is_exported_everywhere():
    assert client_shim.UnsupportedCodecError is errors.UnsupportedCodecError
    assert issubclass(errors.UnsupportedCodecError, errors.KafkaError)


@pytest.mark.parametrize("call,exc,word", [
    (lambda p: p.send_messages("t", 0, "text"), TypeError, "bytes or None"),
    (lambda p: p.send_messages("t", 0, b"ok", 3), TypeError, "int"),
    (lambda p: p.send_messages("t", 0, None), TypeError, "both None"),
    (lambda p: p.send_messages("t", 0), TypeError, "at least one"),
    (lambda p: p.send_messages("t", "0", b"x"), TypeError, "partition"),
    (lambda p: p.send_messages("t", -1, b"x"), TypeError, "partition"),
    (lambda p: p.send_messages("bad topic", 0, b"x"), ValueError, "legal"),
    (lambda p: p.send_messages("", 0, b"x"), ValueError, "legal"),
    (lambda p: p.send_messages("..", 0, b"x"), ValueError, "not allowed"),
    (lambda p: p.send_messages("x" * 250, 0, b"x"), ValueError, "legal"),
    (lambda p: p.send_messages(7, 0, b"x"), TypeError, "str"),
    (lambda p: p.send_messages("t", 0, b"x" * (8 << 20)), errors.MessageSizeTooLargeError, "8388608"),
    (lambda p: p.send_messages("t", 0, *[b"x" * (1 << 20)] * 8), errors.MessageSizeTooLargeError, "per call"),
    (lambda p: p.send_messages("t", 0, *[b""] * (1 << 20)), errors.MessageSizeTooLargeError, "per message"),
])
def test_send_messages_validates_before_anything_leaves(call, exc, word):
    p = client_shim.Producer(NO_DAEMON, async_send=True)
    with pytest.raises(exc, match=word):
        call(p)
    assert p._session is None          # nothing was created, nothing queued


def test_bytes_subclasses_and_buffers_are_payloads_and_keys(monkeypatch):
    class Blob(bytes):
        pass

    sent = []
    p = client_shim.KeyedProducer(NO_DAEMON, async_send=True)
    monkeypatch.setattr(p, "_send_messages", lambda session, topic, partition, values, key=None:
                        sent.append((partition, key, values)) or [])
    monkeypatch.setattr(p, "_next_partition", lambda session, topic, key: murmur2(key) % 3)
    monkeypatch.setattr(p, "_get_session", lambda: None)
    for key in (b"k1", Blob(b"k1"), bytearray(b"k1"), memoryview(b"k1")):
        p.send_messages("t", key, Blob(b"v"), bytearray(b"w"))
    assert all(s == (murmur2(b"k1") % 3, b"k1", [b"v", b"w"]) for s in sent) and len(sent) == 4
    assert all(type(s[1]) is bytes and all(type(v) is bytes for v in s[2]) for s in sent)


def test_deprecation_warnings_point_at_the_callers_line():
    for cls in (client_shim.Producer, client_shim.SimpleProducer, client_shim.KeyedProducer):
        with pytest.warns(DeprecationWarning, match="batch_send") as caught:
            cls(NO_DAEMON, batch_send=True)
        assert caught[0].filename == __file__, cls     # so Python's default filters show it


def test_keyed_producer_validates_key():
    p = client_shim.KeyedProducer(NO_DAEMON, async_send=True)
    with pytest.raises(TypeError, match="key must be bytes"):
        p.send_messages("t", "text-key", b"v")
    with pytest.raises(TypeError, match="both None"):
        p.send_messages("t", None, None)
    with pytest.raises(TypeError, match="Partitioner subclass"):
        client_shim.KeyedProducer(NO_DAEMON, partitioner=dict)


def test_longest_legal_topic_name_passes_validation():
    from client_shim.schema import topic_problem

    assert topic_problem("a" * 249) is None
    assert topic_problem("A-z_0.9") is None
    assert topic_problem("a" * 250) is not None


def test_endpoint_resolution(monkeypatch):
    monkeypatch.delenv("KAFKAD_ENDPOINT", raising=False)
    assert client_shim.DaemonClient().endpoint == "ipc:///run/kafkad/kafkad.sock"
    monkeypatch.setenv("KAFKAD_ENDPOINT", "tcp://127.0.0.1:9999")
    assert client_shim.DaemonClient().endpoint == "tcp://127.0.0.1:9999"
    assert client_shim.DaemonClient("ipc:///x.sock").endpoint == "ipc:///x.sock"
    assert client_shim.Producer(None).client.endpoint == "tcp://127.0.0.1:9999"
    assert client_shim.Producer("ipc:///y.sock").client.endpoint == "ipc:///y.sock"
    c = client_shim.DaemonClient("ipc:///z.sock", timeout=2)
    assert client_shim.Producer(c).client is c
    with pytest.raises(ValueError, match="timeout"):
        client_shim.DaemonClient(timeout=0)


@pytest.mark.parametrize("endpoint,word", [
    ("ipc://", "needs a socket path"),
    ("ipc://@", "needs a name after '@'"),
    ("ipc:///" + "a" * 107, "108 bytes"),
    ("ipc://@" + "b" * 107, "108 bytes"),
    ("tcp://127.0.0.1:99999", "port must be 1..65535"),
    ("tcp://127.0.0.1:0", "port must be 1..65535"),
    ("tcp://127.0.0.1", "host:port"),
    ("tcp://:9100", "host:port"),
    ("tcp://*:9100", "host:port"),
    ("tcp://::1:9100", "host:port"),
    ("tcp://[::1:9100", "host:port"),
    ("inproc://kafkad", "ipc:// or tcp://"),
    ("udp://127.0.0.1:9100", "ipc:// or tcp://"),
    ("/run/kafkad/kafkad.sock", "ipc:// or tcp://"),
])
def test_an_endpoint_that_cannot_work_is_refused_at_construction(endpoint, word, monkeypatch):
    """ZeroMQ refuses these (or never connects): the shim's I/O thread used to die on them
    and the caller waited for its timeout. Now the constructor names the problem."""
    with pytest.raises(ValueError, match=r"endpoint.*" + re.escape(word)):
        client_shim.DaemonClient(endpoint)
    with pytest.raises(ValueError, match=re.escape(word)):
        client_shim.SimpleProducer(endpoint)
    monkeypatch.setenv("KAFKAD_ENDPOINT", endpoint)
    with pytest.raises(ValueError, match=r"KAFKAD_ENDPOINT.*" + re.escape(word)):
        client_shim.DaemonClient()


@pytest.mark.parametrize("endpoint", [
    "ipc:///run/kafkad/kafkad.sock", "ipc:///" + "a" * 106, "ipc://@kafkad", "ipc://@" + "b" * 106,
    "ipc://kafkad.sock", "tcp://127.0.0.1:9100", "tcp://[::1]:1", "tcp://localhost:65535",
    "tcp://kafkad.example:9100", "tcp://kafka_d:9100", "tcp://kafkad.example.:9100",
    "tcp://[fe80::1%eth0]:9100",
])
def test_endpoints_zeromq_can_connect_to_are_taken(endpoint):
    assert client_shim.DaemonClient(endpoint).endpoint == endpoint


def test_kafka_client_aliases_ignore_hosts_with_one_warning():
    code = (
        "import warnings, client_shim\n"
        "warnings.simplefilter('always')\n"
        "with warnings.catch_warnings(record=True) as w:\n"
        "    a = client_shim.KafkaClient('broker1:9092,broker2:9092')\n"
        "    b = client_shim.SimpleClient(['broker3:9092'], client_id='x')\n"
        "    c = client_shim.KafkaClient(hosts='b:1')\n"
        "print(len([x for x in w if 'ignored' in str(x.message)]), a.endpoint, isinstance(b, client_shim.DaemonClient))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                         env={"KAFKAD_ENDPOINT": "ipc:///e.sock", "PATH": "/usr/bin:/bin"})
    assert out.stdout.split() == ["1", "ipc:///e.sock", "True"], out.stderr
    assert client_shim.SimpleClient is client_shim.KafkaClient


def test_kafka_client_takes_every_legacy_argument_and_only_timeout_counts():
    """SimpleClient(hosts, client_id, timeout, correlation_id, metrics): kafka-python's
    positional order. The broker-side ones are ignored; timeout, when given, bounds the
    wait for the daemon, and without it the daemon client's default (not kafka-python's
    120 s broker socket timeout) holds."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        c = client_shim.SimpleClient(["b:9092"], "my-client", 30, 7, object())
        assert (type(c), c.timeout) == (client_shim.KafkaClient, 30.0)
        c = client_shim.KafkaClient("b:9092", client_id="x", timeout=2.5, correlation_id=1, metrics=None)
        assert c.timeout == 2.5
        assert client_shim.KafkaClient("b:9092").timeout == client_shim.DaemonClient().timeout == 5.0
        with pytest.raises(ValueError, match="timeout"):
            client_shim.KafkaClient("b:9092", None, 0)


def test_import_and_construction_create_nothing():
    code = (
        "import threading, sys, client_shim\n"
        "p = client_shim.SimpleProducer(async_send=True)\n"
        "k = client_shim.KeyedProducer(client_shim.KafkaClient('h:1'), async_send=True)\n"
        "import zmq\n"
        "print(threading.active_count(), zmq.Context._instance is None, 'kafkad' in sys.modules,\n"
        "      len(__import__('client_shim.link').link._links))\n"
    )
    out = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=30)
    assert out.stdout.split() == ["1", "True", "False", "0"], out.stderr


def test_produce_response_payload_fields():
    r = client_shim.ProduceResponsePayload("t", 1, 0, 42)
    assert (r.topic, r.partition, r.error, r.offset) == ("t", 1, 0, 42)


# --- errors ----------------------------------------------------------------------------


def test_error_classes_carry_kafka_python_names_and_errno():
    e = errors
    assert e.kafka_errors[3] is e.UnknownTopicOrPartitionError
    for name, errno_, retriable in [("UnknownTopicOrPartitionError", 3, True),
                                    ("LeaderNotAvailableError", 5, True),
                                    ("NotLeaderForPartitionError", 6, True),
                                    ("RequestTimedOutError", 7, True),
                                    ("MessageSizeTooLargeError", 10, False),
                                    ("TopicAuthorizationFailedError", 29, False)]:
        cls = getattr(e, name)
        assert issubclass(cls, e.BrokerResponseError) and issubclass(cls, e.KafkaError)
        assert (cls.errno, cls.retriable) == (errno_, retriable)
    assert issubclass(e.KafkadUnavailableError, e.KafkaUnavailableError)
    q = e.AsyncProducerQueueFull([b"a", b"b"], "bound reached")
    assert q.failed_msgs == [b"a", b"b"] and "2 message(s)" in str(q)
    assert e.FailedPayloadsError("p").payload == "p"
    assert "[Error 10] MessageSizeTooLargeError" in str(e.MessageSizeTooLargeError("t[0]"))
    assert e.for_code(9999).errno == 9999          # a code newer than the table still carries its number
    assert e.GroupCoordinatorNotAvailableError is e.CoordinatorNotAvailableError
    assert e.StaleLeaderEpochCodeError.errno == 13       # kafka-python 1.x's name for code 13


def test_every_daemon_error_code_has_a_shim_class_with_the_same_flags():
    protocol_errors = pytest.importorskip("kafkad.protocol.errors",
                                          reason="kafkad.protocol.errors (the daemon's table) not present")
    mismatched = []
    for code, info in protocol_errors.ERRORS.items():
        cls = errors.kafka_errors.get(code)
        if cls is None or cls.retriable != info.retriable or cls.invalid_metadata != info.invalid_metadata:
            mismatched.append((code, info.name, info.retriable, cls and cls.__name__,
                               cls and cls.retriable))
    assert not mismatched, mismatched
    assert len(protocol_errors.ERRORS) > 50


def test_shim_does_not_import_kafkad():
    out = subprocess.run([sys.executable, "-c", "import sys, client_shim, client_shim.errors, "
                          "client_shim.schema; print(any(m.startswith('kafkad') for m in sys.modules))"],
                         capture_output=True, text=True, timeout=30)
    assert out.stdout.strip() == "False", out.stderr


# --- partitioners -------------------------------------------------------------------------

# Values the Java client's Utils.murmur2 gives (Apache Kafka's own unit test inputs).
JAVA_MURMUR2 = [
    (b"21", -973932308),
    (b"foobar", -790332482),
    (b"a-little-bit-long-string", -985981536),
    (b"a-little-bit-longer-string", -1486304829),
    (b"lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8", -58897971),
    (b"abc", 479470107),
]


@pytest.mark.parametrize("data,expected", JAVA_MURMUR2)
def test_murmur2_matches_java(data, expected):
    assert murmur2(data) == expected


def test_hashed_partitioner_is_murmur2_and_independent_of_hash_seed():
    assert client_shim.HashedPartitioner is client_shim.Murmur2Partitioner
    parts = list(range(12))
    p = client_shim.HashedPartitioner(parts)
    for data, h in JAVA_MURMUR2:
        assert p.partition(data) == (h & 0x7FFFFFFF) % 12
    code = ("import client_shim\np = client_shim.HashedPartitioner(list(range(7)))\n"
            "print([p.partition(b'key-%d' % i) for i in range(50)])")
    outs = {subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=30,
                           env={"PYTHONHASHSEED": seed, "PATH": "/usr/bin:/bin"}).stdout
            for seed in ("1", "2", "3")}
    assert len(outs) == 1 and outs.pop().startswith("[")
    assert p.partition(b"x", [5, 6]) in (5, 6)          # the current list wins
    assert p.partition(None) in parts                  # no key: some partition


def test_round_robin_and_user_partitioners():
    rr = client_shim.RoundRobinPartitioner([0, 1, 2])
    assert [rr.partition(b"k") for _ in range(5)] == [0, 1, 2, 0, 1]

    class Last(client_shim.Partitioner):
        def partition(self, key, partitions=None):
            return (partitions or self.partitions)[-1]

    assert Last([3, 4]).partition(b"k") == 4
    with pytest.raises(ValueError, match="no partitions"):
        client_shim.RoundRobinPartitioner([]).partition(b"k")


def test_partitioners_behave_as_kafka_pythons_legacy_ones():
    # The base class can be built, as in kafka-python; only its partition() is missing.
    base = client_shim.Partitioner([0, 1])
    assert base.partitions == [0, 1]
    with pytest.raises(NotImplementedError):
        base.partition(b"k")

    class Incomplete(client_shim.Partitioner):
        pass

    with pytest.raises(NotImplementedError):
        Incomplete([0]).partition(b"k", [0])
    # An empty (or None) list at the call means the one given at construction.
    hashed = client_shim.Murmur2Partitioner([0, 1])
    assert hashed.partition(b"k", []) == hashed.partition(b"k", None) == hashed.partition(b"k", [0, 1])
    rr = client_shim.RoundRobinPartitioner([5, 6])
    assert [rr.partition(None, []) for _ in range(3)] == [5, 6, 5]
    with pytest.raises(ValueError, match="no partitions"):
        client_shim.Murmur2Partitioner([]).partition(b"k", [])


def test_keyed_send_is_a_deprecated_alias():
    p = client_shim.KeyedProducer(NO_DAEMON)
    seen = []
    p.send_messages = lambda topic, key, *msg: seen.append((topic, key, msg)) or []
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        p.send("t", b"k", b"v")
    assert seen == [("t", b"k", (b"v",))]
    assert any(issubclass(x.category, DeprecationWarning) for x in w)


def test_a_forgotten_outcome_is_reported_as_unknown_not_as_a_broker_error(caplog):
    import logging

    from client_shim import link, schema

    s = link._Session(link._Link("ipc:///nonexistent"), {}, maxsize=0, put_timeout=0, log_messages=True,
                      label="P")
    entry = (7, "t", 2, 0, None, b"maybe")
    with caplog.at_level(logging.ERROR, logger="client_shim"):
        link.report_failures(s, [(entry, 0, 1, schema.OUTCOME_FORGOTTEN)])
    (line,) = [r.getMessage() for r in caplog.records]
    assert "outcome unknown" in line and "t[2]" in line and "maybe" in line
    assert "BrokerResponseError" not in line


def test_a_failed_run_inside_a_multi_message_call_reports_exactly_its_messages(caplog):
    """FAILED names runs by (index, count) inside an entry: the report, the
    failure count and the settling must take that slice of the call's values,
    not the call's first messages nor another entry's."""
    import logging

    from client_shim import link, schema

    lk = link._Link("ipc:///nonexistent")
    s = link._Session(lk, {}, maxsize=0, put_timeout=0, log_messages=True, label="P")
    lk.sessions[s.session_id] = s
    s.send_async("t", 1, b"k", (b"m0", b"m1", b"m2", b"m3"))     # seqs 0-3
    s.send_async("t", 2, None, [b"other"])                      # seq 4
    with caplog.at_level(logging.ERROR, logger="client_shim"):
        lk._h_failed([schema.FAILED, s.session_id, [[0, [[1, 2, 10]]]]])
    (line,) = [r.getMessage() for r in caplog.records]
    assert "2 message(s)" in line and "t[1]" in line and "(first seq 1)" in line
    assert "messages: b'm1' (2 B, blake2b " in line and ", b'm2' (2 B, blake2b " in line
    assert "m0" not in line and "m3" not in line and "other" not in line
    assert s.failed_messages == 2
    assert list(s.pending) == [4] and s.unacked == 1


@pytest.mark.parametrize("contents", [True, False])
def test_a_failure_record_shows_every_message_bounded_as_the_daemon_does(caplog, contents):
    """The worker's record of undelivered messages names every one, as the daemon's
    log does (same rendering and hash, so the two can be matched), over lines that
    stay small whatever the messages' size: a 2 MiB message once made a 2 MiB line."""
    import logging

    from client_shim import link
    from kafkad.engine.describe import describe_all

    values = [b"B" * (2 << 20), None] + [b"m%d" % i for i in range(250)]
    assert link._shown_parts(values, contents) == describe_all(values, contents)
    lk = link._Link("ipc:///nonexistent")
    s = link._Session(lk, {}, maxsize=0, put_timeout=0, log_messages=contents, label="P")
    entry = (0, "t", 0, 0, None) + tuple(values)
    with caplog.at_level(logging.ERROR, logger="client_shim"):
        link.report_failures(s, [(entry, 0, len(values), 10)])
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == (13 if contents else 2) and all(len(line) < 4096 for line in lines)
    assert lines[-1].endswith(f"(line {len(lines)} of {len(lines)})")
    text = "\n".join(lines)
    assert all(link._digest(v) in text for v in values if v is not None)


def test_failures_of_calls_whose_partition_kafkad_was_to_pick_make_one_record(caplog):
    """Each such call has its own negative partition value: they are one group for the log."""
    import logging

    from client_shim import link

    s = link._Session(link._Link("ipc:///nonexistent"), {}, maxsize=0, put_timeout=0, log_messages=True,
                      label="P")
    entries = [(i, "t", -1 - i, 0, None, b"m%d" % i) for i in range(5)]
    with caplog.at_level(logging.ERROR, logger="client_shim"):
        link.report_failures(s, [(e, 0, 1, 7) for e in entries])
    (line,) = [r.getMessage() for r in caplog.records]
    assert "5 message(s)" in line and "t (partition left to kafkad)" in line and "m4" in line


def test_the_largest_call_fits_the_smallest_frame_a_daemon_may_take():
    """[ipc] max_frame_bytes may not be set below what one call plus a frame's share of others needs."""
    from kafkad.config import MIN_FRAME_BYTES

    entry = (0, "t", 0, 1_700_000_000_000, None)
    worst = [entry + (b"x" * (schema.TARGET_FRAME_BYTES - 100),),                     # just under the cut
             (1, "t", 0, 1_700_000_000_000, b"k" * 200) + (b"",) * ((schema.MAX_CALL_BYTES - 1) // 210)]
    frame, n = _groups_frame(b"s" * 16, collections.deque(worst))
    assert n == 2 and len(frame) < MIN_FRAME_BYTES


def test_error_messages_are_kafka_pythons():
    kafka_errors = pytest.importorskip("kafka.errors", reason="kafka-python (a test dependency) is not installed")
    theirs = {cls.errno: cls for cls in vars(kafka_errors).values()
              if isinstance(cls, type) and issubclass(cls, kafka_errors.BrokerResponseError)
              and isinstance(getattr(cls, "errno", None), int) and cls.errno >= 0}
    common = sorted(set(theirs) & set(errors.kafka_errors))
    assert len(common) > 100
    for code in common:
        assert errors.kafka_errors[code].message == theirs[code].message, code
