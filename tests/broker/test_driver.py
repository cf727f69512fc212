"""The asyncio driver's side of the engine contract, against a real Tansu broker."""

from __future__ import annotations

import asyncio
import logging

import pytest

from .helpers import kafka_config, run_producer, sub, submit, wait_for

pytestmark = pytest.mark.broker


def test_a_request_for_a_connection_the_driver_lost_is_retried_not_a_crash(tansu, topic, caplog):
    """Engine and driver disagree about an open connection: the request is settled, not dropped.

    The engine promises never to hand out a request for a connection it
    closed; this checks the driver's half for when that promise is broken:
    no exception out of the poll (which would lose that poll's outcomes and
    leave the request waiting for its timeout), the connection counts as
    lost, and the record goes on a new connection.
    """
    loop_errors: list[dict] = []

    async def script(producer, run):
        asyncio.get_running_loop().set_exception_handler(lambda _, ctx: loop_errors.append(ctx))
        submit(producer, run, sub(topic, 0, [b"warm-up"], token="warm-up"))
        await wait_for(lambda: run.by_token()["warm-up"])
        leader = producer.engine.metadata.leader(topic, 0)
        # The driver forgets the socket without telling the engine.
        producer._conns.pop(leader).close()
        submit(producer, run, sub(topic, 0, [b"after"], token="after"))
        await wait_for(lambda: run.by_token()["after"], timeout=10)

    # A request timeout far beyond the wait: only a settled request can make it in time.
    kafka = kafka_config(tansu.bootstrap, request_timeout_ms=60_000)
    with caplog.at_level(logging.ERROR, logger="kafkad.broker"):
        run = asyncio.run(run_producer(kafka, script))
    assert loop_errors == []
    assert [(o.error, o.delivered) for o in run.by_token()["after"]] == [(0, 1)]
    assert "no open connection exists to write it to" in caplog.text


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from tests.support.certs import make_test_pki, openssl_binary

    if openssl_binary() is None:
        pytest.skip("the openssl command line tool is not installed (needed to make test certificates)")
    return make_test_pki(str(tmp_path_factory.mktemp("pki")))


def test_a_tls_broker_closing_before_its_first_answer_is_named_and_reported(pki, caplog):
    """A broker ending TLS connections right after the handshake: the cause reaches log and sender.

    This is how a refused client certificate looks under TLS 1.3. The log
    line names the likely cause (describe_early_close), and records fail
    with SASL_AUTHENTICATION_FAILED (58) at the delivery timeout instead of
    REQUEST_TIMED_OUT.
    """
    from kafkad.config import TlsConfig
    from tests.support.tlsproxy import server_ssl_context

    accepted = 0

    async def hang_up(reader, writer):
        nonlocal accepted
        accepted += 1
        writer.close()

    async def script(producer, run):
        submit(producer, run, sub("t", 0, [b"a", b"b"], token="refused"))
        await wait_for(lambda: run.by_token()["refused"], timeout=10)

    async def main():
        server = await asyncio.start_server(hang_up, "127.0.0.1", 0,
                                            ssl=server_ssl_context(pki.server_cert, pki.server_key))
        port = server.sockets[0].getsockname()[1]
        kafka = kafka_config(f"127.0.0.1:{port}", security_protocol="SSL",
                             tls=TlsConfig(ca_file=pki.ca_file), delivery_timeout_ms=1500,
                             reconnect_backoff_ms=20, reconnect_backoff_max_ms=50)
        async with server:
            return await run_producer(kafka, script, drain_s=0)

    with caplog.at_level(logging.DEBUG, logger="kafkad"):
        run = asyncio.run(main())
    assert [(o.error, o.failed) for o in run.by_token()["refused"]] == [(58, 2)]
    assert accepted >= 2
    assert "closed the connection before answering; it may require a client certificate" in caplog.text


def test_events_of_one_io_callback_share_one_poll_in_the_same_loop_turn():
    """hold_polls/release_polls: wakes in between poll once, at release, without a loop turn."""
    from kafkad.broker import BrokerProducer
    from kafkad.config import QueueConfig

    async def main():
        producer = BrokerProducer(kafka_config("127.0.0.1:9"), QueueConfig(), on_outcomes=list)
        producer.loop = asyncio.get_running_loop()   # start() would connect; not needed here
        polls = []
        producer._poll_once = lambda: polls.append(producer._polling)
        # Outside a burst: one call_soon'd poll, in the next turn.
        producer.wake()
        producer.wake()
        assert polls == []
        await asyncio.sleep(0)
        assert polls == [True]
        # A burst: wakes only note; the poll runs at the outer release, at once.
        producer.hold_polls()
        producer.hold_polls()
        producer.wake()
        producer.release_polls()
        assert polls == [True]
        producer.wake()
        producer.release_polls()
        assert polls == [True, True]
        await asyncio.sleep(0)
        assert polls == [True, True]      # nothing left scheduled
        # A burst without a wake: no poll.
        producer.hold_polls()
        producer.release_polls()
        # poll=False (a connection that just failed): the poll waits for the next turn.
        producer.hold_polls()
        producer.wake()
        producer.release_polls(poll=False)
        assert polls == [True, True]
        await asyncio.sleep(0)
        assert polls == [True, True, True]
        # From inside a poll (an outcome callback reading the IPC socket): never re-entered.
        def reentrant():
            polls.append(producer._polling)
            if len(polls) == 4:
                producer.hold_polls()
                producer.wake()
                producer.release_polls()
                assert len(polls) == 4
        producer._poll_once = reentrant
        producer.wake()
        await asyncio.sleep(0)
        assert polls == [True, True, True, True]
        await asyncio.sleep(0)
        assert polls == [True, True, True, True, True]

    asyncio.run(main())


def test_sync_sends_to_a_settled_producer_go_out_and_come_back_without_a_poll(tansu, topic):
    """The sync fast path (Engine.send_sync / needs_poll) as the driver uses it, on a real broker."""
    from kafkad.engine.types import SessionSettings

    polls: list[float] = []

    async def script(producer, run):
        sync = SessionSettings(async_send=False)
        submit(producer, run, sub(topic, 0, [b"warm-up"], sync, token="warm-up"))
        await wait_for(lambda: run.by_token()["warm-up"])
        await asyncio.sleep(0.05)          # the polls the first send's connections ask for
        engine_poll = producer.engine.poll

        def poll(now):
            polls.append(now)
            return engine_poll(now)

        producer.engine.poll = poll
        for i in range(20):
            submit(producer, run, sub(topic, 0, [b"sync-%d" % i], sync, token=i))
            await wait_for(lambda: run.by_token()[i], step=0.001)
        producer.engine.poll = engine_poll

    run = asyncio.run(run_producer(kafka_config(tansu.bootstrap), script))
    assert [(o.token, o.error, o.delivered) for o in run.outcomes[1:]] == [(i, 0, 1) for i in range(20)]
    offsets = [o.base_offset for o in run.outcomes[1:]]
    assert offsets == list(range(offsets[0], offsets[0] + 20))
    assert len(polls) <= 2, polls      # at most a timer's; none asked for by the sends


def test_the_sync_sends_of_one_burst_share_a_request(tansu, topic):
    """Several workers' sync frames read in one go go out together, at the burst's end."""
    from kafkad.engine.types import SessionSettings

    async def script(producer, run):
        sync = SessionSettings(async_send=False)
        submit(producer, run, sub(topic, 0, [b"warm-up"], sync, token="warm-up"))
        await wait_for(lambda: run.by_token()["warm-up"])
        await asyncio.sleep(0.05)
        requests = producer.engine.requests
        producer.hold_polls()
        for i, partition in enumerate((0, 0, 1, 0)):
            submit(producer, run, sub(topic, partition, [b"burst-%d" % i], sync, session=b"w%d" % i,
                                      token=i))
        assert producer.engine.requests == requests       # nothing built before the burst ends
        producer.release_polls()
        assert producer.engine.requests == requests + 1   # one Produce request for all four
        await wait_for(lambda: all(run.by_token()[i] for i in range(4)))

    run = asyncio.run(run_producer(kafka_config(tansu.bootstrap), script))
    assert sorted((o.token, o.error, o.delivered) for o in run.outcomes[1:]) == [(i, 0, 1) for i in range(4)]


def test_a_failure_in_the_sync_fast_path_still_ends_the_burst_and_polls(caplog):
    """send_sync or answers_read raising (a bug) is logged; the burst ends and a poll follows."""
    from kafkad.broker import BrokerProducer
    from kafkad.config import QueueConfig
    from kafkad.engine.types import SessionSettings

    async def main():
        producer = BrokerProducer(kafka_config("127.0.0.1:9"), QueueConfig(), on_outcomes=list)
        producer.loop = asyncio.get_running_loop()   # start() would connect; not needed here
        polls = []
        producer._poll_once = lambda: polls.append(producer._held)

        def boom(*args):
            raise RuntimeError("boom")

        producer.engine.send_sync = boom
        producer.hold_polls()
        producer.submit(sub("t", 0, [b"x"], SessionSettings(async_send=False)))
        producer.release_polls()
        assert producer._held == 0 and polls == [0]
        producer.engine.take_outcomes = boom
        producer.hold_polls()
        producer.answers_read(producer.loop.time())
        producer.release_polls()
        assert producer._held == 0 and polls == [0, 0]

    with caplog.at_level(logging.ERROR, logger="kafkad.broker"):
        asyncio.run(main())
    assert "failed sending sync requests" in caplog.text
    assert "failed reporting answers" in caplog.text
