"""The Produce fast paths agree with the schema codec, and cover the usual requests and answers."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafkad.protocol import (
    ProduceRequest,
    ProduceResponse,
    ProtocolError,
    decode_body,
    decode_request,
    decode_response,
    encode_request,
    encode_response,
)
from kafkad.protocol.framing import _response_header_flexible, _skip_tagged
from kafkad.protocol.produce import (
    decode_produce_raw,
    decode_produce_response,
    encode_produce_request,
    produce_body,
    produce_frame,
    produce_request,
)

from .strategies import FAST, message_strategy

P = ProduceResponse
VERSIONS = list(range(P.MIN_VERSION, P.MAX_VERSION + 1))


def _schema_decode(version: int, frame: bytes):
    """What the schema decoder alone makes of a frame (the reference)."""
    pos = 4
    if _response_header_flexible(P, version):
        pos = _skip_tagged(frame, pos, "header")
    msg, end = decode_body(P, version, frame, pos)
    return int.from_bytes(frame[:4], "big", signed=True), msg, end


def _usual(version: int):
    """Answers of the shape a healthy cluster sends: what the fast path must take."""
    part = st.builds(
        P.PartitionProduceResponse, index=st.integers(0, 2**31 - 1),
        error_code=st.integers(-1, 133), base_offset=st.integers(-1, 2**63 - 1),
        log_append_time_ms=st.integers(-1, 2**50),
        log_start_offset=st.integers(-1, 2**40) if version >= 5 else st.just(-1))
    topic = st.builds(P.TopicProduceResponse, name=st.text(min_size=1, max_size=40),
                      partition_responses=st.lists(part, max_size=4).map(tuple))
    return st.builds(P, responses=st.lists(topic, max_size=3).map(tuple),
                     throttle_time_ms=st.integers(0, 2**31 - 1))


@pytest.mark.parametrize("version", VERSIONS)
def test_usual_answers_take_the_fast_path_and_decode_as_the_schema_does(version):
    @FAST
    @given(_usual(version), st.integers(-(1 << 31), (1 << 31) - 1))
    def check(msg, cid):
        frame = encode_response(msg, version, cid)[4:]
        fast = decode_produce_response(version, frame, strict=True)
        assert fast is not None, msg
        c, ref, end = _schema_decode(version, frame)
        assert end == len(frame)
        assert fast == (c, ref) == (cid, msg)
    check()


@pytest.mark.parametrize("version", VERSIONS)
def test_any_answer_decodes_as_the_schema_does_with_or_without_the_fast_path(version):
    # record errors, error messages, KIP-951 tagged fields: the fast path says
    # None and decode_response falls back; either way the result is the same.
    @FAST
    @given(message_strategy(P, version), st.integers(-(1 << 31), (1 << 31) - 1))
    def check(msg, cid):
        frame = encode_response(msg, version, cid)[4:]
        fast = decode_produce_response(version, frame)
        if fast is not None:
            assert fast == (cid, msg)
        assert decode_response(P, version, frame, strict=True) == (cid, msg)
    check()


def test_answers_outside_the_usual_shape_are_left_to_the_schema_decoder():
    part = P.PartitionProduceResponse
    odd = [
        (8, part(index=0, error_code=18, record_errors=(P.BatchIndexAndErrorMessage(batch_index=0),))),
        (8, part(index=0, error_code=87, error_message="bad record")),
        (10, part(index=0, error_code=6, current_leader=P.LeaderIdAndEpoch(leader_id=2, leader_epoch=5))),
    ]
    for version, p in odd:
        msg = P(responses=(P.TopicProduceResponse(name="t", partition_responses=(p,)),))
        frame = encode_response(msg, version, 7)[4:]
        assert decode_produce_response(version, frame) is None
        assert decode_response(P, version, frame) == (7, msg)
    hint = P(node_endpoints=(P.NodeEndpoint(node_id=1, host="h", port=9092),))
    frame = encode_response(hint, 10, 7)[4:]
    assert decode_produce_response(10, frame) is None
    assert decode_response(P, 10, frame) == (7, hint)


@pytest.mark.parametrize("version", VERSIONS)
def test_truncated_answers_are_errors_from_the_schema_decoder(version):
    msg = P(responses=(P.TopicProduceResponse(name="topic", partition_responses=(
        P.PartitionProduceResponse(index=1, base_offset=42),)),))
    frame = encode_response(msg, version, 3)[4:]
    for cut in range(len(frame)):
        assert decode_produce_response(version, frame[:cut]) is None
        with pytest.raises(ProtocolError):
            decode_response(P, version, frame[:cut])


def test_bytes_after_the_body_are_ignored_unless_strict():
    msg = P(responses=(P.TopicProduceResponse(name="t", partition_responses=(
        P.PartitionProduceResponse(index=0, base_offset=1),)),))
    frame = encode_response(msg, 11, 3)[4:] + b"\x00"
    assert decode_produce_response(11, frame) == (3, msg)
    assert decode_produce_response(11, frame, strict=True) is None
    with pytest.raises(ProtocolError):
        decode_response(P, 11, frame, strict=True)


REQ_VERSIONS = list(range(ProduceRequest.MIN_VERSION, ProduceRequest.MAX_VERSION + 1))


@pytest.mark.parametrize("version", REQ_VERSIONS)
def test_produce_requests_encode_byte_for_byte_as_the_schema_does(version):
    @FAST
    @given(message_strategy(ProduceRequest, version), st.integers(-(1 << 31), (1 << 31) - 1),
           st.one_of(st.none(), st.text(max_size=10)), st.booleans())
    def check(msg, cid, client_id, as_lists):
        if as_lists:   # the engine builds its requests with lists
            msg = ProduceRequest(transactional_id=msg.transactional_id, acks=msg.acks,
                                 timeout_ms=msg.timeout_ms,
                                 topic_data=[ProduceRequest.TopicProduceData(
                                     name=t.name, partition_data=list(t.partition_data))
                                     for t in msg.topic_data])
        fast = encode_produce_request(msg, version, cid, client_id)
        assert fast is not None
        parts: list = []
        ProduceRequest._ENCODERS[version](parts, msg)
        body = b"".join(parts)
        assert fast == encode_request(msg, version, cid, client_id)
        header, got = decode_request(fast[4:])
        assert (header.api_key, header.api_version, header.correlation_id, header.client_id) == (
            0, version, cid, client_id)
        assert fast.endswith(body)
    check()


def test_requests_the_fast_encoder_does_not_expect_get_the_schema_encoders_errors():
    good = ProduceRequest(acks=1, timeout_ms=5, topic_data=[ProduceRequest.TopicProduceData(
        name="t", partition_data=[ProduceRequest.PartitionProduceData(index=0, records=b"x")])])
    assert encode_produce_request(good, 9, 1, "c") is not None
    bad = [
        (ProduceRequest(acks=1.0, timeout_ms=5), "acks"),
        (ProduceRequest(acks=1, timeout_ms=2**31), "timeout_ms"),
        (ProduceRequest(acks=1, timeout_ms=5, topic_data=[ProduceRequest.TopicProduceData(
            name=7)]), "name"),
        (ProduceRequest(acks=1, timeout_ms=5, topic_data=[ProduceRequest.TopicProduceData(
            name="t", partition_data=[ProduceRequest.PartitionProduceData(index=0, records="x")])]),
         "records"),
    ]
    for msg, field in bad:
        for version in (3, 9):
            assert encode_produce_request(msg, version, 1, "c") is None
            with pytest.raises((TypeError, ValueError), match=field):
                encode_request(msg, version, 1, "c")
    with pytest.raises(ValueError, match="correlation_id"):
        encode_request(good, 9, 2**31, "c")
    with pytest.raises(TypeError, match="client_id"):
        encode_request(good, 9, 1, b"c")


@pytest.mark.parametrize("version", REQ_VERSIONS)
def test_a_body_from_plain_values_framed_is_the_request_the_schema_encodes(version):
    # the engine's Produce requests: produce_body from tuples, produce_frame per correlation id
    @FAST
    @given(st.sampled_from([0, 1, -1]), st.integers(0, 2**31 - 1),
           st.lists(st.tuples(st.text(min_size=1, max_size=30),
                              st.lists(st.tuples(st.integers(0, 2**31 - 1),
                                                 st.one_of(st.none(), st.binary(max_size=300))),
                                       max_size=3)), max_size=3),
           st.integers(-(1 << 31), (1 << 31) - 1), st.one_of(st.none(), st.text(max_size=10)))
    def check(acks, timeout_ms, topic_data, cid, client_id):
        msg = ProduceRequest(acks=acks, timeout_ms=timeout_ms, topic_data=[
            ProduceRequest.TopicProduceData(name=name, partition_data=[
                ProduceRequest.PartitionProduceData(index=i, records=r) for i, r in parts])
            for name, parts in topic_data])
        body = produce_body(version, acks, timeout_ms, topic_data)
        want = encode_request(msg, version, cid, client_id)
        assert produce_frame(version, cid, client_id, body) == want
        assert produce_request(version, cid, client_id, acks, timeout_ms, topic_data) == want
    check()


@pytest.mark.parametrize("version", VERSIONS)
def test_the_raw_reading_gives_the_fast_decoders_values(version):
    @FAST
    @given(message_strategy(P, version), st.integers(-(1 << 31), (1 << 31) - 1))
    def check(msg, cid):
        frame = encode_response(msg, version, cid)[4:]
        raw = decode_produce_raw(version, frame)
        fast = decode_produce_response(version, frame)
        assert (raw is None) == (fast is None)
        if raw is not None:
            corr, topics, throttle = raw
            assert (corr, throttle) == (cid, msg.throttle_time_ms)
            assert [(t.name, [(p.index, p.error_code, p.base_offset) for p in t.partition_responses])
                    for t in msg.responses] == [(name, [f[:3] for f in parts]) for name, parts in topics]
    check()


@pytest.mark.parametrize("version", REQ_VERSIONS)
def test_a_one_partition_body_has_its_short_path_with_the_same_bytes(version):
    for acks, name, index, records in [(1, "t", 0, b"x" * 200), (-1, "a" * 249, 2**31 - 1, b""),
                                       (0, "topic", 3, None), (1, "t\u00e9", 7, b"r" * 300)]:
        msg = ProduceRequest(acks=acks, timeout_ms=1500, topic_data=[ProduceRequest.TopicProduceData(
            name=name, partition_data=[ProduceRequest.PartitionProduceData(index=index, records=records)])])
        body = produce_body(version, acks, 1500, [(name, [(index, records)])])
        want = encode_request(msg, version, 9, "k")
        assert produce_frame(version, 9, "k", body) == want
        assert produce_request(version, 9, "k", acks, 1500, [(name, [(index, records)])]) == want
