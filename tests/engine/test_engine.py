"""The sans-IO engine against a fake cluster and a fake clock: batching, retries, idempotence."""

from __future__ import annotations

import dataclasses
import hashlib
import logging

import pytest

from kafkad.config import QueueConfig
from kafkad.engine.states import BatchState, ConnState, PidState
from kafkad.engine.types import QueueFull, RecordTooLarge, SessionSettings, Submission
from kafkad.protocol import InitProducerIdResponse, decode_record_batches

from .fakes import FakeCluster, Harness, settings

ASYNC = settings(async_send=True, batch_n=3, batch_t=5.0)


def cluster(*topics: str, **kw) -> FakeCluster:
    c = FakeCluster(**kw)
    for t in topics:
        c.create(t, 3)
    return c


def connect(h: Harness, *topics: str) -> None:
    """Bring connections and metadata up (a first sync record per topic, delivered)."""
    for topic in topics or ("t",):
        h.submit(topic, 0, [b"warm-up"], token="warm-up")
    h.run()
    assert all(o.error == 0 for o in h.by_token()["warm-up"])
    h.sent.clear()
    h.outcomes.clear()


def batches_in(req) -> list:
    return [(t.name, p.index, decode_record_batches(p.records)[0])
            for t in req.msg.topic_data for p in t.partition_data]


# ---------------------------------------------------------------- batching


def test_sync_records_from_many_sessions_share_one_request_per_broker():
    h = Harness(cluster("t"))
    connect(h)
    for i in range(6):
        h.submit("t", i % 3, [f"m{i}".encode()], session=b"w%d" % i, token=i)
    h.run()
    reqs = h.produce_requests()
    # partitions 0, 1, 2 are led by brokers 1, 2, 3: one request each, both records inside
    assert sorted(r.node for r in reqs) == [1, 2, 3]
    for r in reqs:
        (_, _, batch), = batches_in(r)
        assert len(batch.records) == 2
    assert {o.token: o.base_offset for o in h.outcomes} == {0: 1, 1: 0, 2: 0, 3: 2, 4: 1, 5: 1}


def test_one_request_carries_every_ready_partition_of_a_broker():
    c = cluster("t", "u")
    for p in range(3):
        c.move_leader("t", p, 1)
        c.move_leader("u", p, 1)
    h = Harness(c)
    connect(h, "t", "u")
    for p in range(3):
        h.submit("t", p, [b"x"])
        h.submit("u", p, [b"y"])
    h.run()
    (req,) = h.produce_requests()
    assert sorted((t, p) for t, p, _ in batches_in(req)) == [
        ("t", 0), ("t", 1), ("t", 2), ("u", 0), ("u", 1), ("u", 2)]


def test_async_session_releases_batch_n_at_a_time_oldest_first():
    h = Harness(cluster("t"), linger_ms=0)
    connect(h)
    for i in range(5):
        h.submit("t", 0, [f"a{i}".encode()], settings=ASYNC, token=i)
    h.run(until=h.now + 1.0)
    assert h.values("t", 0)[1:] == [b"a0", b"a1", b"a2"]
    assert h.engine.held == 2
    h.run(until=h.now + 3.9)          # a3 was held 4.9 s: not yet
    assert h.engine.held == 2
    h.run(until=h.now + 0.2)          # 5 s: everything held goes
    assert h.values("t", 0)[1:] == [b"a0", b"a1", b"a2", b"a3", b"a4"]
    assert h.engine.held == 0


def test_hold_cuts_a_submission_to_release_exactly_batch_n():
    h = Harness(cluster("t"), linger_ms=0)
    connect(h)
    h.submit("t", 0, [b"a", b"b", b"c", b"d"], settings=ASYNC, token="four")
    h.run(until=h.now + 1.0)
    assert h.values("t", 0)[1:] == [b"a", b"b", b"c"]
    h.run(until=h.now + 5.0)
    outs = h.by_token()["four"]
    assert [(o.delivered, o.base_offset) for o in outs] == [(3, 1), (1, 4)]


def test_hold_releases_every_whole_group_in_one_piece():
    """Eleven held messages with batch_n=3: nine go now as one piece of the big
    submission (cut once, not three times), two stay held."""
    h = Harness(cluster("t"), linger_ms=0)
    connect(h)
    h.submit("t", 0, [b"a", b"b"], settings=ASYNC, token="two")
    assert h.engine.held == 2
    h.submit("t", 0, [b"m%d" % i for i in range(9)], settings=ASYNC, token="nine")
    assert h.engine.held == 2
    h.run(until=h.now + 1.0)
    assert h.values("t", 0)[1:] == [b"a", b"b"] + [b"m%d" % i for i in range(7)]
    h.run(until=h.now + 5.0)
    outs = h.by_token()
    assert [o.delivered for o in outs["two"]] == [2]
    assert [o.delivered for o in outs["nine"]] == [7, 2]     # one cut where the last whole group ends


def test_linger_delays_released_async_records_not_sync_ones():
    h = Harness(cluster("t"), linger_ms=50)
    connect(h)
    h.submit("t", 0, [b"a", b"b", b"c"], settings=ASYNC)
    h.step()
    assert not h.produce_requests()
    h.run(until=h.now + 0.049)
    assert not h.produce_requests()
    h.run(until=h.now + 0.002)
    assert len(h.produce_requests()) == 1
    start = h.now
    h.submit("t", 1, [b"sync"])
    h.run(until=start)
    assert len(h.produce_requests()) == 2 and h.now == start


def test_default_linger_is_5_ms_and_a_sync_record_never_waits_for_it():
    """The default linger (5 ms, librdkafka's and Kafka 4.0's) holds released async
    records; a sync record goes at once, also into a batch already lingering."""
    h = Harness(cluster("t"))
    assert h.kafka.linger_ms == 5.0
    connect(h)
    h.submit("t", 0, [b"a", b"b", b"c"], settings=ASYNC)
    h.run(until=h.now + 0.0049)
    assert not h.produce_requests()
    start = h.now
    h.submit("t", 0, [b"sync"])                       # same lane: joins the lingering batch
    h.run(until=start)
    (req,) = h.produce_requests()
    assert h.now == start
    assert [r.value for _, _, b in batches_in(req) for r in b.records] == [b"a", b"b", b"c", b"sync"]
    h.submit("t", 1, [b"d", b"e", b"f"], settings=ASYNC)
    h.run(until=h.now + 0.0049)
    assert len(h.produce_requests()) == 1
    h.run(until=h.now + 0.0002)
    assert len(h.produce_requests()) == 2


def test_sessions_with_other_batch_settings_get_their_own_batches():
    h = Harness(cluster("t"))
    connect(h)
    h.submit("t", 0, [b"plain"], token="a")
    h.submit("t", 0, [b"gzip"], settings=settings(codec=1), token="b")
    h.run()
    codecs = sorted(b.codec for r in h.produce_requests() for _, _, b in batches_in(r))
    assert codecs == [0, 1]
    assert all(o.error == 0 for o in h.outcomes)


def test_batches_are_split_at_batch_max_bytes():
    h = Harness(cluster("t"), batch_max_bytes=2000)
    connect(h)
    values = [bytes([65 + i % 26]) * 300 for i in range(20)]
    h.submit("t", 0, values, token="big")
    h.run()
    sizes = [len(b.records) for r in h.produce_requests() for _, _, b in batches_in(r)]
    assert sum(sizes) == 20 and len(sizes) > 3 and max(sizes) <= 2000 // 300
    assert h.values("t", 0)[1:] == values
    outs = h.by_token()["big"]
    assert sum(o.delivered for o in outs) == 20
    # offsets of consecutive parts follow each other
    assert [o.base_offset for o in outs] == [1 + sum(x.delivered for x in outs[:i])
                                             for i in range(len(outs))]


def test_requests_are_split_at_request_max_bytes():
    c = cluster("t")
    for p in range(3):
        c.move_leader("t", p, 1)
    h = Harness(c, batch_max_bytes=3000, request_max_bytes=4000)
    connect(h)
    h.sent.clear()
    for p in range(3):
        h.submit("t", p, [b"x" * 2500])
    h.run()
    reqs = h.produce_requests()
    assert len(reqs) >= 2
    assert all(sum(len(p.records) for t in r.msg.topic_data for p in t.partition_data) <= 4000
               for r in reqs)


def test_a_record_larger_than_the_cap_fails_only_its_submission(caplog):
    h = Harness(cluster("t"), batch_max_bytes=1000)
    connect(h)
    with caplog.at_level(logging.WARNING, logger="kafkad.engine"):
        h.submit("t", 0, [b"ok"], token="small")
        h.submit("t", 0, [b"y" * 2000], token="huge")
        h.run()
    assert [(o.error, o.failed) for o in h.by_token()["huge"]] == [(10, 1)]
    assert h.by_token()["small"][0].error == 0
    assert sum("MESSAGE_TOO_LARGE" in r.getMessage() for r in caplog.records) == 1


def test_a_divisible_submission_with_a_record_too_large_is_refused_whole():
    """A merged submission (several calls) is handed back, so that only one call fails."""
    h = Harness(cluster("t"), batch_max_bytes=1000)
    connect(h)
    sub = Submission(b"s1", SessionSettings(), "t", 0, [None] * 3, [b"a", b"y" * 2000, b"b"],
                     1_700_000_000_000, "merged")
    before = h.engine.stats()
    with pytest.raises(RecordTooLarge):
        h.engine.submit(sub, h.now, divisible=True)
    assert h.engine.stats() == before and not h.engine.take_outcomes()
    assert h.engine.too_large([None, b"k"], [b"a", b"y" * 2000])
    assert not h.engine.too_large([None, None], [b"a", b"y" * 900])
    h.engine.submit(dataclasses.replace(sub, values=[b"a", b"b", b"c"], token="fits"), h.now, divisible=True)
    h.engine.submit(dataclasses.replace(sub, token="one call"), h.now)   # its messages fail together
    h.run()
    assert [(o.error, o.delivered, o.failed) for o in h.by_token()["fits"]] == [(0, 3, 0)]
    assert [(o.error, o.delivered, o.failed) for o in h.by_token()["one call"]] == [(10, 0, 3)]
    h.check_accounting()


def test_failures_counted_from_outside_keep_the_books_balanced():
    h = Harness(cluster("t"))
    h.engine.count_failed("t", 3, 10)
    h.check_accounting()
    st = h.engine.stats()
    assert (st["accepted"], st["failed"]) == (3, 3)


def test_queue_caps_refuse_whole_submissions_and_take_nothing():
    h = Harness(cluster("t"), queue=QueueConfig(max_messages=5, max_bytes=10_000))
    h.submit("t", 0, [b"a"] * 4)
    with pytest.raises(QueueFull):
        h.submit("t", 0, [b"b"] * 2)
    assert h.engine.accepted == 4
    with pytest.raises(QueueFull):
        h.submit("t", 1, [b"z" * 20_000])
    h.run()
    assert h.engine.delivered == 4
    h.submit("t", 0, [b"b"] * 5)   # room again once delivered
    h.run()
    assert h.engine.delivered == 9


def test_an_empty_queue_takes_one_submission_larger_than_the_caps():
    """A merged submission over the caps would be refused forever (its frame is replayed
    as it was): an empty queue takes it, and nothing more until there is room again."""
    h = Harness(cluster("t"), queue=QueueConfig(max_messages=5, max_bytes=10_000))
    h.submit("t", 0, [b"a"] * 8, token="big")
    with pytest.raises(QueueFull):
        h.submit("t", 0, [b"b"])
    h.run()
    assert [(o.error, o.delivered) for o in h.by_token()["big"]] == [(0, 8)]
    h.submit("t", 1, [b"z" * 20_000], token="large")     # over max_bytes, into an empty queue
    h.run()
    assert h.by_token()["large"][0].error == 0
    assert h.engine.delivered == 9


# ---------------------------------------------------------------- retries and ordering


@pytest.mark.parametrize("code", [6, 7, 19])
def test_retriable_errors_are_retried_in_order_with_the_same_sequence(code):
    c = cluster("t")
    h = Harness(c, linger_ms=0)
    connect(h)
    c.produce_errors[("t", 0)].extend([code, code])
    for i in range(4):
        h.submit("t", 0, [f"r{i}".encode()], token=i)
        h.step()
    h.run()
    assert h.values("t", 0)[1:] == [b"r0", b"r1", b"r2", b"r3"]
    seqs = [w.sequence for w in c.logs[("t", 0)]]
    assert seqs == list(range(5))
    assert h.engine.retried > 0 and h.engine.failed == 0
    if code == 6:  # NOT_LEADER asks for fresh metadata before the retry
        assert any(type(r.msg).__name__ == "MetadataRequest" for r in h.sent)


def test_leader_move_follows_new_metadata():
    c = cluster("t")
    h = Harness(c)
    connect(h)
    c.move_leader("t", 0, 3)
    for i in range(3):
        h.submit("t", 0, [f"m{i}".encode()], token=i)
    h.run()
    assert h.values("t", 0)[1:] == [b"m0", b"m1", b"m2"]
    assert h.produce_requests()[-1].node == 3


def test_stale_metadata_does_not_move_a_leader_back():
    c = cluster("t")
    h = Harness(c)
    connect(h)
    c.move_leader("t", 0, 2)
    h.engine.want_topic("t", h.now)
    h.run()
    assert h.engine.metadata.leader("t", 0) == 2
    c.leaders[("t", 0)] = 1          # an answer from a broker that missed the move:
    c.leader_epochs[("t", 0)] = 0    # older leader epoch
    h.engine.want_topic("t", h.now)
    h.run()
    assert h.engine.metadata.leader("t", 0) == 2


def test_permanent_error_fails_only_that_partition_once(caplog):
    c = cluster("t")
    h = Harness(c)
    connect(h)
    c.produce_errors[("t", 1)].append(87)
    with caplog.at_level(logging.WARNING, logger="kafkad.engine"):
        for p in range(3):
            h.submit("t", p, [f"p{p}".encode(), b"second"], token=p)
        h.run()
    res = h.by_token()
    assert [(o.error, o.failed) for o in res[1]] == [(87, 2)]
    assert res[0][0].error == 0 and res[2][0].error == 0
    assert h.engine.failed == 2
    fails = [r for r in caplog.records if "failed to deliver" in r.getMessage()]
    assert len(fails) == 1 and "INVALID_RECORD" in fails[0].getMessage()
    assert "b'p1'" in fails[0].getMessage()
    # later records of the failed partition still go, with a gap-free sequence
    h.submit("t", 1, [b"after"], token="after")
    h.run()
    assert h.by_token()["after"][0].error == 0
    assert h.values("t", 1)[-1] == b"after"


def _failure_line(caplog, value: bytes, sender_logs: bool, **harness) -> str:
    """The engine's one log line for `value`, failed by the broker (error 87), sent
    with the sender's async_log_messages_on_error = `sender_logs`."""
    c = cluster("t")
    h = Harness(c, **harness)
    connect(h)
    c.produce_errors[("t", 0)].append(87)
    with caplog.at_level(logging.WARNING, logger="kafkad.engine"):
        h.submit("t", 0, [value], settings=settings(log_messages_on_error=sender_logs))
        h.run()
    (rec,) = [r for r in caplog.records if "failed to deliver" in r.getMessage()]
    return rec.getMessage()


def test_failure_log_carries_only_a_hash_when_message_logging_is_off(caplog):
    line = _failure_line(caplog, b"secret-payload", False)
    assert "secret-payload" not in line and "hashes " in line


def test_failure_log_shows_a_prefix_length_and_hash_of_a_large_message(caplog):
    # the same rendering as the IPC server's lines (kafkad.engine.describe), so the
    # message can be matched with the shim's log by its hash
    big = b"S" * 300_000
    line = _failure_line(caplog, big, True)
    assert len(line) < 1000 and "b'SSSS" in line
    assert f"(300000 B, blake2b {hashlib.blake2b(big, digest_size=8).hexdigest()})" in line


def test_failure_log_obeys_the_daemons_message_logging_setting(caplog):
    # [logging] log_messages_on_error = false wins over a sender that allows it
    line = _failure_line(caplog, b"secret-payload", True, log_messages_on_error=False)
    assert "secret-payload" not in line


def test_retry_limit_bounds_async_retries():
    c = cluster("t")
    h = Harness(c, linger_ms=0)
    connect(h)
    c.produce_errors[("t", 0)].extend([19] * 10)
    s = settings(async_send=True, batch_n=1, retry_limit=2, retry_backoff_ms=10)
    h.submit("t", 0, [b"x"], settings=s, token="x")
    h.run()
    assert [(o.error, o.failed) for o in h.by_token()["x"]] == [(19, 1)]
    attempts = sum(1 for r in h.produce_requests())
    assert attempts == 3  # the first send and two retries
    assert len(c.produce_errors[("t", 0)]) == 7


def test_retry_backoff_grows_and_is_capped():
    c = cluster("t")
    h = Harness(c, linger_ms=0, retry_backoff_max_ms=400)
    connect(h)
    c.produce_errors[("t", 0)].extend([19] * 6)
    h.submit("t", 0, [b"x"], settings=settings(retry_backoff_ms=100))
    h.run()
    times = [r.sent_at for r in h.produce_requests()]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(gaps) == 6
    assert 0.08 <= gaps[0] <= 0.12 and 0.16 <= gaps[1] <= 0.24
    assert all(g <= 0.4 * 1.2 + 1e-9 for g in gaps) and gaps[-1] >= 0.4 * 0.8


def test_request_timeout_closes_the_connection_and_retries():
    c = cluster("t")
    h = Harness(c, request_timeout_ms=1000)
    connect(h)
    h.hold_answers.add(1)
    h.submit("t", 0, [b"slow"], token="slow")
    h.run(until=h.now + 0.9)
    assert 1 not in h.closes
    h.hold_answers.clear()
    h.run(until=h.now + 0.2)
    assert 1 in h.closes
    h.run()
    # the lost request was written: the resend is a duplicate the broker recognises
    assert h.values("t", 0)[1:] == [b"slow"]
    assert [(o.error, o.base_offset) for o in h.by_token()["slow"]] == [(0, 1)]


def test_request_timeout_fails_when_the_session_does_not_retry_timeouts():
    h = Harness(cluster("t"), request_timeout_ms=1000)
    connect(h)
    h.hold_answers.add(1)
    h.submit("t", 0, [b"x"], settings=settings(retry_on_timeouts=False), token="x")
    h.submit("t", 1, [b"y"], token="y")
    h.run(until=h.now + 1.5)
    assert [(o.error, o.failed) for o in h.by_token()["x"]] == [(7, 1)]
    assert h.by_token()["y"][0].error == 0


def test_delivery_timeout_bounds_records_that_cannot_go():
    c = cluster("t")
    h = Harness(c, delivery_timeout_ms=5000)
    connect(h)
    h.up.discard(1)
    h.engine.disconnected(1, h.now, "test: broker 1 went away")
    h.submit("t", 0, [b"stuck"], token="stuck")
    h.submit("t", 1, [b"fine"], token="fine")
    h.run(until=h.now + 4.9)
    assert "stuck" not in h.by_token()
    h.run(until=h.now + 0.2)
    assert [(o.error, o.failed) for o in h.by_token()["stuck"]] == [(7, 1)]
    assert h.by_token()["fine"][0].error == 0


def test_records_kept_out_by_a_refused_login_fail_with_its_code_not_a_timeout(caplog):
    h = Harness(cluster("t"), delivery_timeout_ms=3000, security_protocol="SASL_PLAINTEXT",
                reconnect_backoff_ms=50, reconnect_backoff_max_ms=200)
    h.login_refusal = ("SaslAuthenticationFailedError (58): SASL PLAIN as 'alice': refused", 58)
    h.submit("t", 0, [b"a"], token="a")
    h.submit("t", 2, [b"b", b"c"], token="b")
    with caplog.at_level(logging.WARNING, logger="kafkad.engine"):
        h.run(until=h.now + 3.1)
    assert {t: [(o.error, o.failed) for o in outs] for t, outs in h.by_token().items()} == {
        "a": [(58, 1)], "b": [(58, 2)]}
    assert "SASL PLAIN as 'alice': refused" in caplog.text
    assert h.engine.connection_error() == 58
    # the login works again: the cause is forgotten, and records go
    h.login_refusal = None
    h.submit("t", 0, [b"later"], token="later")
    h.run(until=h.now + 2)
    assert h.by_token()["later"][0].error == 0 and h.engine.connection_error() == 0


def test_only_the_partitions_of_a_broker_refusing_tls_fail_with_its_code():
    c = cluster("t")
    h = Harness(c, delivery_timeout_ms=3000, reconnect_backoff_ms=50, reconnect_backoff_max_ms=200)
    connect(h)
    h.up.discard(2)          # partition 1's leader
    h.refusal = ("TLS to 127.0.0.1:9002: the broker's certificate was not accepted", 58)
    h.engine.disconnected(2, h.now, "test: broker 2 restarted with a new certificate")
    h.submit("t", 0, [b"fine"], token="fine")
    h.submit("t", 1, [b"stuck"], token="stuck")
    h.run(until=h.now + 3.1)
    assert h.by_token()["fine"][0].error == 0
    assert [(o.error, o.failed) for o in h.by_token()["stuck"]] == [(58, 1)]
    assert h.engine.connection_error() == 0    # other brokers are fine: no global cause


def test_a_plain_refusal_after_a_coded_one_is_the_last_cause():
    h = Harness(cluster("t"), delivery_timeout_ms=3000, reconnect_backoff_ms=50,
                reconnect_backoff_max_ms=200)
    h.up.clear()
    h.refusal = ("TLS to 127.0.0.1:9001: handshake failed", 58)
    h.submit("t", 0, [b"x"], token="x")
    h.run(until=h.now + 1)
    h.refusal = ("ConnectionRefusedError: [Errno 111] Connection refused", 0)
    h.run(until=h.now + 2.1)
    assert [(o.error, o.failed) for o in h.by_token()["x"]] == [(7, 1)]


def test_broker_down_then_up_delivers_everything_in_order():
    c = cluster("t")
    h = Harness(c, reconnect_backoff_ms=50, reconnect_backoff_max_ms=200)
    connect(h)
    h.up.discard(1)
    h.engine.disconnected(1, h.now, "test")
    for i in range(5):
        h.submit("t", 0, [f"d{i}".encode()])
        h.run(until=h.now + 0.3)
    assert h.values("t", 0) == [b"warm-up"]
    assert h.connects.count(1) >= 2   # kept trying with backoff
    h.up.add(1)
    h.run(until=h.now + 1)
    assert h.values("t", 0)[1:] == [f"d{i}".encode() for i in range(5)]


# ---------------------------------------------------------------- idempotence


def test_sequences_per_partition_and_in_flight_limit():
    c = cluster("t")
    h = Harness(c, linger_ms=0, max_in_flight_per_connection=2)
    connect(h)
    h.hold_answers.add(1)
    for i in range(4):
        h.submit("t", 0, [f"s{i}".encode()])
        h.step()
    assert len(h.engine.conns[1].inflight) == 2
    h.hold_answers.clear()
    for req in list(h.unanswered):
        h.engine.response(req, c.answer(req), h.now)
    h.unanswered.clear()
    h.run()
    assert [w.sequence for w in c.logs[("t", 0)]] == [0, 1, 2, 3, 4]


def test_duplicate_sequence_counts_as_delivered():
    c = cluster("t")
    h = Harness(c, request_timeout_ms=500)
    connect(h)
    h.hold_answers.add(1)
    h.submit("t", 0, [b"once"], token="once")
    h.step()
    # the broker writes it, the answer is lost
    req = h.unanswered.pop()
    c.answer(req)
    h.hold_answers.clear()
    h.run(until=h.now + 1)
    assert h.values("t", 0)[1:] == [b"once"]
    assert [(o.error, o.delivered) for o in h.by_token()["once"]] == [(0, 1)]


def test_a_request_times_out_at_the_deadline_the_poll_gave():
    """The poll's deadline for a request is sent_at + timeout; the check must agree with it.

    It computed now - sent_at >= timeout instead, which float rounding can make
    false at exactly that deadline (1004.002 + 0.3 - 1004.002 < 0.3): the driver
    then woke at the deadline again and again without anything happening.
    """
    c = cluster("t")
    h = Harness(c, request_timeout_ms=300)
    connect(h)
    h.now = 1004.002
    h.hold_answers.add(1)
    h.submit("t", 0, [b"x"], token="x")
    h.step()
    assert h.deadline == 1004.002 + 0.3
    h.hold_answers.clear()
    h.now = h.deadline
    n = len(h.closes)
    h.step()
    assert h.closes[n:] == [1]        # timed out: the connection goes, the batch is resent
    h.run()
    assert [o.error for o in h.by_token()["x"]] == [0]


def test_out_of_order_on_the_oldest_batch_bumps_the_epoch():
    c = cluster("t")
    h = Harness(c)
    connect(h)
    pid = h.engine.groups[(1, 1000, 0, None)].producer_id
    c.forget_producers()      # the broker lost our sequence state
    c._epochs[pid] = 0
    c._part_epochs[(pid, "t", 0)] = 0
    c._seqs[(pid, "t", 0)].append((40, 40, 0))  # ...and expects a sequence we never sent
    h.submit("t", 0, [b"after-loss"], token="a")
    h.run()
    init = [r for r in h.sent if type(r.msg).__name__ == "InitProducerIdRequest"]
    assert len(init) == 1 and init[0].msg.producer_id == pid and init[0].msg.producer_epoch == 0
    group = h.engine.groups[(1, 1000, 0, None)]
    assert (group.producer_id, group.epoch, group.state) == (pid, 1, PidState.READY)
    assert h.by_token()["a"][0].error == 0
    assert c.logs[("t", 0)][-1].sequence == 0   # renumbered from 0 under the new epoch


def test_unknown_producer_id_gets_a_new_epoch_and_resends():
    c = cluster("t")
    h = Harness(c)
    connect(h)
    c.produce_errors[("t", 2)].append(59)
    h.submit("t", 2, [b"x", b"y"], token="xy")
    h.run()
    assert h.values("t", 2) == [b"x", b"y"]
    assert h.by_token()["xy"][0].error == 0
    assert any(type(r.msg).__name__ == "InitProducerIdRequest" and r.msg.producer_id >= 0
               for r in h.sent)


def test_out_of_order_on_the_oldest_batch_after_a_resend_was_acked_late_bumps_the_epoch():
    """A (answered 7: written) is resent and acked after B: the lane's oldest is then C.

    The engine took "the oldest unacknowledged batch" from the last acknowledged
    sequence, which A's late acknowledgement moved back behind B's. When the broker
    then lost our state, C's OUT_OF_ORDER looked like the echo of an earlier failure:
    C was resent at once, again and again, without a bump, until its delivery timeout.
    """
    c = cluster("t")
    h = Harness(c, linger_ms=0, delivery_timeout_ms=5000)
    s = settings(acks=-1)
    h.submit("t", 0, [b"warm-up"], settings=s)
    h.run()
    group = h.engine.groups[(-1, 1000, 0, None)]
    pid, epoch = group.producer_id, group.epoch
    h.hold_answers.add(1)
    h.submit("t", 0, [b"A"], settings=s, token="A")
    h.step()
    h.submit("t", 0, [b"B"], settings=s, token="B")
    h.step()
    ra, rb = h.unanswered
    h.unanswered.clear()
    h.hold_answers.clear()
    c.errors_after_append[("t", 0)].append(7)
    h.deliver(ra, c.answer(ra))
    h.deliver(rb, c.answer(rb))
    h.run()                                      # A resent: the broker's duplicate
    assert [o.error for o in h.outcomes if o.token in ("A", "B")] == [0, 0]
    c._seqs[(pid, "t", 0)].clear()               # the broker lost our sequence, and
    c._seqs[(pid, "t", 0)].append((40, 40, 0))   # expects one we never sent
    n = len(h.produce_requests())
    h.submit("t", 0, [b"C"], settings=s, token="C")
    h.run()
    assert [o.error for o in h.by_token()["C"]] == [0]
    assert group.epoch == epoch + 1
    assert len(h.produce_requests()) - n == 2    # C refused, then C under the new epoch
    h.check_accounting()


@pytest.mark.parametrize("first_fails", [False, True], ids=["resent", "fails"])
def test_a_submissions_outcomes_come_in_record_order_when_an_earlier_batch_is_resent(first_fails):
    """One submission over six batches; the first is answered 7 (written) while the rest are acked.

    The I/O shell maps a submission's outcomes onto its records in the order they
    come. The later batches' outcomes came first: offsets went to the wrong
    records, and had the first batch then failed, the wrong records would have
    been reported failed (and the failed one delivered).
    """
    c = cluster("t")
    h = Harness(c, linger_ms=0, batch_max_bytes=200)
    connect(h)
    values = [b"%03d" % i * 20 for i in range(6)]
    c.errors_after_append[("t", 0)].append(7)
    s = settings(acks=-1, async_send=True, batch_n=6, retry_limit=1 if first_fails else None)
    h.submit("t", 0, values, settings=s, token="T")
    lane = h.engine.lanes[("t", 0, (-1, 1000, 0, None))]
    for _ in range(10):                 # until the first batch's answer (7) came: the next
        h.step()                        # four were acked meanwhile, in the same requests' answers
        if lane.batches[0].attempts:
            break
    assert lane.batches[0].state is BatchState.RETRY and len(h.values("t", 0)) >= 5
    assert [o.base_offset for o in h.outcomes if o.token == "T"] == []
    if first_fails:
        c.produce_errors[("t", 0)].append(19)   # the resend fails too: no retry left
    h.run()
    outs = h.by_token()["T"]
    assert len(outs) == 6 and sum(o.delivered + o.failed for o in outs) == 6
    log = h.values("t", 0)
    done = 0
    for o in outs:                      # each outcome covers the next records of the submission
        n = o.delivered + o.failed
        if o.error == 0:
            assert log[o.base_offset:o.base_offset + n] == values[done:done + n], (outs, log)
        done += n
    assert [o.error for o in outs] == ([19] if first_fails else [0]) + [0] * 5
    h.check_accounting()


def test_later_batches_of_a_failed_one_are_retried_not_bumped():
    c = cluster("t")
    h = Harness(c, linger_ms=0)
    connect(h)
    h.hold_answers.add(1)
    for i in range(3):
        h.submit("t", 0, [f"o{i}".encode()])
        h.step()
    reqs = list(h.unanswered)
    h.unanswered.clear()
    h.hold_answers.clear()
    c.produce_errors[("t", 0)].append(19)   # the first fails; the next two see a gap (45)
    for req in reqs:
        h.engine.response(req, c.answer(req), h.now)
    h.run()
    assert h.values("t", 0)[1:] == [b"o0", b"o1", b"o2"]
    assert not [r for r in h.sent if type(r.msg).__name__ == "InitProducerIdRequest"]


def test_acks_zero_sends_without_producer_id_and_reports_no_offset():
    c = cluster("t")
    h = Harness(c)
    h.submit("t", 0, [b"fire"], settings=settings(acks=0), token="f")
    h.run()
    (req,) = h.produce_requests()
    assert not req.expects_response and req.msg.acks == 0
    (_, _, b), = batches_in(req)
    assert b.producer_id == -1
    assert [(o.error, o.base_offset, o.delivered) for o in h.by_token()["f"]] == [(0, -1, 1)]
    assert not [r for r in h.sent if type(r.msg).__name__ == "InitProducerIdRequest"]


def test_without_idempotence_one_batch_in_flight_per_partition():
    c = cluster("t")
    h = Harness(c, idempotence=False, linger_ms=0)
    connect(h)
    h.hold_answers.add(1)
    for i in range(3):
        h.submit("t", 0, [f"n{i}".encode()])
        h.step()
    assert len(h.unanswered) == 1
    (_, _, b), = batches_in(h.unanswered[0])
    assert b.producer_id == -1
    h.hold_answers.clear()
    for req in list(h.unanswered):
        h.engine.response(req, c.answer(req), h.now)
    h.unanswered.clear()
    h.run()
    assert h.values("t", 0)[1:] == [b"n0", b"n1", b"n2"]


def test_init_producer_id_refused_falls_back_without_idempotence(caplog):
    c = cluster("t")
    c.init_pid_errors.append(31)   # CLUSTER_AUTHORIZATION_FAILED
    h = Harness(c)
    with caplog.at_level(logging.ERROR, logger="kafkad.engine"):
        h.submit("t", 0, [b"x"], token="x")
        h.run()
    assert h.by_token()["x"][0].error == 0
    assert h.engine.groups[(1, 1000, 0, None)].state is PidState.DISABLED
    assert any("without idempotence" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("code", [-1, 47, 90])
def test_a_refused_bump_asks_for_a_new_producer_id_and_keeps_idempotence(code, caplog):
    """A bump refused in any lasting way (Tansu answers -1) is followed by a request for a new id.

    Before, an error other than 47 or 90 turned idempotence off for good: every
    retry after it could duplicate records. Batches of other partitions keep their
    old id and are still deduplicated by the broker; new records go under the new id.
    """
    c = cluster("t")
    h = Harness(c, linger_ms=0)
    connect(h)
    group = h.engine.groups[(1, 1000, 0, None)]
    pid = group.producer_id
    c.produce_errors[("t", 0)].append(59)
    c.init_pid_errors.append(code)
    with caplog.at_level(logging.WARNING, logger="kafkad.engine"):
        h.submit("t", 0, [b"x"], token="x")
        h.run()
    assert [o.error for o in h.by_token()["x"]] == [0]
    inits = [r.msg for r in h.sent if type(r.msg).__name__ == "InitProducerIdRequest"]
    assert [(m.producer_id, m.producer_epoch) for m in inits] == [(pid, 0), (-1, -1)]
    assert group.state is PidState.READY and group.producer_id not in (-1, pid)
    assert c.logs[("t", 0)][-1].producer_id == group.producer_id
    assert "cannot be bumped" in caplog.text and "without idempotence" not in caplog.text
    h.submit("t", 0, [b"y"], token="y")
    h.run()
    assert c.logs[("t", 0)][-1].producer_id == group.producer_id
    h.check_accounting()


def test_a_bump_answered_with_the_same_producer_id_and_epoch_is_not_taken(caplog):
    """Renumbering under the stamp in use would reuse sequences the broker remembers.

    Their records would be answered "duplicate" and never written. A bump answered
    so asks for a new id; a new id answered so too turns idempotence off.
    """
    c = cluster("t")
    h = Harness(c, linger_ms=0)
    connect(h)
    group = h.engine.groups[(1, 1000, 0, None)]
    pid, epoch = group.producer_id, group.epoch
    answer = c._InitProducerIdRequest
    same = [2]

    def stuck(req):
        if same[0]:
            same[0] -= 1
            return InitProducerIdResponse(error_code=0, producer_id=pid, producer_epoch=epoch)
        return answer(req)

    c._InitProducerIdRequest = stuck
    c.produce_errors[("t", 0)].append(59)
    with caplog.at_level(logging.WARNING, logger="kafkad.engine"):
        h.submit("t", 0, [b"x"], token="x")
        h.run()
    assert [o.error for o in h.by_token()["x"]] == [0]
    assert c.logs[("t", 0)][-1].value == b"x" and c.logs[("t", 0)][-1].producer_id == -1
    assert group.state is PidState.DISABLED          # the new id came back the same too
    assert "with the same id and epoch" in caplog.text
    h.check_accounting()


# ---------------------------------------------------------------- metadata and connections


def test_api_versions_error_35_is_retried_at_the_version_the_broker_names():
    c = cluster("t", api_versions_max=1)
    h = Harness(c)
    h.submit("t", 0, [b"x"], token="x")
    h.run()
    av = [r.version for r in h.sent if r.node == -1 and type(r.msg).__name__ == "ApiVersionsRequest"]
    assert av == [3, 1]
    assert h.by_token()["x"][0].error == 0


def test_unknown_topic_fails_exactly_its_records_after_the_wait():
    h = Harness(cluster("t"), unknown_topic_wait_ms=2000, allow_auto_create_topics=False)
    h.submit("nope", 0, [b"x", b"y"], token="nope")
    h.submit("t", 0, [b"fine"], token="fine")
    h.run(until=h.now + 1.9)
    assert "nope" not in h.by_token()
    h.run(until=h.now + 0.3)
    assert [(o.error, o.failed) for o in h.by_token()["nope"]] == [(3, 2)]
    assert h.by_token()["fine"][0].error == 0
    assert h.engine.topic_result("nope", h.now) == (3, [])


def test_auto_created_topic_receives_its_records():
    c = cluster("t", auto_create=True)
    h = Harness(c)
    h.submit("fresh", 1, [b"x"], token="x")
    h.run()
    assert h.by_token()["x"][0].error == 0
    assert h.engine.partitions_for("fresh") == [0, 1, 2]


def test_partition_out_of_range_fails_with_unknown_topic_or_partition():
    h = Harness(cluster("t"))
    connect(h)
    h.submit("t", 7, [b"x"], token="x")
    h.run()
    assert [(o.error, o.failed) for o in h.by_token()["x"]] == [(3, 1)]


def test_metadata_is_refreshed_when_it_gets_old():
    h = Harness(cluster("t"), metadata_max_age_ms=10_000)
    connect(h)
    h.run(until=h.now + 25)
    n = sum(type(r.msg).__name__ == "MetadataRequest" for r in h.sent)
    assert n == 2


def test_bootstrap_tries_the_next_address_when_one_is_down():
    c = cluster("t")
    h = Harness(c, bootstrap_servers=("127.0.0.1:9009", "127.0.0.1:9002"))
    h.submit("t", 0, [b"x"], token="x")
    h.run(until=h.now + 2)
    assert h.by_token()["x"][0].error == 0
    assert -1 in h.connects and -2 in h.connects


# ---------------------------------------------------------------- drain and accounting


def test_drain_returns_exactly_the_undelivered_parts():
    c = cluster("t")
    h = Harness(c)
    connect(h)
    h.up.discard(2)
    h.engine.disconnected(2, h.now, "test")
    h.submit("t", 0, [b"a", b"b"], token="ok")
    sub = h.submit("t", 1, [b"c", b"d", b"e"], token="stuck")
    h.submit("t", 2, [b"f"], settings=ASYNC, token="held")
    h.engine.start_drain()
    h.run(until=h.now + 1)
    assert h.by_token()["held"][0].error == 0   # drain released the hold
    left = h.engine.take_undelivered()
    assert [(s.token, s.values) for s in left] == [("stuck", sub.values)]
    e = h.engine
    assert (e.dropped, e.queued, e.in_flight) == (3, 0, 0)
    h.check_accounting()


def test_undelivered_handed_back_to_their_senders_move_from_dropped_to_handed_back():
    h = Harness(cluster("t"))
    h.submit("t", 0, [b"1", b"2", b"3", b"4", b"5"], settings=ASYNC, token="p")
    h.run(until=h.now + 0.5)    # 3 delivered, 2 held
    assert sum(len(s.values) for s in h.engine.take_undelivered()) == 2
    with pytest.raises(ValueError, match="only 2 were given up"):
        h.engine.note_handed_back(3)
    h.engine.note_handed_back(2)
    st = h.engine.stats()
    assert (st["dropped"], st["handed_back"], st["delivered"]) == (0, 2, 3)
    h.check_accounting()


def test_drain_returns_the_held_remainder_of_a_split_submission():
    h = Harness(cluster("t"))
    h.submit("t", 0, [b"1", b"2", b"3", b"4", b"5"], settings=ASYNC, token="p")
    h.run(until=h.now + 0.5)    # the first batch_n=3 went; 2 are held (batch_t is 5 s)
    left = h.engine.take_undelivered()
    assert [(s.token, s.values) for s in left] == [("p", [b"4", b"5"])]
    assert [(o.delivered, o.base_offset) for o in h.by_token()["p"]] == [(3, 0)]
    assert h.engine.dropped == 2
    h.check_accounting()


def test_stats_balance_and_report_latency_and_topics():
    c = cluster("t")
    h = Harness(c)
    for i in range(30):
        h.submit("t", i % 3, [b"x" * 10], token=i)
    c.produce_errors[("t", 1)].append(87)
    h.run()
    st = h.engine.stats()
    assert st["accepted"] == 30
    assert st["accepted"] == st["delivered"] + st["failed"] + st["dropped"] + st["queued"] + st["in_flight"]
    assert st["failed"] == 10 and st["delivered"] == 20
    assert st["topics"]["t"] == {"delivered": 20, "delivered_bytes": 200, "failed": 10}
    assert {"latency_p50_ms", "latency_p99_ms"} <= set(st["brokers"]["1"])
    assert st["errors"] == {"INVALID_RECORD (87)": 10}


def test_stats_total_records_and_bytes_sent_and_delivered():
    # `kafkad stats` promises "sent" and "bytes": totals beside the per-topic counts
    c = cluster("t")
    h = Harness(c)
    connect(h)
    before = h.engine.stats()
    c.produce_errors[("t", 0)].append(19)      # NOT_ENOUGH_REPLICAS: retried
    h.submit("t", 0, [b"x" * 10, b"y" * 10], token="a")
    h.run()
    assert [(o.error, o.delivered) for o in h.by_token()["a"]] == [(0, 2)]
    st = h.engine.stats()
    written = [p.records for r in h.sent if r.api_key == 0
               for t in r.msg.topic_data for p in t.partition_data]
    assert len(written) == 2                       # the batch went out twice
    assert st["retried"] - before["retried"] == 2
    assert st["sent"] - before["sent"] == 4        # records written, the retry included
    assert st["sent_bytes"] - before["sent_bytes"] == sum(map(len, written))
    assert st["delivered_bytes"] - before["delivered_bytes"] == 20   # keys and values
    assert st["delivered_bytes"] == sum(t["delivered_bytes"] for t in st["topics"].values())

def test_stats_leave_out_the_idle_bootstrap_address_once_brokers_are_known():
    h = Harness(cluster("t"))
    assert list(h.engine.stats()["brokers"]) == ["-1"]       # nothing else known yet
    connect(h)
    brokers = h.engine.stats()["brokers"]
    assert "-1" not in brokers and brokers["1"]["state"] == "ready"

def test_state_machines_show_in_repr_and_refuse_illegal_moves():
    h = Harness(cluster("t"))
    connect(h)
    conn = h.engine.conns[1]
    assert "READY" in repr(conn)
    with pytest.raises(AssertionError, match="READY -> NEGOTIATING"):
        h.engine.connected(1, h.now)
    assert conn.state is ConnState.READY
    h.hold_answers.add(1)
    h.submit("t", 0, [b"x"])
    h.step()
    lane = h.engine.lanes[("t", 0, (1, 1000, 0, None))]
    assert lane.batches[0].state is BatchState.IN_FLIGHT
    assert "IN_FLIGHT" in repr(lane) and "IN_FLIGHT" in repr(lane.batches[0])


def test_requests_not_yet_handed_out_die_with_their_connection():
    h = Harness(cluster("t"))
    h.submit("t", 0, [b"x"], token="x")
    act = h.engine.poll(h.now)
    (node, _, _), = act.connects
    h.engine.connected(node, h.now)          # ApiVersions is queued for the next poll...
    h.engine.disconnected(node, h.now, "test: reset by peer")   # ...but the socket died
    act = h.engine.poll(h.now)
    assert [r for r in act.sends if r.node == node] == []
    h.run(until=h.now + 2)
    assert h.by_token()["x"][0].error == 0


def test_batch_refused_as_too_large_is_halved_and_resent_in_order():
    c = cluster("t")
    h = Harness(c)
    connect(h)
    c.produce_errors[("t", 0)].extend([10, 10])   # the broker's limit is below ours
    values = [f"v{i}".encode() for i in range(8)]
    h.submit("t", 0, values, token="eight")
    h.run()
    assert h.values("t", 0)[1:] == values
    assert sum(o.delivered for o in h.by_token()["eight"]) == 8
    assert [w.sequence for w in c.logs[("t", 0)]] == list(range(9))
    c.produce_errors[("t", 0)].append(10)
    h.submit("t", 0, [b"alone"], token="alone")
    h.run()
    assert [(o.error, o.failed) for o in h.by_token()["alone"]] == [(10, 1)]


def test_reload_applies_live_settings_and_names_the_rest():
    h = Harness(cluster("t"))
    from dataclasses import replace

    new = replace(h.kafka, linger_ms=25.0, bootstrap_servers=("10.0.0.1:9092",),
                  idempotence=False)
    need = h.engine.reconfigure(new, QueueConfig(max_messages=3))
    assert need == ["kafka.bootstrap_servers", "kafka.idempotence"]
    assert h.engine.kafka.linger_ms == 25.0
    assert h.engine.kafka.bootstrap_servers == h.kafka.bootstrap_servers
    h.submit("t", 0, [b"a"])
    with pytest.raises(QueueFull):
        h.submit("t", 0, [b"a"] * 3)


def test_record_size_bound_is_linear_as_the_engine_assumes():
    from kafkad.protocol import record_size_upper_bound as bound

    base = bound(None, None)
    for k, v in [(0, 0), (1, 100), (300, 70_000), (None, 5), (2**20, 2**21)]:
        assert bound(k, v) == base + (k or 0) + (v or 0)


def _broker_lines(caplog, node: int, level: int = logging.INFO) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= level and r.getMessage().startswith(f"kafka broker {node} ")]


def test_a_broker_that_stays_away_is_logged_once_then_summarized_then_welcomed_back(caplog):
    h = Harness(cluster("t"), reconnect_backoff_ms=100, reconnect_backoff_max_ms=500)
    h.up.clear()
    with caplog.at_level(logging.DEBUG, logger="kafkad.engine"):
        h.submit("t", 0, [b"x"], token="x")
        h.run(until=h.now + 11 * 60)
        attempts = len([r for r in caplog.records if "connection failed" in r.getMessage()])
        h.up.add(1)
        h.submit("t", 0, [b"y"], token="y")
        h.run(until=h.now + 2)
    loud = _broker_lines(caplog, -1, logging.WARNING)
    assert attempts > 1000
    assert len(loud) == 3, loud
    assert "connection failed: connection refused" in loud[0]
    assert "further failures are summarized every 5 minutes" in loud[0]
    for line, minutes in zip(loud[1:], (5, 10)):
        count = int(line.split("still failing: ")[1].split()[0])
        assert abs(count - attempts * minutes / 11) < attempts * 0.05, line
    back = [m for m in _broker_lines(caplog, -1) if "connected again" in m]
    assert len(back) == 1 and f"after {attempts} failed attempt(s)" in back[0]
    assert h.by_token()["y"][0].error == 0


def test_a_broker_hanging_up_before_answering_is_logged_once_not_per_reconnect(caplog):
    h = Harness(cluster("t"), reconnect_backoff_ms=50, reconnect_backoff_max_ms=200,
                delivery_timeout_ms=2000)
    h.hang_up.add(1)
    with caplog.at_level(logging.DEBUG, logger="kafkad.engine"):
        h.submit("t", 0, [b"x"], token="x")
        h.run(until=h.now + 2.1)
    every = _broker_lines(caplog, -1, logging.DEBUG)
    loud = _broker_lines(caplog, -1, logging.INFO)
    assert len(every) >= 10
    assert loud == ["kafka broker -1 (127.0.0.1:9001): connection closed before it was ready: "
                    "closed by the broker (retrying with backoff; further failures are "
                    "summarized every 5 minutes)"]


def test_a_new_kind_of_failure_is_logged_at_once(caplog):
    h = Harness(cluster("t"), security_protocol="SASL_PLAINTEXT", reconnect_backoff_ms=50,
                reconnect_backoff_max_ms=200)
    h.up.clear()
    with caplog.at_level(logging.INFO, logger="kafkad.engine"):
        h.submit("t", 0, [b"x"], token="x")
        h.run(until=h.now + 2)
        h.up.add(1)
        h.login_refusal = ("SaslAuthenticationFailedError (58): refused", 58)
        h.run(until=h.now + 2)
    loud = _broker_lines(caplog, -1)
    assert [m.split(": ")[1] for m in loud] == ["connection failed", "authentication failed"]


@pytest.mark.parametrize("kw,word", [
    (dict(bootstrap_servers=()), "bootstrap_servers"),
    (dict(bootstrap_servers=("no-port",)), "bootstrap_servers"),
    (dict(max_in_flight_per_connection=6), "max_in_flight_per_connection"),
])
def test_unusable_settings_are_refused_naming_the_key(kw, word):
    with pytest.raises(ValueError, match=word):
        Harness(cluster("t"), **kw)


def test_nothing_new_goes_to_a_broker_whose_send_buffer_is_full():
    h = Harness(cluster("t"))
    connect(h)
    h.engine.set_writable(1, False)
    h.submit("t", 0, [b"waits"], settings=settings(acks=0), token="w")
    h.submit("t", 1, [b"goes"], settings=settings(acks=0), token="g")
    h.run(until=h.now + 1)
    assert "w" not in h.by_token() and h.by_token()["g"][0].error == 0
    h.engine.set_writable(1, True)
    h.run()
    assert h.by_token()["w"][0].error == 0


@pytest.mark.parametrize("field,bad,word", [
    ("values", [b"ok", "text"], r"sub.values\[1\]: expected bytes or None, got str"),
    ("keys", [7], r"sub.keys\[0\]: expected bytes or None, got int"),
])
def test_submissions_with_wrong_types_are_refused_before_anything_is_taken(field, bad, word):
    from kafkad.engine.types import SessionSettings, Submission

    h = Harness(cluster("t"))
    kw = dict(keys=[None] * len(bad), values=[b"v"] * len(bad))
    kw[field] = bad
    with pytest.raises(TypeError, match=word):
        h.engine.submit(Submission(b"s", SessionSettings(), "t", 0, timestamp_ms=0, **kw), h.now)
    assert h.engine.accepted == 0


def test_a_batch_that_cannot_be_encoded_fails_without_wedging_its_lane(monkeypatch, caplog):
    import kafkad.engine.engine as engine_mod

    h = Harness(cluster("t"))
    connect(h)
    real = engine_mod.encode_record_batch

    def broken(keys, values, *a, **kw):
        if b"poison" in values:
            raise RuntimeError("codec library missing")
        return real(keys, values, *a, **kw)

    monkeypatch.setattr(engine_mod, "encode_record_batch", broken)
    with caplog.at_level(logging.WARNING, logger="kafkad.engine"):
        h.submit("t", 0, [b"poison"], token="p")
        h.run()
        h.submit("t", 0, [b"after"], token="a")
        h.run()
    assert [(o.error, o.failed) for o in h.by_token()["p"]] == [(-1, 1)]
    assert h.by_token()["a"][0].error == 0
    assert any("codec library missing" in r.getMessage() for r in caplog.records)


def test_a_known_topics_new_partition_count_is_reported_once_by_poll():
    c = cluster("t", "u")
    h = Harness(c, metadata_max_age_ms=1000)
    connect(h, "t", "u")
    assert h.engine.partitions_for("t") == [0, 1, 2]
    assert h.partition_changes == []            # a first layout is no change
    c.create("t", 5)
    h.run(until=h.now + 1.5)                    # the next refresh sees it
    assert h.partition_changes == [("t", 0, [0, 1, 2, 3, 4])]
    h.submit("t", 4, [b"new"], token="p4")      # and the new partition takes records
    h.run(until=h.now + 2.5)
    assert h.by_token()["p4"][0].error == 0 and h.values("t", 4) == [b"new"]
    assert h.partition_changes == [("t", 0, [0, 1, 2, 3, 4])]   # reported once, "u" never
    del c.topics["u"]                           # UNKNOWN_TOPIC_OR_PARTITION is retriable:
    h.run(until=h.now + 1.5)                    # the last layout stays, nothing to report
    assert h.partition_changes == [("t", 0, [0, 1, 2, 3, 4])]


def test_bootstrap_connections_are_closed_once_the_brokers_are_known():
    h = Harness(cluster("t"), metadata_max_age_ms=1000)
    connect(h)
    assert -1 in h.closes
    assert h.engine.conns[-1].state in (ConnState.BACKOFF, ConnState.DOWN)
    h.run(until=h.now + 1.5)   # the next refresh goes to a broker by node id
    meta = [r for r in h.sent if type(r.msg).__name__ == "MetadataRequest"]
    assert meta and all(r.node > 0 for r in meta)


def test_bootstrap_stays_open_while_no_advertised_broker_can_be_reached():
    """The cluster moved: its old brokers are gone, the bootstrap address knows the new list.

    The bootstrap connection must live long enough to ask for it, instead of
    being closed as soon as it is ready (and reopened at once, in a loop).
    """
    c = cluster("t")
    h = Harness(c, bootstrap_servers=("127.0.0.1:9004",), reconnect_backoff_ms=50,
                reconnect_backoff_max_ms=200)
    h.up.add(4)          # the bootstrap address: broker 4, not among those advertised
    connect(h)
    h.up = {4, 5}
    c.brokers = (5,)
    for p in range(3):
        c.move_leader("t", p, 5)
    for node in (1, 2, 3):
        h.engine.disconnected(node, h.now, "test: broker gone")
    h.connects.clear()
    h.submit("t", 0, [b"x"], token="x")
    h.run(until=h.now + 3)
    assert [(o.error, o.delivered) for o in h.by_token()["x"]] == [(0, 1)]
    assert h.connects.count(-1) <= 2
    assert h.engine.conns[-1].state is not ConnState.READY   # retired once broker 5 was ready


def test_a_not_leader_answer_naming_the_new_leader_is_followed_at_once():
    c = cluster("t", leader_hints=True)
    h = Harness(c)
    connect(h)
    c.move_leader("t", 0, 3)
    h.sent.clear()
    h.submit("t", 0, [b"moved"], token="m")
    h.step()   # sent to broker 1, answered NOT_LEADER naming broker 3
    assert [(type(r.msg).__name__, r.node) for r in h.sent] == [("ProduceRequest", 1)]
    assert h.engine.metadata.leader("t", 0) == 3   # taken from the answer, no Metadata yet
    h.run()
    assert h.produce_requests()[-1].node == 3 and h.by_token()["m"][0].error == 0


def test_a_leader_hint_older_than_what_we_know_is_ignored():
    h = Harness(cluster("t"))
    connect(h)
    md = h.engine.metadata
    md.topics["t"].leaders[0] = (2, 5)
    assert not md.leader_hint("t", 0, 1, 4)
    assert md.leader_hint("t", 0, 3, 6) and md.leader("t", 0) == 3
    assert not md.leader_hint("t", 0, 99, 7)   # a broker we do not know


def test_held_records_for_an_unknown_topic_fail_as_unknown_when_released_later():
    h = Harness(cluster("t"), unknown_topic_wait_ms=1000, allow_auto_create_topics=False)
    h.submit("gone", 0, [b"sync"], token="sync")
    h.submit("gone", 0, [b"held"], settings=settings(async_send=True, batch_n=10, batch_t=5.0),
             token="held")
    h.run(until=h.now + 2)
    assert [o.error for o in h.by_token()["sync"]] == [3]
    h.run(until=h.now + 10)
    assert [(o.error, o.failed) for o in h.by_token()["held"]] == [(3, 1)]


class _Socket:
    """The driver's view of one connection in the interleaving test."""

    def __init__(self, node: int) -> None:
        self.node = node
        self.up = False
        self.authing = False
        self.pending: list = []


@pytest.mark.parametrize("sasl", [False, True], ids=["plain", "sasl"])
@pytest.mark.parametrize("seed", range(12))
def test_random_interleavings_never_hand_out_work_for_a_closed_connection(seed, sasl):
    """Events in random order, as a driver sees them: every send and SASL start finds a socket.

    The driver below keeps its sockets exactly as kafkad.broker does (drops
    one on connect_failed / disconnected / auth_failed, closes on request),
    and connections die at any moment: between `connected` and the poll
    that hands out ApiVersions, during SASL, with answers outstanding.
    """
    import random

    from kafkad.engine.types import SessionSettings, Submission
    from kafkad.protocol import ApiVersionsResponse

    rng = random.Random(seed)
    c = cluster("t")
    h = Harness(c, bootstrap_servers=("127.0.0.1:9001", "127.0.0.1:9002"),
                reconnect_backoff_ms=rng.choice([0, 1, 10]), reconnect_backoff_max_ms=50,
                request_timeout_ms=200, delivery_timeout_ms=5000,
                security_protocol="SASL_PLAINTEXT" if sasl else "PLAINTEXT")
    e, now = h.engine, h.now
    sockets: dict[int, _Socket] = {}
    for step in range(600):
        r = rng.random()
        if r < 0.25:
            act = e.poll(now)
            for node in act.closes:
                sockets.pop(node, None)
            for node, _, _ in act.connects:
                sockets[node] = _Socket(node)
            for req in act.sends:
                sock = sockets.get(req.node)
                assert sock is not None and sock.up, f"step {step}: {req!r} for no open socket"
                if req.expects_response:
                    sock.pending.append(req)
            for node in act.authenticate:
                assert node in sockets and sockets[node].up, f"step {step}: SASL for no socket"
                sockets[node].authing = True
        elif r < 0.35:
            now += rng.choice([0.001, 0.05, 0.3])
        elif r < 0.45:
            s = SessionSettings(acks=rng.choice([0, 1, -1]), async_send=rng.random() < 0.3,
                                batch_n=2, batch_t=0.1)
            e.submit(Submission(b"s", s, "t", rng.randrange(3), [None], [b"x"], 1, None), now)
        elif sockets:
            sock = rng.choice(list(sockets.values()))
            x = rng.random()
            if not sock.up:
                if x < 0.7:
                    sock.up = True
                    e.connected(sock.node, now)
                else:
                    del sockets[sock.node]
                    e.connect_failed(sock.node, now, "refused")
            elif x < 0.15:
                del sockets[sock.node]
                e.disconnected(sock.node, now, "reset")
            elif sock.authing and x < 0.5:
                sock.authing = False
                if x < 0.25:
                    del sockets[sock.node]
                    e.auth_failed(sock.node, now, "refused")
                else:
                    e.authenticated(sock.node, now)
            elif sock.pending:
                req = sock.pending.pop(0)
                if type(req.msg).__name__ == "ApiVersionsRequest" and rng.random() < 0.05:
                    msg = ApiVersionsResponse(error_code=rng.choice([35, 1]), api_keys=[])
                else:
                    if rng.random() < 0.1:
                        c.produce_errors[("t", rng.randrange(3))].append(rng.choice([6, 7, 45, 10]))
                    msg = c.answer(req)
                e.response(req, msg, now)
        h.check_accounting()


# ---------------------------------------------------------------- an unreachable leader


def test_leadership_moving_away_from_an_unreachable_leader_is_seen_without_waiting_max_age():
    c = cluster("t")
    for p in range(3):
        c.move_leader("t", p, 1)
    h = Harness(c, reconnect_backoff_ms=50, reconnect_backoff_max_ms=1000)
    connect(h)
    h.submit("t", 1, [b"warm-1"])
    h.submit("t", 2, [b"warm-2"])
    h.run()
    h.outcomes.clear()
    h.sent.clear()
    h.up.discard(1)
    h.engine.disconnected(1, h.now, "closed by the broker")
    sent = [h.submit("t", p, [f"p{p}-{i}".encode() for i in range(3)], token=p) for p in range(3)]
    h.run(until=h.now + 0.5)     # broker 1 refuses every reconnect meanwhile
    assert not h.by_token()
    for p in range(3):
        c.move_leader("t", p, 2 + p % 2)
    moved = h.now
    h.run(until=moved + 1.5)     # refreshes back off to retry_backoff_max_ms (1 s)
    got = h.by_token()
    assert all(got[p] and got[p][0].error == 0 for p in range(3)), got
    for p, s in enumerate(sent):
        assert h.values("t", p)[-3:] == s.values
    metadata = [r for r in h.sent if type(r.msg).__name__ == "MetadataRequest"]
    assert 2 <= len(metadata) <= 12, len(metadata)   # refreshed, at a bounded rate
    assert all(r.node != 1 for r in metadata)


def test_refreshes_for_an_unreachable_leader_back_off_and_stop_once_it_is_back():
    c = cluster("t")
    h = Harness(c, reconnect_backoff_ms=50, reconnect_backoff_max_ms=1000)
    connect(h)
    h.up.discard(1)
    h.engine.disconnected(1, h.now, "closed by the broker")
    h.submit("t", 0, [b"waits"], token="w")
    start = h.now
    h.run(until=start + 10)
    times = [r.sent_at - start for r in h.sent if type(r.msg).__name__ == "MetadataRequest"]
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert len(times) >= 5 and max(gaps) <= 1.0 * 1.2 + 1e-9 and min(gaps[-3:]) >= 0.8 - 1e-9, times
    h.up.add(1)
    h.run(until=h.now + 2)
    assert h.by_token()["w"][0].error == 0
    h.sent.clear()
    h.run(until=h.now + 30)
    assert not [r for r in h.sent if type(r.msg).__name__ == "MetadataRequest"]


# ---------------------------------------------------------------- flushing a session's hold


def test_flush_session_sends_that_sessions_held_records_at_once_and_only_those():
    h = Harness(cluster("t"), linger_ms=5)
    slow = settings(async_send=True, batch_n=100, batch_t=20.0)
    h.submit("t", 0, [b"a1", b"a2"], settings=slow, session=b"leaving", token="a")
    h.submit("t", 1, [b"a3"], settings=slow, session=b"leaving", token="b")
    h.submit("t", 0, [b"s1"], settings=slow, session=b"staying", token="s")
    h.run(until=h.now + 1)
    assert not h.by_token() and h.engine.held == 4
    h.engine.flush_session(b"leaving", h.now)
    assert h.engine.held == 1
    flushed_at = h.now
    h.run(until=h.now + 1)
    got = h.by_token()
    assert [o.delivered for o in got["a"]] == [2] and [o.delivered for o in got["b"]] == [1]
    assert "s" not in got     # another session's hold keeps its own batch_t
    # they went like sync records would, subject to linger_ms only
    produce = [r for r in h.produce_requests() if r.sent_at >= flushed_at]
    assert produce and min(r.sent_at for r in produce) == pytest.approx(flushed_at + 0.005)
    h.engine.flush_session(b"unknown-session", h.now)   # nothing held: nothing happens
    h.run(until=h.now + 20)
    assert h.by_token()["s"][0].delivered == 1
    h.check_accounting()


# ---------------------------------------------------------------- accounting after a drain


@pytest.mark.parametrize("after", ["late_answer", "connection_lost", "request_timeout"])
def test_stats_balance_after_drain_returns_records_on_the_wire(after):
    c = cluster("t")
    h = Harness(c, request_timeout_ms=5000)
    connect(h)
    h.hold_answers.add(1)
    h.submit("t", 0, [b"w1", b"w2"], token="wire")          # on the wire to broker 1, unanswered
    h.submit("t", 1, [b"ok"], token="ok")                    # delivered by broker 2
    h.submit("t", 2, [b"h1", b"h2", b"h3", b"h4"], settings=settings(
        async_send=True, batch_n=100, batch_t=60.0), token="held")
    h.run(until=h.now + 0.1)
    assert h.engine.in_flight == 2 and h.engine.held == 4
    h.engine.start_drain()
    h.run(until=h.now + 0.1)
    assert h.by_token()["held"][0].delivered == 4   # the drain released the hold
    left = h.engine.take_undelivered()
    assert [(s.token, s.values) for s in left] == [("wire", [b"w1", b"w2"])]
    st = h.engine.stats()
    assert (st["dropped"], st["queued"], st["in_flight"], st["delivered"]) == (2, 0, 0, 1 + 1 + 4)
    h.check_accounting()
    # what happens on the wire afterwards changes nothing: the records were handed back
    h.hold_answers.discard(1)
    if after == "late_answer":
        for req in h.unanswered:
            h.engine.response(req, c.answer(req), h.now)
    elif after == "connection_lost":
        h.engine.disconnected(1, h.now, "closed by the broker")
    h.run(until=h.now + 10)
    assert h.engine.stats() == {**h.engine.stats(), "accepted": st["accepted"],
                                "delivered": st["delivered"], "failed": 0, "dropped": 2,
                                "retried": 0}
    assert "wire" not in h.by_token()       # returned, not also reported
    h.check_accounting()


def test_the_next_deadline_covers_a_request_sent_by_the_same_poll():
    # The last request of a stream, unanswered: nothing else happens after the
    # poll that sends it, so that poll's deadline alone must bring the engine
    # back to time it out (the harness runs without the safety sweep).
    h = Harness(cluster("t"), request_timeout_ms=1000)
    connect(h)
    h.hold_answers.add(1)
    h.submit("t", 0, [b"last"], token="last")
    h.step()
    (req,) = h.produce_requests()
    timeout_at = req.sent_at + 1.0
    while 1 not in h.closes:
        assert h.deadline is not None and h.deadline <= timeout_at, (h.deadline, timeout_at)
        h.now = h.deadline
        h.step()
    assert h.now == timeout_at


def test_a_topic_wanted_while_a_metadata_request_is_out_is_asked_for_next():
    # fetch_partitions' want_topic can come while a Metadata request that does
    # not name the topic is on the wire; its answer must not settle the need.
    c = cluster("t")
    h = Harness(c, unknown_topic_wait_ms=500, allow_auto_create_topics=False)
    plain = c.answer

    def answer(req):
        if type(req.msg).__name__ == "MetadataRequest" and not h.engine.metadata.topics:
            h.engine.want_topic("nope", h.now)   # arrives while the first one is out
        return plain(req)

    c.answer = answer
    h.submit("t", 0, [b"x"], token="x")
    h.run(until=h.now + 1.0)
    asked = [[t.name for t in r.msg.topics] for r in c.requests
             if type(r.msg).__name__ == "MetadataRequest"]
    assert "nope" not in asked[0] and any("nope" in names for names in asked[1:]), asked
    assert h.engine.topic_result("nope", h.now) == (3, [])
    assert h.by_token()["x"][0].error == 0


def test_nothing_is_taken_once_drain_has_handed_the_undelivered_back():
    from kafkad.engine.types import ProducerDrained

    h = Harness(cluster("t"))
    connect(h)
    h.engine.start_drain()
    assert h.engine.take_undelivered() == []
    with pytest.raises(ProducerDrained, match="drained"):
        h.submit("t", 0, [b"late"], token="late")
    assert isinstance(ProducerDrained("x"), QueueFull)   # callers that defer on QueueFull keep it
    assert h.engine.accepted == 1 and h.engine.queued == 0   # only the warm-up record
    h.check_accounting()


def test_messages_settled_at_stop_leave_dropped():
    h = Harness(cluster("t"))
    h.submit("t", 0, [b"a", b"b", b"c"])
    h.submit("t", 1, [b"d", b"e"])
    left = h.engine.take_undelivered()
    assert sum(len(s) for s in left) == 5 and h.engine.dropped == 5
    h.engine.note_settled_at_stop(failed={"t": 2}, code=7, kept=2)
    st = h.engine.stats()
    assert (st["dropped"], st["failed"], st["kept_in_spool"]) == (1, 2, 2)
    assert st["errors"]["REQUEST_TIMED_OUT (7)"] == 2
    assert st["topics"]["t"]["failed"] == 2
    h.check_accounting()
    with pytest.raises(ValueError, match="only 1 were given up"):
        h.engine.note_settled_at_stop(kept=2)


@pytest.mark.parametrize("code", [7, 20])
def test_a_batch_written_but_failed_never_lends_its_sequence_to_later_records(code):
    """acks=-1: the leader appended A, then answered `code` (its replicas fell short).

    A fails (no retries). If the records behind it took over A's sequence numbers,
    the broker would answer B as a duplicate of A (with A's offset) and never write
    it: B reported delivered, and lost. A bump of the epoch renumbers them instead.
    """
    c = cluster("t")
    h = Harness(c)
    connect(h)
    strict = settings(acks=-1, async_send=True, batch_n=1, retry_limit=0)
    c.errors_after_append[("t", 0)].append(code)
    h.submit("t", 0, [b"A"], settings=strict, token="A")
    h.run()
    h.submit("t", 0, [b"B"], settings=strict, token="B")
    h.submit("t", 0, [b"C"], settings=strict, token="C")
    h.run()
    got = {tok: [(o.error, o.base_offset) for o in outs] for tok, outs in h.by_token().items()}
    assert got["A"] == [(code, -1)]
    logged = h.values("t", 0)
    for tok in ("B", "C"):
        [(error, offset)] = got[tok]
        assert error == 0 and logged[offset] == tok.encode(), (tok, got, logged)   # (offset = log index)
    assert logged.count(b"B") == 1 and logged.count(b"C") == 1
    h.check_accounting()


def _bump_beside_a_written_batch(h: Harness, s) -> None:
    """t[0]'s leader lost our producer (59: a bump) as t[1]'s wrote B and answered 20."""
    c = h.cluster
    before = h.values("t", 1)
    c.produce_errors[("t", 0)].append(59)
    c.errors_after_append[("t", 1)].append(20)
    h.submit("t", 0, [b"A"], settings=s, token="A")
    h.submit("t", 1, [b"B"], settings=s, token="B")
    h.step()                                   # both sent: A refused, B written and answered 20
    assert h.engine.groups[(-1, 1000, 0, None)].state is PidState.BUMP_PENDING
    assert h.values("t", 1) == before + [b"B"]


def _stamps(h: Harness, tp=("t", 1)) -> list:
    """(epoch, base sequence, values) of every batch sent to `tp`, in order."""
    return [(b.producer_epoch, b.base_sequence, [r.value for r in b.records])
            for r in h.produce_requests() for t, p, b in batches_in(r) if (t, p) == tp]


def test_a_bump_leaves_another_partitions_unsettled_batch_under_its_own_epoch():
    """KIP-360: only the partition whose sequence state was lost starts over under the new epoch.

    acks=-1. t[1]'s leader wrote B and answered 20 (its replicas fell short); t[0]'s
    leader lost our producer (UNKNOWN_PRODUCER_ID), which bumps the epoch. B's resend
    under the new epoch from sequence 0 is a new batch to its broker, written a second
    time; under the epoch and sequence of its first send it is the duplicate it is.
    B2, submitted meanwhile, waits for B: the first batch under the new epoch makes the
    broker refuse any later one under the old.
    """
    c = cluster("t")
    h = Harness(c, linger_ms=0)
    connect(h)
    s = settings(acks=-1, async_send=True, batch_n=1)
    h.submit("t", 0, [b"A0"], settings=s, token="A0")
    h.submit("t", 1, [b"B0"], settings=s, token="B0")
    h.run()
    group = h.engine.groups[(-1, 1000, 0, None)]
    epoch = group.epoch
    _bump_beside_a_written_batch(h, s)
    h.submit("t", 1, [b"B2"], settings=s, token="B2")
    h.run()
    assert group.epoch == epoch + 1
    assert h.values("t", 0)[1:] == [b"A0", b"A"]
    assert h.values("t", 1) == [b"B0", b"B", b"B2"]            # B once
    assert [(o.error, o.base_offset) for o in h.by_token()["B"]] == [(0, 1)]
    assert [(o.error, o.base_offset) for o in h.by_token()["B2"]] == [(0, 2)]
    assert [stamp[:2] for stamp in _stamps(h)] == [(epoch, 0), (epoch, 1), (epoch, 1), (epoch + 1, 0)]
    h.check_accounting()


@pytest.mark.parametrize("second", [7, 59])
def test_a_partition_still_under_the_old_epoch_starts_over_without_another_bump(second):
    """After a bump, t[1]'s written-but-failed B is resent under the old epoch and fails again.

    7 (retry limit reached: B fails, and may have been written): the numbers after
    it are not safe under the old epoch. 59 (t[1]'s broker lost that producer): they
    are void. Either way t[1] has never sent under the new epoch, so it takes it
    from sequence 0 without a second bump.
    """
    c = cluster("t")
    h = Harness(c, linger_ms=0)
    connect(h)
    s = settings(acks=-1, async_send=True, batch_n=1, retry_limit=1 if second == 7 else None)
    h.submit("t", 1, [b"B0"], settings=s, token="B0")
    h.run()
    group = h.engine.groups[(-1, 1000, 0, None)]
    epoch = group.epoch
    _bump_beside_a_written_batch(h, s)
    c.produce_errors[("t", 1)].append(second)  # B's resend
    h.run()
    h.submit("t", 1, [b"C"], settings=s, token="C")
    h.run()
    bumps = [r for r in h.sent if type(r.msg).__name__ == "InitProducerIdRequest" and r.msg.producer_id >= 0]
    assert len(bumps) == 1 and group.epoch == epoch + 1
    stamps = _stamps(h)
    if second == 7:
        assert [(o.error, o.delivered) for o in h.by_token()["B"]] == [(7, 0)]
        assert stamps[1:] == [(epoch, 1, [b"B"]), (epoch, 1, [b"B"]), (epoch + 1, 0, [b"C"])]
        assert h.values("t", 1) == [b"B0", b"B", b"C"]
    else:
        # the broker lost B's state: its resend under the new epoch is a new batch
        assert [(o.error, o.delivered) for o in h.by_token()["B"]] == [(0, 1)]
        assert stamps[1:] == [(epoch, 1, [b"B"]), (epoch, 1, [b"B"]), (epoch + 1, 0, [b"B"]),
                              (epoch + 1, 1, [b"C"])]
    assert [o.error for o in h.by_token()["C"]] == [0]
    h.check_accounting()


def test_a_broker_without_init_producer_id_gets_records_without_idempotence(caplog):
    # A Kafka-compatible broker that lacks API 22: the group was moved NONE -> DISABLED,
    # which the state table refuses, and the poll failed every time before any send.
    c = cluster("t", missing_apis=frozenset({22}))
    h = Harness(c)
    with caplog.at_level(logging.ERROR, logger="kafkad.engine"):
        h.submit("t", 0, [b"a", b"b"], token="plain")
        h.run()
    assert [(o.error, o.delivered) for o in h.by_token()["plain"]] == [(0, 2)]
    assert [w.producer_id for w in c.logs[("t", 0)]] == [-1, -1]
    assert "does not offer InitProducerId" in caplog.text
    h.check_accounting()


def test_a_topic_created_again_is_followed_to_its_new_leader():
    """Its leader epochs start over at 0: only its new topic id says the old ones are void."""
    c = cluster("t")
    h = Harness(c, delivery_timeout_ms=20_000)
    connect(h)
    for _ in range(3):
        c.move_leader("t", 0, 2)                  # epoch 3, broker 2
    h.submit("t", 0, [b"before"], token="before")
    h.run()
    assert h.by_token()["before"][0].error == 0
    assert h.engine.metadata.topics["t"].leaders[0] == (2, 3)
    c.delete("t")
    c.create("t", 3)                             # epoch 0, broker 1
    h.submit("t", 0, [b"after"], token="after")
    h.run(until=h.now + 10)
    assert [(o.error, o.delivered) for o in h.by_token()["after"]] == [(0, 1)]
    assert h.values("t", 0) == [b"after"]
    assert h.engine.metadata.topics["t"].leaders[0] == (1, 0)
    h.check_accounting()
