"""Every message at every version: round trips, header rules, version rules."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kafkad.protocol import (
    API_VERSIONS_SUPPORTED,
    ApiVersionsResponse,
    MetadataRequest,
    MetadataResponse,
    ProduceRequest,
    ProduceResponse,
    ProtocolError,
    decode_request,
    decode_response,
    encode_body,
    encode_request,
    encode_response,
    pick_version,
)
from kafkad.protocol.messages import REQUESTS, RESPONSES

from .strategies import FAST, decode_all, message_strategy

ALL = [(cls, v) for cls in REQUESTS + RESPONSES for v in range(cls.MIN_VERSION, cls.MAX_VERSION + 1)]
IDS = [f"{cls.__name__}-v{v}" for cls, v in ALL]


@pytest.mark.parametrize("cls,version", ALL, ids=IDS)
def test_body_round_trip(cls, version):
    @FAST
    @given(message_strategy(cls, version))
    def check(msg):
        raw = encode_body(msg, version)
        assert decode_all(cls, version, raw) == msg
    check()


REQ = [(cls, v) for cls, v in ALL if cls.KIND == "request"]
RESP = [(cls, v) for cls, v in ALL if cls.KIND == "response"]


@pytest.mark.parametrize("cls,version", REQ, ids=[f"{c.__name__}-v{v}" for c, v in REQ])
def test_request_frame_round_trip(cls, version):
    @FAST
    @given(message_strategy(cls, version), st.integers(-(1 << 31), (1 << 31) - 1),
           st.one_of(st.none(), st.text(max_size=10)))
    def check(msg, cid, client_id):
        frame = encode_request(msg, version, cid, client_id)
        assert struct.unpack_from(">i", frame)[0] == len(frame) - 4
        header, got = decode_request(frame[4:])
        assert (header.api_key, header.api_version, header.correlation_id, header.client_id) == (
            cls.API_KEY, version, cid, client_id)
        assert got == msg
    check()


@pytest.mark.parametrize("cls,version", RESP, ids=[f"{c.__name__}-v{v}" for c, v in RESP])
def test_response_frame_round_trip(cls, version):
    @FAST
    @given(message_strategy(cls, version), st.integers(-(1 << 31), (1 << 31) - 1))
    def check(msg, cid):
        if cls is ApiVersionsResponse and msg.error_code == 35:
            msg = type(msg)(error_code=0)
        frame = encode_response(msg, version, cid)
        assert decode_response(cls, version, frame[4:], strict=True) == (cid, msg)
    check()


def test_header_versions_follow_flexibility():
    meta = MetadataRequest(topics=None)
    classic = encode_request(meta, 8, 1, "c")
    flexible = encode_request(meta, 9, 1, "c")
    # v1 header: size, key, version, correlation id, client_id "c" then the body.
    assert classic[4:15] == b"\x00\x03\x00\x08\x00\x00\x00\x01\x00\x01c"
    # v2 header adds an empty tagged-field section after the (still classic) client_id.
    assert flexible[4:16] == b"\x00\x03\x00\x09\x00\x00\x00\x01\x00\x01c\x00"


def test_api_versions_response_always_uses_header_v0():
    resp = ApiVersionsResponse(api_keys=(ApiVersionsResponse.ApiVersion(api_key=0, min_version=3,
                                                                         max_version=11),))
    frame = encode_response(resp, 3, 9)
    # No tagged-field byte after the correlation id: the body's error code follows at once.
    assert frame[4:10] == b"\x00\x00\x00\x09\x00\x00"
    prod = encode_response(ProduceResponse(), 9, 9)
    assert prod[4:9] == b"\x00\x00\x00\x09\x00"  # header v1: empty tag section


def test_api_versions_error_35_decodes_the_v0_body():
    """KIP-511: the broker answers an unknown ApiVersions version with a v0 body and its range."""
    v0 = ApiVersionsResponse(error_code=35, api_keys=(
        ApiVersionsResponse.ApiVersion(api_key=18, min_version=0, max_version=2),))
    frame = encode_response(v0, 0, 5)[4:]
    cid, got = decode_response(ApiVersionsResponse, 3, frame)
    assert cid == 5 and got == v0
    hi = got.api_keys[0].max_version
    assert pick_version(18, 0, hi) == 2


def test_api_versions_error_35_with_an_unreadable_body_keeps_the_error():
    # The librdkafka mock cluster's answer to ApiVersions v3 (captured from it).
    frame = bytes.fromhex("00000002" "0023" "0100120000000200000000")
    cid, got = decode_response(ApiVersionsResponse, 3, frame)
    assert cid == 2 and got.error_code == 35 and got.api_keys == ()


def test_other_errors_are_not_decoded_as_v0():
    frame = encode_response(ApiVersionsResponse(error_code=0), 0, 1)[4:]
    with pytest.raises(ProtocolError):
        decode_response(ApiVersionsResponse, 3, frame)


def test_strict_decode_fails_on_unread_bytes(strict_decode):
    body = encode_body(ProduceResponse(throttle_time_ms=3), 9)
    assert strict_decode(ProduceResponse, 9, body).throttle_time_ms == 3
    with pytest.raises(AssertionError, match="1 of"):
        strict_decode(ProduceResponse, 9, body + b"\x00")


def test_absent_field_must_keep_its_default():
    with pytest.raises(ValueError, match="allow_auto_topic_creation"):
        encode_body(MetadataRequest(allow_auto_topic_creation=False), 3)
    # Same field is fine from the version that has it.
    assert decode_all(MetadataRequest, 4, encode_body(
        MetadataRequest(allow_auto_topic_creation=False), 4)).allow_auto_topic_creation is False


def test_ignorable_field_is_dropped_in_older_versions():
    P = ProduceResponse
    part = P.PartitionProduceResponse(index=0, log_start_offset=7)
    resp = P(responses=(P.TopicProduceResponse(name="t", partition_responses=(part,)),))
    got = decode_all(P, 4, encode_body(resp, 4))
    assert got.responses[0].partition_responses[0].log_start_offset == -1
    assert decode_all(P, 5, encode_body(resp, 5)) == resp


def test_null_only_where_the_schema_allows_it():
    topic = MetadataRequest.MetadataRequestTopic(name=None)
    with pytest.raises(ValueError, match="name"):
        encode_body(MetadataRequest(topics=(topic,)), 9)
    assert decode_all(MetadataRequest, 10, encode_body(MetadataRequest(topics=(topic,)), 10)) \
        .topics[0].name is None


def test_wrong_types_name_the_field():
    P = ProduceRequest
    with pytest.raises(TypeError, match="partition_data"):
        encode_body(P(topic_data=(P.TopicProduceData(name="t", partition_data=(P.TopicProduceData(),)),)), 9)
    with pytest.raises(ValueError, match="acks"):
        encode_body(P(acks=1 << 20), 9)
    with pytest.raises(TypeError, match="name"):
        encode_body(P(topic_data=(P.TopicProduceData(name=b"t"),)), 3)


def test_unknown_versions():
    with pytest.raises(ValueError, match="version"):
        encode_request(ProduceRequest(), 2, 1, "c")
    with pytest.raises(ValueError, match="version"):
        encode_request(ProduceRequest(), 12, 1, "c")
    with pytest.raises(ProtocolError, match="version 12"):
        decode_response(ProduceResponse, 12, b"\x00\x00\x00\x01")


def test_encode_request_refuses_responses_and_bad_arguments():
    with pytest.raises(TypeError, match="msg"):
        encode_request(ProduceResponse(), 9, 1, "c")
    with pytest.raises(ValueError, match="correlation_id"):
        encode_request(ProduceRequest(), 9, 1 << 31, "c")
    with pytest.raises(TypeError, match="client_id"):
        encode_request(ProduceRequest(), 9, 1, b"c")


def test_unknown_tagged_fields_are_skipped():
    resp = MetadataResponse(controller_id=3)
    body = bytearray(encode_body(resp, 9))
    assert body[-1] == 0  # empty top-level tag section
    body[-1:] = b"\x01\x07\x02hi"  # one unknown tag (7) of 2 bytes
    assert decode_all(MetadataResponse, 9, bytes(body)) == resp


def test_current_leader_and_node_endpoints_are_tagged_from_v10():
    P = ProduceResponse
    part = P.PartitionProduceResponse(index=1, error_code=6,
                                      current_leader=P.LeaderIdAndEpoch(leader_id=2, leader_epoch=5))
    resp = P(responses=(P.TopicProduceResponse(name="t", partition_responses=(part,)),),
             node_endpoints=(P.NodeEndpoint(node_id=2, host="b2", port=9092, rack=None),))
    assert decode_all(P, 10, encode_body(resp, 10)) == resp
    older = decode_all(P, 9, encode_body(resp, 9))
    assert older.node_endpoints == () and older.responses[0].partition_responses[0].current_leader \
        == P.LeaderIdAndEpoch()


def test_pick_version():
    assert API_VERSIONS_SUPPORTED[0] == (3, 11)
    assert pick_version(0, 0, 12) == 11          # Kafka 4.x still advertises 0-2 (KAFKA-18659)
    assert pick_version(0, 0, 7) == 7
    assert pick_version(0, 0, 2) is None         # only the removed message formats
    assert pick_version(3, 0, 13) == 12
    assert pick_version(18, 0, 2) == 2
    with pytest.raises(ValueError, match="api_key"):
        pick_version(1, 0, 16)


def test_messages_are_frozen_and_keyword_only():
    msg = ProduceRequest(acks=1)
    with pytest.raises(AttributeError):
        msg.acks = 0  # type: ignore[misc]
    with pytest.raises(TypeError):
        ProduceRequest(None, 1)  # type: ignore[misc]
    assert ProduceRequest.API_KEY == 0 and ProduceRequest.FLEXIBLE_FROM == 9
    assert (ProduceRequest.MIN_VERSION, ProduceRequest.MAX_VERSION) == (3, 11)
