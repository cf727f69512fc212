"""Golden bytes, written out by hand from the Kafka protocol guide's field layout.

How these were obtained: each expected byte string below was assembled
field by field from https://kafka.apache.org/protocol (request header v1/v2,
response header v0/v1, the per-version BNF of each message, and the
RecordBatch/Record layout in the "Message format" section), NOT by running
kafkad's encoder.  The comments show the field each group of bytes encodes.
The CRC-32C of the batch is the one value that is computed, by the `crc32c`
package, whose Castagnoli polynomial is pinned by the standard check value.
"""

from __future__ import annotations

import crc32c

from kafkad.protocol import (
    ApiVersionsRequest,
    ApiVersionsResponse,
    MetadataRequest,
    ProduceRequest,
    ProduceResponse,
    decode_record_batches,
    decode_response,
    encode_record_batch,
    encode_request,
)

H = bytes.fromhex


def test_api_versions_request_v0():
    expected = H(
        "00000010"      # size 16
        "0012"          # api_key 18 (ApiVersions)
        "0000"          # api_version 0
        "00000001"      # correlation_id 1
        "0006" "6b61666b6164"  # client_id "kafkad" (int16 length)
    )                   # v0 body is empty
    assert encode_request(ApiVersionsRequest(), 0, 1, "kafkad") == expected


def test_api_versions_request_v3_is_flexible():
    expected = H(
        "00000012"      # size 18
        "0012" "0003" "00000002"
        "0001" "63"     # client_id "c": still a classic int16 string in header v2
        "00"            # header tagged fields: none
        "03" "6b64"     # client_software_name "kd": compact string (length + 1)
        "02" "31"       # client_software_version "1"
        "00"            # body tagged fields: none
    )
    msg = ApiVersionsRequest(client_software_name="kd", client_software_version="1")
    assert encode_request(msg, 3, 2, "c") == expected


def test_metadata_request_v9():
    expected = H(
        "00000013"      # size 19
        "0003" "0009" "00000007"
        "ffff"          # client_id null
        "00"            # header tagged fields
        "02"            # topics: compact array of 1
        "02" "74" "00"  #   name "t", topic tagged fields
        "01"            # allow_auto_topic_creation true
        "00"            # include_cluster_authorized_operations false (v8-10)
        "00"            # include_topic_authorized_operations false
        "00"            # body tagged fields
    )
    msg = MetadataRequest(topics=(MetadataRequest.MetadataRequestTopic(name="t"),))
    assert encode_request(msg, 9, 7, None) == expected


def test_api_versions_response_v3_header_v0():
    frame = H(
        "0000000b"      # correlation_id 11 (header v0: no tagged fields, even in v3)
        "0000"          # error_code 0
        "02"            # api_keys: compact array of 1
        "0000" "0003" "000b" "00"  # Produce 3..11, entry tagged fields
        "00000000"      # throttle_time_ms 0
        "01" "01" "08" "0000000000000005"  # 1 tagged field: tag 1 (finalized_features_epoch), 8 bytes: 5
    )
    cid, msg = decode_response(ApiVersionsResponse, 3, frame, strict=True)
    assert cid == 11
    assert msg.api_keys == (ApiVersionsResponse.ApiVersion(api_key=0, min_version=3, max_version=11),)
    assert msg.finalized_features_epoch == 5 and msg.supported_features == ()


def test_produce_response_v10_with_current_leader():
    frame = H(
        "00000009"      # correlation_id 9
        "00"            # response header v1 tagged fields
        "02" "02" "74"  # responses: 1 topic; name "t"
        "02"            # partition_responses: 1
        "00000002"      # index 2
        "0006"          # error_code 6 NOT_LEADER_OR_FOLLOWER
        "ffffffffffffffff"  # base_offset -1
        "ffffffffffffffff"  # log_append_time_ms -1
        "0000000000000000"  # log_start_offset 0
        "01"            # record_errors: empty compact array
        "00"            # error_message: null compact string
        "01" "00" "09"  # 1 tagged field: tag 0 (current_leader), 9 bytes:
        "00000003" "00000007" "00"  # leader 3, epoch 7, the struct's own tagged fields
        "00"            # topic tagged fields
        "00000000"      # throttle_time_ms
        "01" "00" "0e"  # tag 0 node_endpoints, 14 bytes:
        "02" "00000003" "03" "6233" "00002384" "00" "00"  # 1 endpoint: id 3, "b3", 9092, rack null
    )
    cid, msg = decode_response(ProduceResponse, 10, frame, strict=True)
    P = ProduceResponse
    assert cid == 9
    part = msg.responses[0].partition_responses[0]
    assert (part.index, part.error_code, part.base_offset, part.log_start_offset) == (2, 6, -1, 0)
    assert part.current_leader == P.LeaderIdAndEpoch(leader_id=3, leader_epoch=7)
    assert msg.node_endpoints == (P.NodeEndpoint(node_id=3, host="b3", port=9092, rack=None),)


def test_crc32c_is_castagnoli():
    assert crc32c.crc32c(b"123456789") == 0xE3069283


def test_record_batch_with_one_record():
    after_crc = H(
        "0000"              # attributes: no compression, create time
        "00000000"          # last_offset_delta 0
        "0000018bcfe56800"  # base_timestamp 1700000000000
        "0000018bcfe56800"  # max_timestamp
        "0000000000000007"  # producer_id 7
        "0002"              # producer_epoch 2
        "00000009"          # base_sequence 9
        "00000001"          # record count 1
        "18"                # record length 12 (zigzag 24)
        "00"                # record attributes
        "00"                # timestamp delta 0
        "00"                # offset delta 0
        "01"                # key length -1: null key
        "06" "616263"       # value length 3, "abc"
        "02"                # 1 header
        "02" "68"           #   key length 1, "h"
        "01"                #   value length -1: null
    )
    expected = H(
        "0000000000000000"  # base_offset 0
        "0000003e"          # batch_length 62 = 4 + 1 + 4 + len(after_crc)
        "ffffffff"          # partition_leader_epoch -1
        "02"                # magic 2
    ) + crc32c.crc32c(after_crc).to_bytes(4, "big") + after_crc
    assert len(after_crc) == 53
    got = encode_record_batch([None], [b"abc"], [1700000000000], producer_id=7, producer_epoch=2,
                              base_sequence=9, headers=[[("h", None)]])
    assert got == expected
    assert decode_record_batches(expected)[0].records[0].headers == (("h", None),)


def test_produce_request_v3_carrying_that_batch():
    batch = encode_record_batch([None], [b"abc"], [1700000000000])
    expected = H(
        "0000" "0003" "00000005" "0001" "63"  # header v1: Produce v3, correlation 5, client "c"
        "ffff"          # transactional_id null
        "ffff"          # acks -1
        "00007530"      # timeout_ms 30000
        "00000001"      # topic_data: 1
        "0001" "74"     #   name "t"
        "00000001"      #   partition_data: 1
        "00000000"      #     index 0
    ) + len(batch).to_bytes(4, "big") + batch  # records: int32 length + the batch
    P = ProduceRequest
    msg = P(acks=-1, timeout_ms=30000, topic_data=(P.TopicProduceData(name="t", partition_data=(
        P.PartitionProduceData(index=0, records=batch),)),))
    assert encode_request(msg, 3, 5, "c") == len(expected).to_bytes(4, "big") + expected
