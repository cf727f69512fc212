"""kafkad's bytes against independent implementations: Tansu, the librdkafka mock cluster,
and consumers (kafka-python 3, confluent-kafka) reading our batches back with CRC checks on.

Every version that both kafkad and the peer offer is exercised, so a new
version added to a schema is tested against real peers automatically.
"""

from __future__ import annotations

import os
import time

import pytest

from kafkad.protocol import (
    API_VERSIONS_SUPPORTED,
    ApiVersionsRequest,
    InitProducerIdRequest,
    MetadataRequest,
    ProduceRequest,
    ProtocolError,
    encode_record_batch,
)

from .wire import WireClient

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

NOW = 1_700_000_000_000


def _overlap(broker: dict[int, tuple[int, int]], api_key: int) -> range:
    lo, hi = API_VERSIONS_SUPPORTED[api_key]
    blo, bhi = broker[api_key]
    return range(max(lo, blo), min(hi, bhi) + 1)


def _metadata(client: WireClient, version: int, topic: str):
    return client.call(MetadataRequest(topics=(MetadataRequest.MetadataRequestTopic(name=topic),)),
                       version)


def _produce(client: WireClient, version: int, topic: str, partition: int, batch: bytes):
    P = ProduceRequest
    req = P(acks=-1, timeout_ms=10_000, topic_data=(P.TopicProduceData(name=topic, partition_data=(
        P.PartitionProduceData(index=partition, records=batch),)),))
    resp = client.call(req, version)
    (topic_resp,) = resp.responses
    (part,) = topic_resp.partition_responses
    assert (topic_resp.name, part.index) == (topic, partition)
    return part


# --------------------------------------------------------------------------
# Tansu


@pytest.mark.broker
def test_tansu_accepts_every_shared_version(tansu, topic):
    with WireClient(tansu.bootstrap) as c:
        ranges = c.api_versions()
        tried = {}
        for v in _overlap(ranges, 18):
            assert c.call(ApiVersionsRequest(), v).error_code == 0
        for v in _overlap(ranges, 3):
            resp = _metadata(c, v, topic)
            (t,) = resp.topics
            assert (t.name, t.error_code, len(t.partitions)) == (topic, 0, 3)
            assert resp.brokers and resp.brokers[0].port == int(tansu.bootstrap.rsplit(":", 1)[1])
        offsets = []
        versions = list(_overlap(ranges, 0))
        for v in versions:
            batch = encode_record_batch([b"k"], [b"produce v%d" % v], [NOW])
            part = _produce(c, v, topic, 1, batch)
            assert part.error_code == 0
            offsets.append(part.base_offset)
        assert offsets == list(range(len(versions)))
        for v in _overlap(ranges, 22):
            resp = c.call(InitProducerIdRequest(transaction_timeout_ms=60_000), v)
            # Tansu answers versions 0-2 with UNKNOWN_SERVER_ERROR (checked); 3+ work.
            assert resp.error_code == 0 or (v < 3 and resp.error_code == -1), (v, resp)
            if resp.error_code == 0:
                assert resp.producer_id >= 0 and resp.producer_epoch >= 0
        tried = {k: list(_overlap(ranges, k)) for k in (0, 3, 18, 22)}
    assert tried[0][-1] == 11 and tried[3][-1] == 12 and tried[18][-1] == 3


@pytest.mark.broker
def test_tansu_reads_lengths_of_two_bytes(tansu):
    """A 200-byte topic name and batches over 127 bytes: in flexible versions their
    compact lengths take two bytes, which the short names and batches above never need."""
    topic = f"long-{os.getpid()}-".ljust(200, "x")
    tansu.create_topic(topic, partitions=3)
    with WireClient(tansu.bootstrap) as c:
        ranges = c.api_versions()
        for v in _overlap(ranges, 3):
            (t,) = _metadata(c, v, topic).topics
            assert (t.name, t.error_code, len(t.partitions)) == (topic, 0, 3), v
        versions = list(_overlap(ranges, 0))
        for v in versions:
            batch = encode_record_batch([b"k" * 130], [b"v" * 200], [NOW])
            part = _produce(c, v, topic, 2, batch)
            assert part.error_code == 0, v
        assert part.base_offset == len(versions) - 1


@pytest.mark.broker
def test_idempotent_batches_are_accepted_by_tansu(tansu, topic):
    with WireClient(tansu.bootstrap) as c:
        ranges = c.api_versions()
        init = c.call(InitProducerIdRequest(transaction_timeout_ms=60_000),
                      max(_overlap(ranges, 22)))
        assert init.error_code == 0
        version = max(_overlap(ranges, 0))
        for seq in (0, 2):
            batch = encode_record_batch([None, None], [b"a", b"b"], [NOW, NOW + 1],
                                        producer_id=init.producer_id,
                                        producer_epoch=init.producer_epoch, base_sequence=seq)
            assert _produce(c, version, topic, 0, batch).error_code == 0


CODECS = {0: "none", 1: "gzip", 2: "snappy", 3: "lz4", 4: "zstd"}


def _read_kafka_python(bootstrap: str, topic: str, partitions: int, expected: int,
                       timeout: float = 20.0) -> dict[int, list]:
    """Every record of `topic`, read by kafka-python 3 with check_crcs on.

    tests/support/readback.py's reader passes `api_version_auto_timeout_ms`,
    which kafka-python 3.0 no longer accepts; this is the same reader without it.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                             enable_auto_commit=False, check_crcs=True, consumer_timeout_ms=1000)
    try:
        consumer.assign([TopicPartition(topic, p) for p in range(partitions)])
        out: dict[int, list] = {p: [] for p in range(partitions)}
        count = 0
        deadline = time.monotonic() + timeout
        while count < expected and time.monotonic() < deadline:
            for rec in consumer:
                out[rec.partition].append(rec)
                count += 1
                if count >= expected:
                    break
        return out
    finally:
        consumer.close()


@pytest.mark.broker
def test_consumers_read_back_every_codec(tansu):
    """One partition per codec; kafka-python and librdkafka both read it all back, CRCs checked."""
    from tests.support.readback import read_all_confluent

    topic = f"codecs-{time.monotonic_ns()}"
    tansu.create_topic(topic, partitions=len(CODECS))
    sent: dict[int, list[tuple[bytes | None, bytes | None, tuple]]] = {}
    with WireClient(tansu.bootstrap) as c:
        version = max(_overlap(c.api_versions(), 0))
        for codec in CODECS:
            n = 50
            keys = [None if i % 7 == 0 else b"key-%d" % i for i in range(n)]
            values = [(b"%s value %d " % (CODECS[codec].encode(), i)) * (i % 5 + 1) for i in range(n)]
            values[3] = None
            headers = [[("h", b"%d" % i), ("empty", None)] if i % 3 == 0 else [] for i in range(n)]
            stamps = [NOW + (i * 37) % 1000 for i in range(n)]
            batch = encode_record_batch(keys, values, stamps, codec=codec, headers=headers)
            assert _produce(c, version, topic, codec, batch).error_code == 0
            sent[codec] = [(k, v, tuple(h)) for k, v, h in zip(keys, values, headers)]
    total = sum(len(v) for v in sent.values())

    by_kp = _read_kafka_python(tansu.bootstrap, topic, len(CODECS), expected=total)
    for codec, want in sent.items():
        got = [(r.key, r.value, tuple((hk, hv) for hk, hv in r.headers)) for r in by_kp[codec]]
        assert got == want, f"kafka-python read {CODECS[codec]} differently"

    by_rd = read_all_confluent(tansu.bootstrap, topic, len(CODECS), expected=total)
    for codec, want in sent.items():
        assert [(k, v) for k, v, _ in by_rd[codec]] == [(k, v) for k, v, _ in want], CODECS[codec]
        assert [off for _, _, off in by_rd[codec]] == list(range(len(want)))


# --------------------------------------------------------------------------
# librdkafka mock cluster


def _leader_client(bootstrap_client: WireClient, version: int, topic: str, partition: int):
    meta = _metadata(bootstrap_client, version, topic)
    part = next(p for p in meta.topics[0].partitions if p.partition_index == partition)
    broker = next(b for b in meta.brokers if b.node_id == part.leader_id)
    return WireClient(f"{broker.host}:{broker.port}", strict=False)


@pytest.mark.mockcluster
def test_mock_cluster_accepts_every_shared_version(mock_cluster):
    topic = "interop"
    mock_cluster.create_topic(topic, partitions=3)
    with WireClient(mock_cluster.bootstrap, strict=False) as c:
        # The mock answers ApiVersions v3 with error 35 and a body we cannot
        # read: negotiation must still land on its highest version.
        ranges = c.api_versions()
        assert c.call(ApiVersionsRequest(), 3).error_code == 35
        for v in _overlap(ranges, 18):
            assert c.call(ApiVersionsRequest(), v).error_code == 0
        for v in _overlap(ranges, 3):
            (t,) = _metadata(c, v, topic).topics
            assert (t.name, t.error_code, len(t.partitions)) == (topic, 0, 3)
        c.strict = True
        # The mock pads Metadata v9+ answers with one byte after the body (checked):
        with pytest.raises(ProtocolError, match="1 bytes left over"):
            _metadata(c, 9, topic)
        c.strict = False
        for v in _overlap(ranges, 22):
            resp = c.call(InitProducerIdRequest(transaction_timeout_ms=60_000), v)
            assert resp.error_code == 0 and resp.producer_id >= 0, (v, resp)
        meta_version = max(_overlap(ranges, 3))
        with _leader_client(c, meta_version, topic, 2) as leader:
            offsets = []
            versions = list(_overlap(ranges, 0))
            for v in versions:
                batch = encode_record_batch([None], [b"v%d" % v], [NOW], codec=v % 5)
                if v == 5:
                    # The mock leaves log_start_offset (a v5+ field) out of its
                    # v5 answer only (checked): the request was taken, the
                    # answer is short.
                    with pytest.raises(ProtocolError, match="log_start_offset: truncated"):
                        _produce(leader, v, topic, 2, batch)
                    continue
                part = _produce(leader, v, topic, 2, batch)
                assert part.error_code == 0, (v, part)
                offsets.append(part.base_offset)
            assert offsets == sorted(offsets) and len(set(offsets)) == len(versions) - 1
    assert versions[0] == 3 and len(versions) >= 7
