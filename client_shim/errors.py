"""kafka-python's exception classes, as the legacy Producer API raised them.

Legacy code catches these by name, so the names are kafka-python's (with the
older spellings kept as aliases). Every Kafka broker error code has a
`BrokerResponseError` subclass carrying `errno`, `message`, `description`,
`retriable` (the same request may succeed if sent again) and
`invalid_metadata` (refresh the partition leaders first); `kafka_errors` maps
errno -> class, and `for_code(errno)` never fails (an unknown code maps to a
fresh `BrokerResponseError` subclass that still carries the number).

`retriable` follows Apache Kafka's `Errors` table (RetriableException and
InvalidMetadataException subclasses); a test cross-checks it against the
daemon's table so both sides agree on what the daemon retried.

Shim-specific: `KafkadUnavailableError` (the daemon did not answer in time;
a `KafkaUnavailableError`, so legacy handlers catch it too).
"""

from __future__ import annotations


class KafkaError(RuntimeError):
    """Base of every error the shim raises for Kafka or the daemon."""

    retriable = False
    invalid_metadata = False

    def __str__(self) -> str:
        if not self.args:
            return self.__class__.__name__
        return f"{self.__class__.__name__}: {super().__str__()}"


class IllegalStateError(KafkaError):
    pass


class IllegalArgumentError(KafkaError):
    pass


class KafkaConfigurationError(KafkaError):
    pass


class KafkaTimeoutError(KafkaError):
    pass


class KafkaConnectionError(KafkaError):
    retriable = True
    invalid_metadata = True


class KafkaProtocolError(KafkaError):
    retriable = True


class UnsupportedCodecError(KafkaError):
    """The codec given to a producer is not one of ALL_CODECS."""


class KafkaUnavailableError(KafkaError):
    """No way to reach Kafka (here: through the daemon)."""


class KafkadUnavailableError(KafkaUnavailableError):
    """The kafkad daemon did not answer within the client's timeout."""


class FailedPayloadsError(KafkaError):
    """A produce request failed; `payload` holds what was being sent."""

    def __init__(self, payload=None, *args):
        super().__init__(payload, *args)
        self.payload = payload


class AsyncProducerQueueFull(KafkaError):
    """The async producer's bound was reached; `failed_msgs` were not queued."""

    def __init__(self, failed_msgs, *args):
        super().__init__(failed_msgs, *args)
        self.failed_msgs = failed_msgs

    def __str__(self) -> str:
        detail = f": {self.args[1]}" if len(self.args) > 1 else ""
        return (f"AsyncProducerQueueFull: {len(self.failed_msgs)} message(s) not queued"
                f"{detail}")


class BrokerResponseError(KafkaError):
    """An error code returned by a Kafka broker (or by the daemon on its behalf)."""

    errno: int | None = None
    message: str | None = None
    description: str | None = None

    def __str__(self) -> str:
        head = f"[Error {self.errno}] {self.__class__.__name__}"
        if self.args:
            return f"{head}: {', '.join(str(a) for a in self.args)}"
        return head if not self.description else f"{head}: {self.description}"


# (errno, class name, retriable, invalid_metadata, description). Names are
# kafka-python's; retriable/invalid_metadata are Apache Kafka's; descriptions are ours.
_BROKER_ERRORS: tuple[tuple[int, str, bool, bool, str], ...] = (
    (-1, "UnknownError", False, False, "The broker hit an error it could not classify."),
    (0, "NoError", False, False, "Success."),
    (1, "OffsetOutOfRangeError", False, False, "The offset asked for lies outside the partition's log."),
    (2, "CorruptRecordError", True, False, "A record failed the broker's checks (CRC, size, or a null key on a compacted topic)."),
    (3, "UnknownTopicOrPartitionError", True, True, "The broker does not host this topic or partition (unknown, or metadata is stale)."),
    (4, "InvalidFetchRequestError", False, False, "The fetch size in the request is not acceptable."),
    (5, "LeaderNotAvailableError", True, True, "The partition has no leader right now (an election is under way)."),
    (6, "NotLeaderForPartitionError", True, True, "This broker is not the partition's leader (metadata is stale)."),
    (7, "RequestTimedOutError", True, False, "The broker did not complete the request in time."),
    (8, "BrokerNotAvailableError", False, False, "The broker is not available."),
    (9, "ReplicaNotAvailableError", True, True, "A replica of the partition is not available."),
    (10, "MessageSizeTooLargeError", False, False, "A message is bigger than the broker or topic accepts."),
    (11, "StaleControllerEpochError", False, False, "The controller has moved to another broker."),
    (12, "OffsetMetadataTooLargeError", False, False, "The offset commit's metadata string is too long."),
    (13, "NetworkExceptionError", True, True, "The connection to the broker closed before its answer arrived."),
    (14, "CoordinatorLoadInProgressError", True, False, "The group or transaction coordinator is still loading its state."),
    (15, "CoordinatorNotAvailableError", True, False, "No group or transaction coordinator is available."),
    (16, "NotCoordinatorError", True, False, "This broker is not the coordinator for the group or transaction."),
    (17, "InvalidTopicError", False, False, "The topic name is not valid for this operation."),
    (18, "RecordListTooLargeError", False, False, "A record batch is bigger than the log segment size."),
    (19, "NotEnoughReplicasError", True, False, "Fewer in-sync replicas than min.insync.replicas: the write was refused."),
    (20, "NotEnoughReplicasAfterAppendError", True, False, "Written, but to fewer in-sync replicas than required."),
    (21, "InvalidRequiredAcksError", False, False, "The acks value of the produce request is not allowed."),
    (22, "IllegalGenerationError", False, False, "The consumer group generation is not current."),
    (23, "InconsistentGroupProtocolError", False, False, "The member's protocols do not match the group's."),
    (24, "InvalidGroupIdError", False, False, "The group id is not valid."),
    (25, "UnknownMemberIdError", False, False, "The coordinator does not know this group member."),
    (26, "InvalidSessionTimeoutError", False, False, "The session timeout is outside the broker's allowed range."),
    (27, "RebalanceInProgressError", False, False, "The group is rebalancing; the member must join again."),
    (28, "InvalidCommitOffsetSizeError", False, False, "The size of the committed offset data is not valid."),
    (29, "TopicAuthorizationFailedError", False, False, "Not authorized to use this topic."),
    (30, "GroupAuthorizationFailedError", False, False, "Not authorized to use this group."),
    (31, "ClusterAuthorizationFailedError", False, False, "Not authorized for this cluster operation."),
    (32, "InvalidTimestampError", False, False, "A record's timestamp is outside the accepted range."),
    (33, "UnsupportedSaslMechanismError", False, False, "The broker does not offer this SASL mechanism."),
    (34, "IllegalSaslStateError", False, False, "The request does not fit the current state of the SASL exchange."),
    (35, "UnsupportedVersionError", False, False, "The broker does not support this API version."),
    (36, "TopicAlreadyExistsError", False, False, "A topic with this name exists already."),
    (37, "InvalidPartitionsError", False, False, "The partition count is not valid."),
    (38, "InvalidReplicationFactorError", False, False, "The replication factor is not valid for this cluster."),
    (39, "InvalidReplicationAssignmentError", False, False, "The replica assignment is not valid."),
    (40, "InvalidConfigurationError", False, False, "The configuration is not valid."),
    (41, "NotControllerError", True, False, "This broker is not the cluster's controller."),
    (42, "InvalidRequestError", False, False, "The broker could not make sense of the request."),
    (43, "UnsupportedForMessageFormatError", False, False, "The topic's message format version does not support this request."),
    (44, "PolicyViolationError", False, False, "The request breaks a configured policy."),
    (45, "OutOfOrderSequenceNumberError", False, False, "The broker saw a producer sequence number out of order."),
    (46, "DuplicateSequenceNumberError", False, False, "The broker saw a producer sequence number twice."),
    (47, "InvalidProducerEpochError", False, False, "The producer epoch is older than the broker's."),
    (48, "InvalidTxnStateError", False, False, "The transactional operation does not fit the transaction's state."),
    (49, "InvalidProducerIdMappingError", False, False, "The producer id is not the one assigned to this transactional id."),
    (50, "InvalidTransactionTimeoutError", False, False, "The transaction timeout exceeds the broker's maximum."),
    (51, "ConcurrentTransactionsError", True, False, "Another operation on the same transaction is in progress."),
    (52, "TransactionCoordinatorFencedError", False, False, "The transaction coordinator that sent the marker has been replaced."),
    (53, "TransactionalIdAuthorizationFailedError", False, False, "Not authorized to use this transactional id."),
    (54, "SecurityDisabledError", False, False, "Security features are turned off on the broker."),
    (55, "OperationNotAttemptedError", False, False, "The broker skipped this operation (another part of the request failed)."),
    (56, "KafkaStorageError", True, True, "The broker had a disk error on this partition's log."),
    (57, "LogDirNotFoundError", False, False, "The log directory given is not configured on the broker."),
    (58, "SaslAuthenticationFailedError", False, False, "SASL authentication failed."),
    (59, "UnknownProducerIdError", False, False, "The broker has no state for this producer id."),
    (60, "ReassignmentInProgressError", False, False, "A partition reassignment is under way."),
    (61, "DelegationTokenAuthDisabledError", False, False, "Delegation tokens are not enabled."),
    (62, "DelegationTokenNotFoundError", False, False, "The delegation token does not exist."),
    (63, "DelegationTokenOwnerMismatchError", False, False, "The principal is not the token's owner or renewer."),
    (64, "DelegationTokenRequestNotAllowedError", False, False, "Delegation token requests are not allowed on this connection."),
    (65, "DelegationTokenAuthorizationFailedError", False, False, "Not authorized for this delegation token operation."),
    (66, "DelegationTokenExpiredError", False, False, "The delegation token has expired."),
    (67, "InvalidPrincipalTypeError", False, False, "The principal type is not supported."),
    (68, "NonEmptyGroupError", False, False, "The group still has members."),
    (69, "GroupIdNotFoundError", False, False, "No group with this id exists."),
    (70, "FetchSessionIdNotFoundError", True, False, "The fetch session id is unknown to the broker."),
    (71, "InvalidFetchSessionEpochError", True, False, "The fetch session epoch is not the expected one."),
    (72, "ListenerNotFoundError", True, True, "The leader has no listener matching the one the metadata came from."),
    (73, "TopicDeletionDisabledError", False, False, "Deleting topics is turned off."),
    (74, "FencedLeaderEpochError", True, True, "The request's leader epoch is older than the broker's."),
    (75, "UnknownLeaderEpochError", True, True, "The request's leader epoch is newer than the broker's."),
    (76, "UnsupportedCompressionTypeError", False, False, "The client does not support the partition's compression type."),
    (77, "StaleBrokerEpochError", False, False, "The broker epoch has changed."),
    (78, "OffsetNotAvailableError", True, False, "The leader's high watermark has not caught up since an election."),
    (79, "MemberIdRequiredError", False, False, "The member must get a member id before joining."),
    (80, "PreferredLeaderNotAvailableError", True, True, "The preferred leader is not available."),
    (81, "GroupMaxSizeReachedError", False, False, "The consumer group is full."),
    (82, "FencedInstanceIdError", False, False, "Another consumer registered with the same group.instance.id."),
    (83, "EligibleLeadersNotAvailableError", True, True, "No eligible leader is available for the partition."),
    (84, "ElectionNotNeededError", True, True, "No leader election was needed for the partition."),
    (85, "NoReassignmentInProgressError", False, False, "No partition reassignment is under way."),
    (86, "GroupSubscribedToTopicError", False, False, "The group is still subscribed to the topic whose offsets should be deleted."),
    (87, "InvalidRecordError", False, False, "The broker refused a record after validating it."),
    (88, "UnstableOffsetCommitError", True, False, "Unstable offsets must be resolved first."),
    (89, "ThrottlingQuotaExceededError", True, False, "The throttling quota is used up."),
    (90, "ProducerFencedError", False, False, "A newer producer with the same transactional id has taken over."),
    (91, "ResourceNotFoundError", False, False, "The request refers to a resource that does not exist."),
    (92, "DuplicateResourceError", False, False, "The request names the same resource twice."),
    (93, "UnacceptableCredentialError", False, False, "The credential does not meet the acceptance criteria."),
    (94, "InconsistentVoterSetError", False, False, "The sender or receiver is not among the expected voters."),
    (95, "InvalidUpdateVersionError", False, False, "The update version is not valid."),
    (96, "FeatureUpdateFailedError", False, False, "Updating finalized features failed on the server."),
    (97, "PrincipalDeserializationFailureError", False, False, "The forwarded request's principal could not be deserialized."),
    (98, "SnapshotNotFoundError", False, False, "The snapshot asked for does not exist."),
    (99, "PositionOutOfRangeError", False, False, "The position is outside the snapshot."),
    (100, "UnknownTopicIdError", True, True, "The broker does not host a topic with this id."),
    (101, "DuplicateBrokerRegistrationError", False, False, "Another broker uses this broker id."),
    (102, "BrokerIdNotRegisteredError", False, False, "This broker id is not registered."),
    (103, "InconsistentTopicIdError", True, True, "The topic id of the log does not match the request's."),
    (104, "InconsistentClusterIdError", False, False, "The cluster id in the request does not match the server's."),
    (105, "TransactionalIdNotFoundError", False, False, "The transactional id is unknown."),
    (106, "FetchSessionTopicIdError", True, False, "The fetch session used topic ids inconsistently."),
    (107, "IneligibleReplicaError", False, False, "The new in-sync replica set contains an ineligible replica."),
    (108, "NewLeaderElectedError", False, False, "The partition state was updated but the leader changed."),
    (109, "OffsetMovedToTieredStorageError", False, False, "The offset has moved to tiered storage."),
    (110, "FencedMemberEpochError", False, False, "The group coordinator fenced this member epoch."),
    (111, "UnreleasedInstanceIdError", False, False, "Another member of the group still uses this instance id."),
    (112, "UnsupportedAssignorError", False, False, "The group does not support this assignor or its version."),
    (113, "StaleMemberEpochError", False, False, "The member epoch is out of date."),
    (114, "MismatchedEndpointTypeError", False, False, "The request reached an endpoint of the wrong type."),
    (115, "UnsupportedEndpointTypeError", False, False, "This endpoint type is not supported yet."),
    (116, "UnknownControllerIdError", False, False, "The controller id is unknown."),
    (117, "UnknownSubscriptionIdError", False, False, "The telemetry subscription id is unknown or out of date."),
    (118, "TelemetryTooLargeError", False, False, "The telemetry push is bigger than the broker accepts."),
    (119, "InvalidRegistrationError", False, False, "The controller considers the broker registration invalid."),
    (120, "TransactionAbortableError", False, False, "The transaction hit an error; abort it to go on."),
    (121, "InvalidRecordStateError", False, False, "The record's state is not valid."),
    (122, "ShareSessionNotFoundError", True, False, "The share session does not exist."),
    (123, "InvalidShareSessionEpochError", True, False, "The share session epoch is not the expected one."),
    (124, "FencedStateEpochError", False, False, "The share group state epoch does not match."),
    (125, "InvalidVoterKeyError", False, False, "The voter key does not match the receiving replica."),
    (126, "DuplicateVoterError", False, False, "The voter is already in the voter set."),
    (127, "VoterNotFoundError", False, False, "The voter is not in the voter set."),
    (128, "InvalidRegularExpressionError", False, False, "The regular expression is not valid."),
    (129, "RebootstrapRequiredError", False, False, "The client's metadata is stale: it must bootstrap again."),
    (130, "StreamsInvalidTopologyError", False, False, "The streams topology is not valid."),
    (131, "StreamsInvalidTopologyEpochError", False, False, "The streams topology epoch is not valid."),
    (132, "StreamsTopologyFencedError", False, False, "The streams topology epoch is out of date."),
    (133, "ShareSessionLimitReachedError", True, False, "The share session limit has been reached."),
)

# Older kafka-python spellings of the same classes.
_ALIASES = {
    "CorruptRecordException": "CorruptRecordError",
    "InvalidMessageError": "CorruptRecordError",
    "GroupLoadInProgressError": "CoordinatorLoadInProgressError",
    "GroupCoordinatorNotAvailableError": "CoordinatorNotAvailableError",
    "NotCoordinatorForGroupError": "NotCoordinatorError",
    "StaleLeaderEpochCodeError": "NetworkExceptionError",     # code 13's name before Kafka 0.10
}

kafka_errors: dict[int, type[BrokerResponseError]] = {}


def _define() -> None:
    space = globals()
    for errno, name, retriable, invalid_metadata, description in _BROKER_ERRORS:
        cls = type(name, (BrokerResponseError,), {
            "errno": errno,
            "message": _constant_name(name),
            "description": description,
            "retriable": retriable,
            "invalid_metadata": invalid_metadata,
            "__module__": __name__,
            "__doc__": description,
        })
        space[name] = cls
        kafka_errors[errno] = cls
    for alias, target in _ALIASES.items():
        space[alias] = space[target]


# kafka-python's `message` where it is not the class name in capitals (Kafka's old
# names of those codes, kept by kafka-python).
_MESSAGES = {
    "NoError": "NO_ERROR",
    "CorruptRecordError": "CORRUPT_MESSAGE",
    "InvalidFetchRequestError": "INVALID_FETCH_SIZE",
    "InvalidConfigurationError": "INVALID_CONFIG",
    "KafkaStorageError": "KAFKA_STORAGE_ERROR",
    "FetchSessionTopicIdError": "FETCH_SESSION_TOPIC_ID_ERROR",
}


def _constant_name(class_name: str) -> str:
    if class_name in _MESSAGES:
        return _MESSAGES[class_name]
    base = class_name[:-5] if class_name.endswith("Error") else class_name
    out = []
    for i, ch in enumerate(base):
        if ch.isupper() and i and not base[i - 1].isupper():
            out.append("_")
        out.append(ch.upper())
    return "".join(out)


_define()

_unknown_codes: dict[int, type[BrokerResponseError]] = {}


def for_code(errno: int) -> type[BrokerResponseError]:
    """The class for a broker error code; codes newer than this table get a named stand-in."""
    cls = kafka_errors.get(errno)
    if cls is not None:
        return cls
    cls = _unknown_codes.get(errno)
    if cls is None:
        cls = type(f"BrokerResponseError{errno}", (BrokerResponseError,), {
            "errno": errno, "message": f"ERROR_{errno}",
            "description": f"Kafka error code {errno} (not in this client's table).",
            "__module__": __name__})
        _unknown_codes[errno] = cls
    return cls


def check_error(errno: int, detail: str = "") -> None:
    """Raise the class for `errno` unless it is 0."""
    if errno:
        raise for_code(errno)(detail) if detail else for_code(errno)()
