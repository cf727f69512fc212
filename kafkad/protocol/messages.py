"""The Kafka APIs kafkad speaks, declared once each from Kafka's JSON message schemas.

Each declaration transcribes apache/kafka's
``clients/src/main/resources/common/message/<Name>.json`` (field names in
snake_case, version ranges, nullable ranges, defaults, tags) for the versions
kafkad implements; `kafkad.protocol.schema.message` generates the dataclasses
and the per-version codecs.  The version ranges chosen, and why:

* ApiVersions 0-3 (3 is the first flexible version; brokers answer an
  unsupported version with error 35 and a version-0 body, see `framing`).
* Metadata 1-12 (1 is the first with nullable topics and the controller id;
  10 adds topic ids; 12 makes the topic name nullable in the response).
* Produce 3-11 (Kafka 4.0 removed 0-2 and message formats v0/v1, KIP-896;
  9 is the first flexible version; 10 adds the current-leader hints, KIP-951;
  11 is wire-identical to 10).
* InitProducerId 0-5 (2 is flexible, 3 adds producer id/epoch for epoch
  bumps, 4 and 5 only add broker error codes).
* SaslHandshake 0-1 and SaslAuthenticate 0-2 (2 is flexible).
"""

from __future__ import annotations

from .schema import Field as F
from .schema import message

_M = __name__

# --------------------------------------------------------------------------
# ApiVersions (18)

ApiVersionsRequest = message(
    "ApiVersionsRequest", api_key=18, kind="request", versions="0-3", flexible="3+", module=_M,
    fields=[
        F("client_software_name", "string", "3+", ignorable=True),
        F("client_software_version", "string", "3+", ignorable=True),
    ])

ApiVersionsResponse = message(
    "ApiVersionsResponse", api_key=18, kind="response", versions="0-3", flexible="3+", module=_M,
    fields=[
        F("error_code", "int16", "0+"),
        F("api_keys", "[]ApiVersion", "0+", fields=[
            F("api_key", "int16", "0+"),
            F("min_version", "int16", "0+"),
            F("max_version", "int16", "0+"),
        ]),
        F("throttle_time_ms", "int32", "1+", ignorable=True),
        F("supported_features", "[]SupportedFeatureKey", "3+", tag=0, tagged="3+", fields=[
            F("name", "string", "3+"),
            F("min_version", "int16", "3+"),
            F("max_version", "int16", "3+"),
        ]),
        F("finalized_features_epoch", "int64", "3+", tag=1, tagged="3+", default=-1,
          ignorable=True),
        F("finalized_features", "[]FinalizedFeatureKey", "3+", tag=2, tagged="3+", fields=[
            F("name", "string", "3+"),
            F("max_version_level", "int16", "3+"),
            F("min_version_level", "int16", "3+"),
        ]),
        F("zk_migration_ready", "bool", "3+", tag=3, tagged="3+", default=False,
          ignorable=True),
    ])

# --------------------------------------------------------------------------
# Metadata (3)

MetadataRequest = message(
    "MetadataRequest", api_key=3, kind="request", versions="1-12", flexible="9+", module=_M,
    fields=[
        # Null (from version 1) asks for every topic; an empty tuple asks for none.
        F("topics", "[]MetadataRequestTopic", "0+", nullable="1+", fields=[
            F("topic_id", "uuid", "10+", ignorable=True),
            F("name", "string", "0+", nullable="10+"),
        ]),
        F("allow_auto_topic_creation", "bool", "4+", default=True),
        F("include_cluster_authorized_operations", "bool", "8-10"),
        F("include_topic_authorized_operations", "bool", "8+"),
    ])

MetadataResponse = message(
    "MetadataResponse", api_key=3, kind="response", versions="1-12", flexible="9+", module=_M,
    fields=[
        F("throttle_time_ms", "int32", "3+", ignorable=True),
        F("brokers", "[]MetadataResponseBroker", "0+", fields=[
            F("node_id", "int32", "0+"),
            F("host", "string", "0+"),
            F("port", "int32", "0+"),
            F("rack", "string", "1+", nullable="1+", ignorable=True, default=None),
        ]),
        F("cluster_id", "string", "2+", nullable="2+", ignorable=True, default=None),
        F("controller_id", "int32", "1+", default=-1, ignorable=True),
        F("topics", "[]MetadataResponseTopic", "0+", fields=[
            F("error_code", "int16", "0+"),
            F("name", "string", "0+", nullable="12+"),
            F("topic_id", "uuid", "10+", ignorable=True),
            F("is_internal", "bool", "1+", default=False, ignorable=True),
            F("partitions", "[]MetadataResponsePartition", "0+", fields=[
                F("error_code", "int16", "0+"),
                F("partition_index", "int32", "0+"),
                F("leader_id", "int32", "0+"),
                F("leader_epoch", "int32", "7+", default=-1, ignorable=True),
                F("replica_nodes", "[]int32", "0+"),
                F("isr_nodes", "[]int32", "0+"),
                F("offline_replicas", "[]int32", "5+", ignorable=True),
            ]),
            F("topic_authorized_operations", "int32", "8+", default=-2147483648),
        ]),
        F("cluster_authorized_operations", "int32", "8-10", default=-2147483648),
    ])

# --------------------------------------------------------------------------
# Produce (0)

ProduceRequest = message(
    "ProduceRequest", api_key=0, kind="request", versions="3-11", flexible="9+", module=_M,
    fields=[
        F("transactional_id", "string", "3+", nullable="3+", default=None),
        F("acks", "int16", "0+"),
        F("timeout_ms", "int32", "0+"),
        F("topic_data", "[]TopicProduceData", "0+", fields=[
            F("name", "string", "0+"),
            F("partition_data", "[]PartitionProduceData", "0+", fields=[
                F("index", "int32", "0+"),
                # One or more encoded RecordBatches (see kafkad.protocol.records).
                F("records", "records", "0+", nullable="0+", default=None),
            ]),
        ]),
    ])

ProduceResponse = message(
    "ProduceResponse", api_key=0, kind="response", versions="3-11", flexible="9+", module=_M,
    fields=[
        F("responses", "[]TopicProduceResponse", "0+", fields=[
            F("name", "string", "0+"),
            F("partition_responses", "[]PartitionProduceResponse", "0+", fields=[
                F("index", "int32", "0+"),
                F("error_code", "int16", "0+"),
                F("base_offset", "int64", "0+"),
                F("log_append_time_ms", "int64", "2+", default=-1, ignorable=True),
                F("log_start_offset", "int64", "5+", default=-1, ignorable=True),
                F("record_errors", "[]BatchIndexAndErrorMessage", "8+", ignorable=True, fields=[
                    F("batch_index", "int32", "8+"),
                    F("batch_index_error_message", "string", "8+", nullable="8+",
                      default=None),
                ]),
                F("error_message", "string", "8+", nullable="8+", default=None,
                  ignorable=True),
                # KIP-951: where the partition's leader moved, sent with
                # NOT_LEADER_OR_FOLLOWER so the client can skip a metadata round trip.
                F("current_leader", "LeaderIdAndEpoch", "10+", tag=0, tagged="10+",
                  ignorable=True, fields=[
                      F("leader_id", "int32", "10+", default=-1),
                      F("leader_epoch", "int32", "10+", default=-1),
                  ]),
            ]),
        ]),
        F("throttle_time_ms", "int32", "1+", ignorable=True, default=0),
        F("node_endpoints", "[]NodeEndpoint", "10+", tag=0, tagged="10+", ignorable=True,
          fields=[
              F("node_id", "int32", "10+"),
              F("host", "string", "10+"),
              F("port", "int32", "10+"),
              F("rack", "string", "10+", nullable="10+", default=None),
          ]),
    ])

# --------------------------------------------------------------------------
# InitProducerId (22)

InitProducerIdRequest = message(
    "InitProducerIdRequest", api_key=22, kind="request", versions="0-5", flexible="2+",
    module=_M, fields=[
        F("transactional_id", "string", "0+", nullable="0+", default=None),
        F("transaction_timeout_ms", "int32", "0+"),
        F("producer_id", "int64", "3+", default=-1),
        F("producer_epoch", "int16", "3+", default=-1),
    ])

InitProducerIdResponse = message(
    "InitProducerIdResponse", api_key=22, kind="response", versions="0-5", flexible="2+",
    module=_M, fields=[
        F("throttle_time_ms", "int32", "0+", ignorable=True),
        F("error_code", "int16", "0+"),
        F("producer_id", "int64", "0+", default=-1),
        F("producer_epoch", "int16", "0+"),
    ])

# --------------------------------------------------------------------------
# SaslHandshake (17) and SaslAuthenticate (36)

SaslHandshakeRequest = message(
    "SaslHandshakeRequest", api_key=17, kind="request", versions="0-1", flexible="none",
    module=_M, fields=[
        F("mechanism", "string", "0+"),
    ])

SaslHandshakeResponse = message(
    "SaslHandshakeResponse", api_key=17, kind="response", versions="0-1", flexible="none",
    module=_M, fields=[
        F("error_code", "int16", "0+"),
        F("mechanisms", "[]string", "0+"),
    ])

SaslAuthenticateRequest = message(
    "SaslAuthenticateRequest", api_key=36, kind="request", versions="0-2", flexible="2+",
    module=_M, fields=[
        F("auth_bytes", "bytes", "0+"),
    ])

SaslAuthenticateResponse = message(
    "SaslAuthenticateResponse", api_key=36, kind="response", versions="0-2", flexible="2+",
    module=_M, fields=[
        F("error_code", "int16", "0+"),
        F("error_message", "string", "0+", nullable="0+", default=None),
        F("auth_bytes", "bytes", "0+"),
        F("session_lifetime_ms", "int64", "1+", default=0, ignorable=True),
    ])

REQUESTS = (ApiVersionsRequest, MetadataRequest, ProduceRequest, InitProducerIdRequest,
            SaslHandshakeRequest, SaslAuthenticateRequest)
RESPONSES = (ApiVersionsResponse, MetadataResponse, ProduceResponse, InitProducerIdResponse,
             SaslHandshakeResponse, SaslAuthenticateResponse)
RESPONSE_FOR = {req: resp for req, resp in zip(REQUESTS, RESPONSES)}
REQUEST_BY_KEY = {req.API_KEY: req for req in REQUESTS}
RESPONSE_BY_KEY = {resp.API_KEY: resp for resp in RESPONSES}
