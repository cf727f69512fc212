"""BrokerProducer against the librdkafka mock cluster (3 brokers) with faults injected.

The mock cluster does not deduplicate idempotent batches: a batch resent after
a lost connection or a request timeout may be stored twice there. Those tests
check "nothing missing, order of first appearance kept"; tests whose faults
are error answers (nothing written) check exactly-once.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from kafkad.broker import BrokerProducer
from kafkad.config import QueueConfig

from .helpers import (
    check_balanced,
    check_read_back,
    kafka_config,
    read_everything,
    run_producer,
    settings,
    sub,
    submit,
    wait_for,
)

pytestmark = pytest.mark.mockcluster

FAST = dict(retry_backoff_max_ms=200, reconnect_backoff_ms=20, reconnect_backoff_max_ms=200)
RETRY_FAST = settings(retry_backoff_ms=20)


@pytest.fixture
def mc_topic(mock_cluster):
    mock_cluster.create_topic("mt", 3)
    for p in range(3):
        mock_cluster.set_leader("mt", p, p + 1)
    return "mt"


def stream(producer, run, topic: str, start: int, count: int, s=RETRY_FAST, per: int = 5):
    for i in range(start, start + count):
        values = [f"m{i}-{j}".encode() for j in range(per)]
        submit(producer, run, sub(topic, i % 3, values, s, token=i))


def read_back(mock_cluster, topic, run, exact=True, in_order=True):
    got = read_everything(mock_cluster.bootstrap, topic, 3)
    check_read_back(run, got, exact=exact, sessions_in_order=in_order)
    return got


def test_leader_moves_during_a_steady_stream(mock_cluster, mc_topic):
    async def script(producer, run):
        assert (await producer.fetch_partitions(mc_topic, 10))[0] == 0
        for step in range(12):
            stream(producer, run, mc_topic, step * 30, 30)
            await asyncio.sleep(0.02)
            if step % 3 == 1:
                for p in range(3):
                    mock_cluster.set_leader(mc_topic, p, (p + step) % 3 + 1)

    run = asyncio.run(run_producer(kafka_config(mock_cluster.bootstrap, **FAST), script))
    assert run.left == [] and run.errors() == {}
    check_balanced(run.stats)
    read_back(mock_cluster, mc_topic, run)


def test_api_versions_error_35_steps_down_to_the_version_the_broker_speaks(mock_cluster, mc_topic):
    # The mock cluster answers ApiVersions v3 with error 35 and a v0 body.
    versions = {}

    async def script(producer, run):
        assert (await producer.fetch_partitions(mc_topic, 10))[0] == 0
        versions.update({n: c.api_versions_version for n, c in producer.engine.conns.items()
                         if c.versions})
        stream(producer, run, mc_topic, 0, 3)

    run = asyncio.run(run_producer(kafka_config(mock_cluster.bootstrap, **FAST), script))
    assert versions and all(v < 3 for v in versions.values())
    assert run.errors() == {} and run.stats["delivered"] == 15


def test_leader_broker_down_then_up(mock_cluster, mc_topic):
    async def script(producer, run):
        stream(producer, run, mc_topic, 0, 30)
        await wait_for(lambda: len(run.outcomes) >= 30)
        mock_cluster.broker_down(1)
        stream(producer, run, mc_topic, 30, 60)
        await wait_for(lambda: producer.stats()["delivered"] >= 40 * 5)  # partitions 1 and 2
        assert producer.stats()["queued"] + producer.stats()["in_flight"] > 0  # partition 0 waits
        mock_cluster.broker_up(1)

    run = asyncio.run(run_producer(kafka_config(mock_cluster.bootstrap, **FAST), script))
    assert run.left == [] and run.errors() == {}
    check_balanced(run.stats)
    read_back(mock_cluster, mc_topic, run, exact=False)


@pytest.mark.parametrize("code", [6, 7, 19], ids=["NOT_LEADER", "REQUEST_TIMED_OUT",
                                                  "NOT_ENOUGH_REPLICAS"])
def test_injected_retriable_errors_are_retried(mock_cluster, mc_topic, code):
    async def script(producer, run):
        stream(producer, run, mc_topic, 0, 9)
        await wait_for(lambda: len(run.outcomes) >= 9)
        mock_cluster.push_request_errors(0, code, code, code)
        stream(producer, run, mc_topic, 9, 60)

    run = asyncio.run(run_producer(kafka_config(mock_cluster.bootstrap, **FAST), script))
    assert run.left == [] and run.errors() == {}
    assert run.stats["retried"] > 0
    check_balanced(run.stats)
    # The mock keeps no producer state: a batch behind a refused one is written, not
    # refused with OUT_OF_ORDER_SEQUENCE_NUMBER, so its partition may store them out of
    # send order (a broker's sequence checks keep it: tests/engine, tests/reliability).
    # Everything delivered is there, once, at the offsets reported.
    read_back(mock_cluster, mc_topic, run, in_order=False)


def test_injected_permanent_error_fails_only_its_records_once(mock_cluster, mc_topic, caplog):
    async def script(producer, run):
        stream(producer, run, mc_topic, 0, 3)
        await wait_for(lambda: len(run.outcomes) >= 3)
        mock_cluster.push_request_errors(0, 87)   # INVALID_RECORD for the next Produce
        submit(producer, run, sub(mc_topic, 1, [b"doomed-1", b"doomed-2"], token="doomed"))
        await wait_for(lambda: "doomed" in run.by_token())
        stream(producer, run, mc_topic, 3, 30)

    with caplog.at_level(logging.WARNING, logger="kafkad.engine"):
        run = asyncio.run(run_producer(kafka_config(mock_cluster.bootstrap, **FAST), script))
    assert run.errors() == {"doomed": 87}
    assert [(o.failed, o.delivered) for o in run.by_token()["doomed"]] == [(2, 0)]
    assert run.stats["failed"] == 2
    fails = [r.getMessage() for r in caplog.records if "failed to deliver" in r.getMessage()]
    assert len(fails) == 1 and "doomed-1" in fails[0]
    check_balanced(run.stats)
    del run.subs["doomed"]
    run.outcomes = [o for o in run.outcomes if o.token != "doomed"]
    read_back(mock_cluster, mc_topic, run)


def test_slow_broker_past_the_request_timeout_is_retried(mock_cluster, mc_topic):
    kafka = kafka_config(mock_cluster.bootstrap, request_timeout_ms=300, **FAST)

    async def script(producer, run):
        stream(producer, run, mc_topic, 0, 3)
        await wait_for(lambda: len(run.outcomes) >= 3)
        mock_cluster.set_rtt(1, 1000)
        stream(producer, run, mc_topic, 3, 12)
        await wait_for(lambda: producer.stats()["retried"] > 0)
        mock_cluster.set_rtt(1, 0)

    run = asyncio.run(run_producer(kafka, script))
    assert run.left == [] and run.errors() == {}
    check_balanced(run.stats)
    # the mock cluster may have stored a timed-out batch and its resend: no dedupe there
    read_back(mock_cluster, mc_topic, run, exact=False)


def test_slow_broker_fails_sessions_that_do_not_retry_timeouts(mock_cluster, mc_topic):
    kafka = kafka_config(mock_cluster.bootstrap, request_timeout_ms=300, **FAST)
    no_retry = settings(retry_on_timeouts=False, retry_backoff_ms=20)

    async def script(producer, run):
        stream(producer, run, mc_topic, 0, 3)
        await wait_for(lambda: len(run.outcomes) >= 3)
        mock_cluster.set_rtt(1, 1000)
        submit(producer, run, sub(mc_topic, 0, [b"t-1", b"t-2"], no_retry, token="timed"))
        submit(producer, run, sub(mc_topic, 1, [b"other"], no_retry, token="other"))
        await wait_for(lambda: "timed" in run.by_token())
        mock_cluster.set_rtt(1, 0)

    run = asyncio.run(run_producer(kafka, script))
    assert [(o.error, o.failed) for o in run.by_token()["timed"]] == [(7, 2)]
    assert run.by_token()["other"][0].error == 0
    assert run.stats["failed"] == 2
    check_balanced(run.stats)


def test_leadership_moving_away_from_a_broker_that_stays_down_is_followed(mock_cluster, mc_topic):
    # The leader of every partition goes down and stays down; a while later the
    # cluster moves leadership elsewhere. The records waiting for the dead
    # leader must go to the new one long before metadata_max_age_ms (5 min
    # by default) would refresh the layout on its own.
    moved_at = {}

    async def script(producer, run):
        for p in range(3):
            mock_cluster.set_leader(mc_topic, p, 1)
        stream(producer, run, mc_topic, 0, 30)
        await wait_for(lambda: producer.stats()["delivered"] >= 30 * 5)
        mock_cluster.broker_down(1)
        stream(producer, run, mc_topic, 30, 30)
        # reconnects to broker 1 keep failing meanwhile (refreshes back off to 200 ms)
        await wait_for(lambda: producer.engine.conns[1].fail_count >= 5)
        assert producer.stats()["delivered"] == 30 * 5
        for p in range(3):
            mock_cluster.set_leader(mc_topic, p, 2)
        moved_at["t"] = asyncio.get_running_loop().time()
        await wait_for(lambda: producer.stats()["delivered"] >= 60 * 5, timeout=5.0)
        mock_cluster.broker_up(1)

    kafka = kafka_config(mock_cluster.bootstrap, **FAST)   # metadata_max_age_ms: the 5 min default
    run = asyncio.run(run_producer(kafka, script))
    assert run.left == [] and run.errors() == {}
    check_balanced(run.stats)
    read_back(mock_cluster, mc_topic, run, exact=False)


def test_flush_session_sends_a_stopping_sessions_held_messages_without_waiting_batch_t(
        mock_cluster, mc_topic):
    held = settings(async_send=True, batch_n=1000, batch_t=20.0)

    async def script(producer, run):
        assert (await producer.fetch_partitions(mc_topic, 10))[0] == 0
        for p in range(3):
            submit(producer, run, sub(mc_topic, p, [f"held-{p}".encode()], held,
                                      session=b"stopping", token=p))
        await asyncio.sleep(0.2)
        assert producer.stats()["held"] == 3 and not run.outcomes
        producer.flush_session(b"stopping")
        await wait_for(lambda: producer.stats()["delivered"] == 3, timeout=5.0)   # not 20 s

    run = asyncio.run(run_producer(kafka_config(mock_cluster.bootstrap, **FAST), script))
    assert run.errors() == {} and run.left == []
    check_balanced(run.stats)
    read_back(mock_cluster, mc_topic, run)


def test_stats_balance_after_a_drain_that_returns_queued_and_in_flight_records(mock_cluster,
                                                                               mc_topic):
    kafka = kafka_config(mock_cluster.bootstrap, **FAST)
    got = {}

    async def main():
        outcomes = []
        producer = BrokerProducer(kafka, QueueConfig(), on_outcomes=outcomes.extend)
        await producer.start()
        try:
            for p in range(3):   # connections up first (ApiVersions would wait the rtt too)
                producer.submit(sub(mc_topic, p, [b"warm-up"], RETRY_FAST, token=-1))
            await wait_for(lambda: producer.stats()["delivered"] == 3)
            mock_cluster.set_rtt(1, 3000)                 # partition 0: answers come too late
            for i in range(20):
                producer.submit(sub(mc_topic, i % 3, [f"m{i}".encode()], RETRY_FAST, token=i))
            await wait_for(lambda: producer.stats()["in_flight"] > 0)
            loop = asyncio.get_running_loop()
            got["left"] = await producer.drain(loop.time() + 0.5)
            got["stats"] = producer.stats()
            got["tokens"] = {o.token for o in outcomes}
            mock_cluster.set_rtt(1, 0)
            await asyncio.sleep(0.3)                      # late answers arrive: nothing changes
            got["later"] = producer.stats()
        finally:
            await producer.close()

    asyncio.run(main())
    left, st = got["left"], got["stats"]
    returned = sum(len(s) for s in left)
    assert returned > 0 and {s.token % 3 for s in left} == {0}
    assert st["dropped"] == returned and st["queued"] == st["in_flight"] == 0
    check_balanced(st)
    assert st["delivered"] + st["dropped"] == st["accepted"] == 23
    assert not got["tokens"] & {s.token for s in left}   # handed back, not also reported
    for k in ("accepted", "delivered", "failed", "dropped", "queued", "in_flight"):
        assert got["later"][k] == st[k], k
