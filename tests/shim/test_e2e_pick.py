"""End to end: workers that start while no broker answers still queue, and kafkad picks.

A `SimpleProducer` or `KeyedProducer` needs its topic's partition list. When a
worker starts while the cluster is unreachable nobody has that list, so
kafkad answers METADATA at once with "no list yet, I will pick", the shim
sends each call with a negative partition, and the daemon picks, once it
knows the list, the partition the shim's partitioner would have picked.
Bootstrap goes through a fault proxy that refuses every connection until the
test heals it; what landed is read back with confluent-kafka.
"""

from __future__ import annotations

import threading
import time

import pytest

import client_shim
from client_shim import errors
from client_shim import link as shim_link
from client_shim.partitioner import Partitioner, RoundRobinPartitioner, murmur2
from tests.support.daemon import KafkadProcess
from tests.support.faultproxy import FaultProxy
from tests.support.readback import read_all_confluent

pytestmark = pytest.mark.broker

# A METADATA answer that waited for this would not be the fast path under test.
METADATA_TIMEOUT_S = 30.0


class FirstPartition(Partitioner):
    """An application's own partitioner: kafkad cannot make its choice for it."""

    def partition(self, key, partitions=None):
        return self._current(partitions)[0]


@pytest.fixture(params=[False, True], ids=["memory", "spool"])
def cold_daemon(request, tansu):
    with FaultProxy("127.0.0.1", int(tansu.bootstrap.rsplit(":", 1)[1])) as proxy:
        proxy.refuse()
        with KafkadProcess(proxy.address, request_timeout_ms=3000, drain_timeout_s=5, spool=request.param,
                           extra={"kafka": {"reconnect_backoff_max_ms": 200},
                                  "ipc": {"metadata_timeout_s": METADATA_TIMEOUT_S}}) as d:
            d.start()
            yield proxy, d


def test_producers_started_with_no_broker_queue_and_kafkad_picks_their_partitions(cold_daemon, tansu, topic):
    proxy, d = cold_daemon
    keyed = client_shim.KeyedProducer(d.endpoint, async_send=True, batch_send_every_t=0.01)
    started = time.monotonic()
    keyed.send_messages(topic, b"user-0", b"k-user-0-0")
    first_call = time.monotonic() - started
    assert first_call < METADATA_TIMEOUT_S / 3, first_call     # answered at once, not at the timeout
    keys = [b"user-%d" % i for i in range(12)]
    for k in keys:
        for j in range(1 if k == b"user-0" else 0, 3):
            keyed.send_messages(topic, k, b"k-%s-%d" % (k, j))
    simple = client_shim.SimpleProducer(d.endpoint, async_send=True, random_start=False,
                                        batch_send_every_t=0.01)
    for i in range(9):
        simple.send_messages(topic, b"s-%d" % i)
    robin = client_shim.KeyedProducer(d.endpoint, async_send=True, partitioner=RoundRobinPartitioner,
                                      batch_send_every_t=0.01)
    for i in range(6):
        robin.send_messages(topic, b"any", b"r-%d" % i)
    # A sync send waits, like any sync send, until the broker answers.
    results = []
    sync = threading.Thread(target=lambda: results.extend(
        client_shim.SimpleProducer(d.endpoint).send_messages(topic, b"sync-0")), daemon=True)
    sync.start()
    own = client_shim.KeyedProducer(d.endpoint, partitioner=FirstPartition)
    with pytest.raises(errors.KafkaError) as refused:
        own.send_messages(topic, b"k", b"never sent")
    assert refused.value.errno == 8                                # BrokerNotAvailableError

    total = len(keys) * 3 + 9 + 6 + 1
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and d.stats()["unplaced"] < total:
        time.sleep(0.1)
    stats = d.stats()
    assert stats["unplaced"] == total and stats["delivered"] == 0, stats

    proxy.heal()
    sync.join(30)
    assert not sync.is_alive()
    for p in (keyed, simple, robin):
        p.stop(20)
    got = read_all_confluent(tansu.bootstrap, topic, 3, total)
    where = {v: (p, k) for p, recs in got.items() for k, v, _ in recs}
    assert len(where) == total == sum(map(len, got.values()))    # each once
    for k in keys:
        parts = {where[b"k-%s-%d" % (k, j)][0] for j in range(3)}
        assert parts == {(murmur2(k) & 0x7FFFFFFF) % 3}, (k, parts)
    # the cycle as the shim would have run it: from partition 0 (random_start=False)
    assert [where[b"s-%d" % i][0] for i in range(9)] == [i % 3 for i in range(9)]
    assert [where[b"r-%d" % i][0] for i in range(6)] == [i % 3 for i in range(6)]
    # per partition, each producer's messages in the order sent
    for p, recs in got.items():
        mine = [v for _, v, _ in recs if v.startswith(b"s-")]
        assert mine == sorted(mine, key=lambda v: int(v[2:]))
    (r,) = results
    assert r.error == 0 and r.partition == where[b"sync-0"][0]
    after = d.stats()
    assert after["unplaced"] == 0 and after["delivered"] == total and after["unaccounted"] == 0
    # Sends go on asking for the list now and then (PICK_RECHECK_S) without waiting:
    # once kafkad has it, the process caches it and names partitions itself again.
    link = shim_link.get_link(d.endpoint)
    late = client_shim.SimpleProducer(d.endpoint, async_send=True, batch_send_every_t=0.01)
    deadline = time.monotonic() + 3 * shim_link.PICK_RECHECK_S + 5
    while link.partition_cache.get(topic) != [0, 1, 2] and time.monotonic() < deadline:
        late.send_messages(topic, b"late")
        time.sleep(0.1)
    late.stop(10)
    assert link.partition_cache.get(topic) == [0, 1, 2]


def test_a_topic_that_does_not_exist_still_fails_the_call(tansu):
    """With brokers up, an unknown topic is a lasting error: no pick, the call raises."""
    with KafkadProcess(tansu.bootstrap, extra={"kafka": {"allow_auto_create_topics": False,
                                                         "unknown_topic_wait_ms": 200}}) as d:
        d.start()
        p = client_shim.SimpleProducer(d.endpoint, async_send=True)
        with pytest.raises(errors.UnknownTopicOrPartitionError):
            p.send_messages("no-such-topic-%d" % time.monotonic_ns(), b"x")
        p.stop(1)
