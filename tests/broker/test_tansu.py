"""BrokerProducer against a real Tansu broker, read back with librdkafka (CRC checks on)."""

from __future__ import annotations

import asyncio
import random

import pytest

from kafkad.config import QueueConfig
from kafkad.engine.types import QueueFull
from kafkad.engine.engine import API_METADATA
from tests.support.readback import read_all_confluent

from .helpers import check_balanced, check_read_back, kafka_config, run_producer, settings, sub, submit

pytestmark = pytest.mark.broker


@pytest.mark.parametrize("codec", [0, 1, 2, 3, 4], ids=["none", "gzip", "snappy", "lz4", "zstd"])
def test_every_codec_with_acks_0_1_all(tansu, topic, codec):
    rnd = random.Random(codec)
    per_acks = {0: settings(acks=0, codec=codec), 1: settings(acks=1, codec=codec),
                -1: settings(acks=-1, codec=codec, codec_level=None)}

    async def script(producer, run):
        n = 0
        for rnd_i in range(60):
            for acks, s in per_acks.items():
                p = rnd.randrange(3)
                values = [f"{codec}/{acks}/{n + j}/".encode() * rnd.randint(1, 20)
                          for j in range(rnd.randint(1, 8))]
                n += len(values)
                submit(producer, run, sub(topic, p, values, s, session=b"acks%d" % acks,
                                          token=(acks, rnd_i)))
            if rnd_i % 10 == 0:
                await asyncio.sleep(0)

    run = asyncio.run(run_producer(kafka_config(tansu.bootstrap), script))
    assert run.left == [] and run.errors() == {}
    check_balanced(run.stats)
    total = sum(len(s.values) for s in run.subs.values())
    assert run.stats["delivered"] == total
    got = read_all_confluent(tansu.bootstrap, topic, 3, expected=total)
    check_read_back(run, got)
    acks0 = [o for o in run.outcomes if o.token[0] == 0]
    assert acks0 and all(o.base_offset == -1 for o in acks0)


def test_batches_of_many_sizes_split_at_the_caps(tansu, topic):
    rnd = random.Random(5)
    kafka = kafka_config(tansu.bootstrap, batch_max_bytes=16_384, request_max_bytes=40_000)

    async def script(producer, run):
        i = 0
        for size in (0, 1, 10, 100, 1000, 4000, 12_000):
            for count in (1, 3, 17, 120):
                values = [rnd.randbytes(size) for _ in range(count)]
                keys = [None if j % 2 else f"k{j}".encode() for j in range(count)]
                submit(producer, run, sub(topic, i % 3, values, token=i, keys=keys))
                i += 1

    run = asyncio.run(run_producer(kafka, script))
    assert run.left == [] and run.errors() == {}
    total = sum(len(s.values) for s in run.subs.values())
    got = read_all_confluent(tansu.bootstrap, topic, 3, expected=total)
    check_read_back(run, got)
    check_balanced(run.stats)
    # a submission bigger than a batch came back in several delivered parts
    assert any(len(outs) > 1 for outs in run.by_token().values())


def test_sync_and_held_async_sessions_together(tansu, topic):
    held = settings(async_send=True, batch_n=25, batch_t=0.2)

    async def script(producer, run):
        for i in range(200):
            submit(producer, run, sub(topic, i % 3, [f"a{i}".encode()], held,
                                      session=b"async", token=("a", i)))
            if i % 4 == 0:
                submit(producer, run, sub(topic, i % 3, [f"s{i}".encode()],
                                          session=b"sync%d" % (i % 5), token=("s", i)))
            if i % 50 == 0:
                await asyncio.sleep(0.01)

    run = asyncio.run(run_producer(kafka_config(tansu.bootstrap, linger_ms=5), script))
    assert run.left == [] and run.errors() == {}
    got = read_all_confluent(tansu.bootstrap, topic, 3, expected=250)
    check_read_back(run, got)
    # the async session's messages left in groups: far fewer requests than messages
    assert run.stats["requests"] < 150


def test_fetch_partitions_and_partitions_for(tansu, topic):
    async def script(producer, run):
        assert producer.partitions_for(topic) is None
        assert await producer.fetch_partitions(topic, 10) == (0, [0, 1, 2])
        assert producer.partitions_for(topic) == [0, 1, 2]

    asyncio.run(run_producer(kafka_config(tansu.bootstrap), script))


def test_unknown_topic_fails_exactly_its_records(tansu, topic):
    kafka = kafka_config(tansu.bootstrap, allow_auto_create_topics=False,
                         unknown_topic_wait_ms=300)

    async def script(producer, run):
        assert await producer.fetch_partitions(topic + "-missing", 5) == (3, [])
        submit(producer, run, sub(topic + "-missing", 0, [b"x", b"y"], token="missing"))
        submit(producer, run, sub(topic, 1, [b"fine"], token="fine"))
        await producer.drain(asyncio.get_running_loop().time() + 10)

    run = asyncio.run(run_producer(kafka, script))
    assert [(o.error, o.failed) for o in run.by_token()["missing"]] == [(3, 2)]
    assert run.by_token()["fine"][0].error == 0
    check_balanced(run.stats)


def test_a_topic_asked_for_while_the_first_metadata_request_is_out_gets_its_error(tansu, topic):
    # The daemon's race: a client asks for a topic's partitions just as the
    # producer's first Metadata request (naming no topic) is on the wire.
    kafka = kafka_config(tansu.bootstrap, allow_auto_create_topics=False,
                         unknown_topic_wait_ms=200)

    def metadata_out(producer) -> bool:
        return any(r.api_key == API_METADATA
                   for c in producer.engine.conns.values() for r in c.inflight)

    async def script(producer, run):
        # One loop turn at a time: the answer is read in a later turn than the
        # one that sent the request, so this sees the request on the wire.
        while not metadata_out(producer):
            assert producer.engine.metadata.updated_at is None, "missed the first request"
            await asyncio.sleep(0)
        assert await producer.fetch_partitions(topic + "-missing", 5) == (3, [])

    asyncio.run(run_producer(kafka, script))


def test_queue_full_refuses_and_drain_returns_what_cannot_go(topic):
    # Nothing listens here: everything stays queued, so the caps bite and drain gives back all.
    from tests.support.net import free_port

    kafka = kafka_config(f"127.0.0.1:{free_port()}", reconnect_backoff_ms=20)

    async def script(producer, run):
        for i in range(10):
            submit(producer, run, sub(topic, 0, [b"x" * 10], token=i))
        with pytest.raises(QueueFull):
            producer.submit(sub(topic, 0, [b"y"], token="refused"))
        await asyncio.sleep(0.1)

    run = asyncio.run(run_producer(kafka, script, queue=QueueConfig(max_messages=10),
                                   drain_s=0.2))
    assert sorted(s.token for s in run.left) == list(range(10))
    assert run.stats["dropped"] == 10 and run.outcomes == []
    check_balanced(run.stats)


def test_reload_applies_live_settings_and_names_those_needing_a_restart(tansu, topic):
    from dataclasses import replace

    async def script(producer, run):
        kafka = replace(producer.kafka, linger_ms=0.0, client_id="other")
        assert producer.reload(kafka, QueueConfig(max_messages=2)) == ["kafka.client_id"]
        submit(producer, run, sub(topic, 0, [b"a", b"b"], token="fits"))
        with pytest.raises(QueueFull):
            producer.submit(sub(topic, 0, [b"c"], token="over"))
        await producer.drain(asyncio.get_running_loop().time() + 10)

    run = asyncio.run(run_producer(kafka_config(tansu.bootstrap), script))
    assert run.by_token()["fits"][0].error == 0
    assert run.stats["accepted"] == 2


def test_records_queue_while_no_broker_listens_and_go_once_one_does(topic):
    # A broker that is not there yet: connections are refused, records wait, then go.
    from tests.support.net import free_port
    from tests.support.readback import read_all_confluent
    from tests.support.tansu import Tansu

    port = free_port()
    late = Tansu(port=port)
    kafka = kafka_config(f"127.0.0.1:{port}", reconnect_backoff_ms=20,
                         reconnect_backoff_max_ms=100, allow_auto_create_topics=False,
                         unknown_topic_wait_ms=10_000)

    async def script(producer, run):
        for i in range(6):
            submit(producer, run, sub("late", i % 3, [f"w{i}".encode()], token=i))
        await asyncio.sleep(0.3)   # several refused connection attempts
        assert run.outcomes == [] and producer.stats()["queued"] == 6
        await asyncio.get_running_loop().run_in_executor(None, late.start)
        await asyncio.get_running_loop().run_in_executor(None, late.create_topic, "late", 3)

    try:
        run = asyncio.run(run_producer(kafka, script))
        assert run.left == [] and run.errors() == {}
        got = read_all_confluent(late.bootstrap, "late", 3, expected=6)
        check_read_back(run, got)
    finally:
        late.stop()


def test_a_tansu_whose_port_was_taken_starts_again_on_another(monkeypatch):
    """free_port's answer can be taken before the broker binds it: the broker exits,
    and Tansu.start tries a new port; a port the caller chose is not changed."""
    import socket

    import tests.support.tansu as tansu_mod
    from tests.support.net import free_port

    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    try:
        with pytest.raises(tansu_mod._Exited):
            tansu_mod.Tansu(port=taken).start()
        answers = iter([taken])
        monkeypatch.setattr(tansu_mod, "free_port", lambda: next(answers, None) or free_port())
        broker = tansu_mod.Tansu().start()
        try:
            assert broker.port != taken and broker.proc.poll() is None
        finally:
            broker.stop()
    finally:
        squatter.close()
