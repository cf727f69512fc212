"""Kafka broker error codes: name, whether a retry can succeed, whether to refresh metadata first.

`ERRORS` covers every code of Apache Kafka's `Errors` enum up to 133 (Kafka
4.x), under Kafka's own names.  The flags follow the Java client:

* `retriable`: the Java exception is a `RetriableException` (sending the same
  request again may succeed);
* `invalid_metadata`: the Java exception is an `InvalidMetadataException`
  (the client's view of leaders is stale: refresh metadata, then retry).
  Every invalid_metadata code is also retriable.

The table is plain data (tuples of literals) on purpose: `client_shim.errors`
cannot import kafkad, so it keeps its own table of kafka-python classes with
the same numbers and flags, and a test cross-checks the two.

Where librdkafka's producer decides differently (rd_kafka_err_action and the
Produce error handler), kafkad follows the Java client; the differences that
matter on the producer path are noted on the entries:

* BROKER_NOT_AVAILABLE (8): librdkafka refreshes metadata and retries; Java
  does neither.  Kept non-retriable (brokers do not send it to producers in
  practice; a dead broker shows up as a connection error instead).
* NETWORK_EXCEPTION (13), FENCED_LEADER_EPOCH (74), UNKNOWN_LEADER_EPOCH (75):
  librdkafka fails the batch (not in its retry lists); Java refreshes
  metadata and retries.  Java's choice kept: these are leadership changes.
* COORDINATOR_NOT_AVAILABLE (15), NOT_COORDINATOR (16): librdkafka refreshes;
  Java retries without a metadata refresh.  Not on kafkad's path (no groups,
  no transactions).
* OUT_OF_ORDER_SEQUENCE_NUMBER (45), DUPLICATE_SEQUENCE_NUMBER (46),
  INVALID_PRODUCER_EPOCH (47), UNKNOWN_PRODUCER_ID (59): both clients mark
  them non-retriable here and give them special idempotent-producer
  handling (the engine's job, not this table's).
* MESSAGE_TOO_LARGE (10): non-retriable in both; the Java client splits a
  multi-record batch and resends it (again the engine's job).
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["ErrorInfo", "ERRORS", "error_info", "NONE", "UNSUPPORTED_VERSION"]


class ErrorInfo(NamedTuple):
    code: int
    name: str
    retriable: bool
    invalid_metadata: bool
    description: str


NONE = 0
UNSUPPORTED_VERSION = 35

# (code, name, retriable, invalid_metadata, description)
_TABLE: tuple[tuple[int, str, bool, bool, str], ...] = (
    (-1, "UNKNOWN_SERVER_ERROR", False, False, "Unexpected error on the broker."),
    (0, "NONE", False, False, "No error."),
    (1, "OFFSET_OUT_OF_RANGE", False, False, "Offset outside the partition's range."),
    (2, "CORRUPT_MESSAGE", True, False, "A record failed its CRC or size check, or is otherwise invalid."),
    (3, "UNKNOWN_TOPIC_OR_PARTITION", True, True, "This broker does not host the topic-partition."),
    (4, "INVALID_FETCH_SIZE", False, False, "Invalid fetch size."),
    (5, "LEADER_NOT_AVAILABLE", True, True, "The partition has no leader right now (election in progress)."),
    (6, "NOT_LEADER_OR_FOLLOWER", True, True, "This broker is not the partition's leader (or not a replica)."),
    (7, "REQUEST_TIMED_OUT", True, False, "The broker timed the request out."),
    (8, "BROKER_NOT_AVAILABLE", False, False, "The broker is not available."),
    (9, "REPLICA_NOT_AVAILABLE", True, True, "The replica is not available for this partition."),
    (10, "MESSAGE_TOO_LARGE", False, False, "A record batch exceeds the broker's or topic's size limit."),
    (11, "STALE_CONTROLLER_EPOCH", False, False, "The controller moved."),
    (12, "OFFSET_METADATA_TOO_LARGE", False, False, "Offset commit metadata too large."),
    (13, "NETWORK_EXCEPTION", True, True, "The broker lost a connection before answering."),
    (14, "COORDINATOR_LOAD_IN_PROGRESS", True, False, "The coordinator is still loading."),
    (15, "COORDINATOR_NOT_AVAILABLE", True, False, "The coordinator is not available."),
    (16, "NOT_COORDINATOR", True, False, "This broker is not the coordinator."),
    (17, "INVALID_TOPIC_EXCEPTION", False, False, "The topic name is invalid or the topic is internal."),
    (18, "RECORD_LIST_TOO_LARGE", False, False, "The batch is larger than the log segment size."),
    (19, "NOT_ENOUGH_REPLICAS", True, False, "Too few in-sync replicas; nothing was written."),
    (20, "NOT_ENOUGH_REPLICAS_AFTER_APPEND", True, False, "Written, but to fewer in-sync replicas than required."),
    (21, "INVALID_REQUIRED_ACKS", False, False, "Invalid acks value."),
    (22, "ILLEGAL_GENERATION", False, False, "Invalid group generation."),
    (23, "INCONSISTENT_GROUP_PROTOCOL", False, False, "Group protocols are incompatible."),
    (24, "INVALID_GROUP_ID", False, False, "Invalid group id."),
    (25, "UNKNOWN_MEMBER_ID", False, False, "Unknown group member."),
    (26, "INVALID_SESSION_TIMEOUT", False, False, "Session timeout outside the allowed range."),
    (27, "REBALANCE_IN_PROGRESS", False, False, "The group is rebalancing."),
    (28, "INVALID_COMMIT_OFFSET_SIZE", False, False, "Invalid offset commit size."),
    (29, "TOPIC_AUTHORIZATION_FAILED", False, False, "Not authorized for the topic."),
    (30, "GROUP_AUTHORIZATION_FAILED", False, False, "Not authorized for the group."),
    (31, "CLUSTER_AUTHORIZATION_FAILED", False, False, "Not authorized for the cluster operation."),
    (32, "INVALID_TIMESTAMP", False, False, "A record timestamp is outside the accepted range."),
    (33, "UNSUPPORTED_SASL_MECHANISM", False, False, "The broker does not offer this SASL mechanism."),
    (34, "ILLEGAL_SASL_STATE", False, False, "Request not valid in the current SASL state."),
    (35, "UNSUPPORTED_VERSION", False, False, "The broker does not support this API version."),
    (36, "TOPIC_ALREADY_EXISTS", False, False, "The topic already exists."),
    (37, "INVALID_PARTITIONS", False, False, "Invalid partition count."),
    (38, "INVALID_REPLICATION_FACTOR", False, False, "Invalid replication factor."),
    (39, "INVALID_REPLICA_ASSIGNMENT", False, False, "Invalid replica assignment."),
    (40, "INVALID_CONFIG", False, False, "Invalid configuration."),
    (41, "NOT_CONTROLLER", True, False, "This broker is not the controller."),
    (42, "INVALID_REQUEST", False, False, "The broker found the request malformed."),
    (43, "UNSUPPORTED_FOR_MESSAGE_FORMAT", False, False, "Not supported by the topic's message format."),
    (44, "POLICY_VIOLATION", False, False, "The request violates a configured policy."),
    (45, "OUT_OF_ORDER_SEQUENCE_NUMBER", False, False, "The broker got an unexpected producer sequence number."),
    (46, "DUPLICATE_SEQUENCE_NUMBER", False, False, "The broker already has this batch (duplicate sequence)."),
    (47, "INVALID_PRODUCER_EPOCH", False, False, "The producer epoch is older than the broker's."),
    (48, "INVALID_TXN_STATE", False, False, "Transactional operation in an invalid state."),
    (49, "INVALID_PRODUCER_ID_MAPPING", False, False, "The producer id is not assigned to this transactional id."),
    (50, "INVALID_TRANSACTION_TIMEOUT", False, False, "Transaction timeout above the broker's maximum."),
    (51, "CONCURRENT_TRANSACTIONS", True, False, "Another operation on the same transaction is running."),
    (52, "TRANSACTION_COORDINATOR_FENCED", False, False, "The transaction coordinator was replaced."),
    (53, "TRANSACTIONAL_ID_AUTHORIZATION_FAILED", False, False, "Not authorized for the transactional id."),
    (54, "SECURITY_DISABLED", False, False, "Security features are disabled on the broker."),
    (55, "OPERATION_NOT_ATTEMPTED", False, False, "The broker skipped this operation of a batched request."),
    (56, "KAFKA_STORAGE_ERROR", True, True, "Disk error on the broker."),
    (57, "LOG_DIR_NOT_FOUND", False, False, "Log directory not found."),
    (58, "SASL_AUTHENTICATION_FAILED", False, False, "SASL authentication failed."),
    (59, "UNKNOWN_PRODUCER_ID", False, False, "The broker no longer knows this producer id."),
    (60, "REASSIGNMENT_IN_PROGRESS", False, False, "A partition reassignment is running."),
    (61, "DELEGATION_TOKEN_AUTH_DISABLED", False, False, "Delegation tokens are disabled."),
    (62, "DELEGATION_TOKEN_NOT_FOUND", False, False, "Delegation token not found."),
    (63, "DELEGATION_TOKEN_OWNER_MISMATCH", False, False, "Principal is not the token's owner or renewer."),
    (64, "DELEGATION_TOKEN_REQUEST_NOT_ALLOWED", False, False, "Delegation token requests not allowed on this connection."),
    (65, "DELEGATION_TOKEN_AUTHORIZATION_FAILED", False, False, "Delegation token authorization failed."),
    (66, "DELEGATION_TOKEN_EXPIRED", False, False, "Delegation token expired."),
    (67, "INVALID_PRINCIPAL_TYPE", False, False, "Unsupported principal type."),
    (68, "NON_EMPTY_GROUP", False, False, "The group is not empty."),
    (69, "GROUP_ID_NOT_FOUND", False, False, "The group does not exist."),
    (70, "FETCH_SESSION_ID_NOT_FOUND", True, False, "Fetch session not found."),
    (71, "INVALID_FETCH_SESSION_EPOCH", True, False, "Invalid fetch session epoch."),
    (72, "LISTENER_NOT_FOUND", True, True, "The leader has no listener matching this connection's."),
    (73, "TOPIC_DELETION_DISABLED", False, False, "Topic deletion is disabled."),
    (74, "FENCED_LEADER_EPOCH", True, True, "The request's leader epoch is older than the broker's."),
    (75, "UNKNOWN_LEADER_EPOCH", True, True, "The request's leader epoch is newer than the broker's."),
    (76, "UNSUPPORTED_COMPRESSION_TYPE", False, False, "The compression type is not supported here."),
    (77, "STALE_BROKER_EPOCH", False, False, "The broker epoch changed."),
    (78, "OFFSET_NOT_AVAILABLE", True, False, "Offsets not available yet after a leader change."),
    (79, "MEMBER_ID_REQUIRED", False, False, "A member id is required to join the group."),
    (80, "PREFERRED_LEADER_NOT_AVAILABLE", True, True, "The preferred leader is not available."),
    (81, "GROUP_MAX_SIZE_REACHED", False, False, "The group is full."),
    (82, "FENCED_INSTANCE_ID", False, False, "Another member registered this static instance id."),
    (83, "ELIGIBLE_LEADERS_NOT_AVAILABLE", True, True, "No eligible leader for the partition."),
    (84, "ELECTION_NOT_NEEDED", True, True, "Leader election not needed."),
    (85, "NO_REASSIGNMENT_IN_PROGRESS", False, False, "No reassignment is running."),
    (86, "GROUP_SUBSCRIBED_TO_TOPIC", False, False, "The group is subscribed to the topic."),
    (87, "INVALID_RECORD", False, False, "The broker rejected a record in the batch."),
    (88, "UNSTABLE_OFFSET_COMMIT", True, False, "Unstable offsets pending."),
    (89, "THROTTLING_QUOTA_EXCEEDED", True, False, "A throttling quota was exceeded."),
    (90, "PRODUCER_FENCED", False, False, "A newer producer with the same transactional id exists."),
    (91, "RESOURCE_NOT_FOUND", False, False, "The resource does not exist."),
    (92, "DUPLICATE_RESOURCE", False, False, "The same resource appears twice."),
    (93, "UNACCEPTABLE_CREDENTIAL", False, False, "The credential is not acceptable."),
    (94, "INCONSISTENT_VOTER_SET", False, False, "Sender or receiver is not an expected voter."),
    (95, "INVALID_UPDATE_VERSION", False, False, "Invalid update version."),
    (96, "FEATURE_UPDATE_FAILED", False, False, "Finalized feature update failed."),
    (97, "PRINCIPAL_DESERIALIZATION_FAILURE", False, False, "Forwarded principal could not be read."),
    (98, "SNAPSHOT_NOT_FOUND", False, False, "Snapshot not found."),
    (99, "POSITION_OUT_OF_RANGE", False, False, "Snapshot position out of range."),
    (100, "UNKNOWN_TOPIC_ID", True, True, "This broker does not host the topic id."),
    (101, "DUPLICATE_BROKER_REGISTRATION", False, False, "Broker id already registered."),
    (102, "BROKER_ID_NOT_REGISTERED", False, False, "Broker id not registered."),
    (103, "INCONSISTENT_TOPIC_ID", True, True, "The log's topic id differs from the request's."),
    (104, "INCONSISTENT_CLUSTER_ID", False, False, "Cluster id mismatch."),
    (105, "TRANSACTIONAL_ID_NOT_FOUND", False, False, "Transactional id not found."),
    (106, "FETCH_SESSION_TOPIC_ID_ERROR", True, False, "Inconsistent topic id use in a fetch session."),
    (107, "INELIGIBLE_REPLICA", False, False, "The new ISR has an ineligible replica."),
    (108, "NEW_LEADER_ELECTED", False, False, "Partition state updated but the leader changed."),
    (109, "OFFSET_MOVED_TO_TIERED_STORAGE", False, False, "The offset is in tiered storage."),
    (110, "FENCED_MEMBER_EPOCH", False, False, "The member epoch is fenced."),
    (111, "UNRELEASED_INSTANCE_ID", False, False, "The instance id is still in use."),
    (112, "UNSUPPORTED_ASSIGNOR", False, False, "The assignor is not supported."),
    (113, "STALE_MEMBER_EPOCH", False, False, "The member epoch is stale."),
    (114, "MISMATCHED_ENDPOINT_TYPE", False, False, "Request sent to the wrong endpoint type."),
    (115, "UNSUPPORTED_ENDPOINT_TYPE", False, False, "Endpoint type not supported."),
    (116, "UNKNOWN_CONTROLLER_ID", False, False, "Unknown controller id."),
    (117, "UNKNOWN_SUBSCRIPTION_ID", False, False, "Unknown telemetry subscription id."),
    (118, "TELEMETRY_TOO_LARGE", False, False, "Telemetry payload too large."),
    (119, "INVALID_REGISTRATION", False, False, "The broker registration is invalid."),
    (120, "TRANSACTION_ABORTABLE", False, False, "The transaction must be aborted."),
    (121, "INVALID_RECORD_STATE", False, False, "Invalid record state for acknowledgement."),
    (122, "SHARE_SESSION_NOT_FOUND", True, False, "Share session not found."),
    (123, "INVALID_SHARE_SESSION_EPOCH", True, False, "Invalid share session epoch."),
    (124, "FENCED_STATE_EPOCH", False, False, "Share-group state epoch mismatch."),
    (125, "INVALID_VOTER_KEY", False, False, "The voter key does not match."),
    (126, "DUPLICATE_VOTER", False, False, "The voter is already in the voter set."),
    (127, "VOTER_NOT_FOUND", False, False, "The voter is not in the voter set."),
    (128, "INVALID_REGULAR_EXPRESSION", False, False, "Invalid regular expression."),
    (129, "REBOOTSTRAP_REQUIRED", False, False, "Client metadata is stale: re-bootstrap."),
    (130, "STREAMS_INVALID_TOPOLOGY", False, False, "Invalid streams topology."),
    (131, "STREAMS_INVALID_TOPOLOGY_EPOCH", False, False, "Invalid streams topology epoch."),
    (132, "STREAMS_TOPOLOGY_FENCED", False, False, "Outdated streams topology epoch."),
    (133, "SHARE_SESSION_LIMIT_REACHED", True, False, "Share session limit reached."),
)

ERRORS: dict[int, ErrorInfo] = {row[0]: ErrorInfo(*row) for row in _TABLE}


def error_info(code: int) -> ErrorInfo:
    """The table entry for `code`; an unknown code gets a generic, non-retriable entry."""
    info = ERRORS.get(code)
    if info is not None:
        return info
    return ErrorInfo(code, f"UNKNOWN_ERROR_{code}", False, False,
                     f"Error code {code} is not known to kafkad.")
