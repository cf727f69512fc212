"""The shim's side of "kafkad picks the partition" against a real IpcServer (no broker).

The producer double plays a cluster that cannot be reached ("down": the
daemon answers METADATA with error 8 and `pick`), that says the topic is gone
("gone": error 3, a lasting error, no `pick`), or that is up ("up").
docs/ipc-schema.md "Partitions the daemon picks".
"""

from __future__ import annotations

import time

import pytest

import client_shim
from client_shim import errors
from client_shim import link as shim_link
from client_shim.partitioner import Partitioner, murmur2
from tests.ipc.fakes import FakeProducer, ServerThread, short_tmp_endpoint


class _Cluster(FakeProducer):
    state = "down"

    def partitions_for(self, topic):
        return list(self.partitions) if self.state == "up" else None

    async def fetch_partitions(self, topic, timeout):
        return {"up": (0, list(self.partitions)), "down": (8, []), "gone": (3, [])}[self.state]

    def topic_failed(self, topic):
        return self.state == "gone"


class _First(Partitioner):
    def partition(self, key, partitions=None):
        return self._current(partitions)[0]


@pytest.fixture
def cluster(monkeypatch):
    monkeypatch.setattr(shim_link, "PICK_RECHECK_S", 0.05)
    st = ServerThread(producer=_Cluster()).start()
    yield st
    st.stop()


def _wait_for(predicate, what, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def parts_sent(st, n=None):
    subs = st.producer.submissions
    return [s.partition for s in (subs if n is None else subs[-n:])]


def test_with_no_broker_sends_leave_the_partition_to_kafkad(cluster):
    c = client_shim.DaemonClient(cluster.endpoint)
    simple = client_shim.SimpleProducer(c, random_start=False)
    for i in range(4):
        assert simple.send_messages("t", b"s%d" % i)[0].error == 0
    assert parts_sent(cluster) == [-1, -2, -3, -4]          # the cycle's count, from 0
    keyed = client_shim.KeyedProducer(c)
    keyed.send_messages("t", b"user-7", b"k")
    assert parts_sent(cluster, 1) == [-1 - (murmur2(b"user-7") & 0x7FFFFFFF)]
    robin = client_shim.KeyedProducer(c, partitioner=client_shim.RoundRobinPartitioner)
    robin.send_messages("t", b"any", b"r")
    robin.send_messages("t", b"any", b"r")
    assert parts_sent(cluster, 2) == [-1, -2]
    own = client_shim.KeyedProducer(c, partitioner=_First)
    with pytest.raises(errors.BrokerNotAvailableError):
        own.send_messages("t", b"k", b"never")
    with pytest.raises(errors.BrokerNotAvailableError):   # a plain question still gets the error
        c.partitions_for("t")


def test_once_kafkad_has_the_list_the_next_sends_name_partitions_again(cluster):
    c = client_shim.DaemonClient(cluster.endpoint)
    p = client_shim.SimpleProducer(c, random_start=False, async_send=True)
    p.send_messages("t", b"early")
    cluster.producer.state = "up"
    link = c._link
    _wait_for(lambda: (p.send_messages("t", b"more") is not None and link.partition_cache.get("t")),
              "the background ask to bring the list")
    n = len(cluster.producer.submissions)
    for _ in range(3):
        p.send_messages("t", b"named")
    p.stop(5)
    assert sorted(s.partition for s in cluster.producer.submissions[n:n + 3]) == [0, 1, 2]
    assert not link._picking


def test_a_lasting_error_ends_picking_and_the_next_send_raises(cluster):
    c = client_shim.DaemonClient(cluster.endpoint)
    p = client_shim.SimpleProducer(c, async_send=True)
    p.send_messages("t", b"early")
    link = c._link
    assert "t" in link._picking
    cluster.producer.state = "gone"
    # sends go on (kafkad picks) until the background ask's answer, without pick, ends
    # that; the send after it asks, waits, and raises what kafkad says
    deadline = time.monotonic() + 5
    with pytest.raises(errors.UnknownTopicOrPartitionError):
        while time.monotonic() < deadline:
            p.send_messages("t", b"more")
            time.sleep(0.01)
    assert "t" not in link._picking
    p.stop(5)


def test_a_new_connection_asks_the_new_daemon_again():
    endpoint = short_tmp_endpoint()
    first = ServerThread(endpoint=endpoint, producer=_Cluster()).start()
    c = client_shim.DaemonClient(endpoint)
    p = client_shim.SimpleProducer(c, random_start=False, async_send=True)
    p.send_messages("t", b"x")
    link = c._link
    assert "t" in link._picking
    first.producer.wait_messages(1)       # "x" reached the first daemon, the one that picks
    first.stop()
    up = _Cluster()
    up.state = "up"
    with ServerThread(endpoint=endpoint, producer=up) as second:
        _wait_for(lambda: link.stats["connects"] >= 2 and not link._picking, "the reconnect")
        p.send_messages("t", b"y")            # asks the new daemon, which has the list
        # "x" comes again too when its answer was lost with the first daemon
        _wait_for(lambda: any(list(s.values) == [b"y"] for s in second.producer.submissions), "'y'")
        assert [s.partition for s in second.producer.submissions if list(s.values) == [b"y"]] == [0]
        p.stop(5)
