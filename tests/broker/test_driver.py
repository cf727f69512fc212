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
