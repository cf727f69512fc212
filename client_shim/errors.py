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
# kafka-python's; retriable/invalid_metadata are Apache Kafka's.
_BROKER_ERRORS: tuple[tuple[int, str, bool, bool, str], ...] = (
    (-1, "UnknownError", False, False, "The server experienced an unexpected error when processing the request."),
    (0, "NoError", False, False, "No error."),
    (1, "OffsetOutOfRangeError", False, False, "The requested offset is not within the range of offsets maintained by the server."),
    (2, "CorruptRecordError", True, False, "The record failed its CRC check, exceeds the valid size, has a null key on a compacted topic, or is otherwise corrupt."),
    (3, "UnknownTopicOrPartitionError", True, True, "This server does not host this topic-partition."),
    (4, "InvalidFetchRequestError", False, False, "The requested fetch size is invalid."),
    (5, "LeaderNotAvailableError", True, True, "There is no leader for this topic-partition as we are in the middle of a leadership election."),
    (6, "NotLeaderForPartitionError", True, True, "The broker is not the leader for that topic-partition."),
    (7, "RequestTimedOutError", True, False, "The request timed out."),
    (8, "BrokerNotAvailableError", False, False, "The broker is not available."),
    (9, "ReplicaNotAvailableError", True, True, "The replica is not available for the requested topic-partition."),
    (10, "MessageSizeTooLargeError", False, False, "The request included a message larger than the max message size the server will accept."),
    (11, "StaleControllerEpochError", False, False, "The controller moved to another broker."),
    (12, "OffsetMetadataTooLargeError", False, False, "The metadata field of the offset request was too large."),
    (13, "NetworkExceptionError", True, True, "The server disconnected before a response was received."),
    (14, "CoordinatorLoadInProgressError", True, False, "The coordinator is loading and hence can't process requests."),
    (15, "CoordinatorNotAvailableError", True, False, "The coordinator is not available."),
    (16, "NotCoordinatorError", True, False, "This is not the correct coordinator."),
    (17, "InvalidTopicError", False, False, "The request attempted to perform an operation on an invalid topic."),
    (18, "RecordListTooLargeError", False, False, "The request included message batch larger than the configured segment size on the server."),
    (19, "NotEnoughReplicasError", True, False, "Messages are rejected since there are fewer in-sync replicas than required."),
    (20, "NotEnoughReplicasAfterAppendError", True, False, "Messages are written to the log, but to fewer in-sync replicas than required."),
    (21, "InvalidRequiredAcksError", False, False, "Produce request specified an invalid value for required acks."),
    (22, "IllegalGenerationError", False, False, "Specified group generation id is not valid."),
    (23, "InconsistentGroupProtocolError", False, False, "The group member's supported protocols are incompatible with those of existing members."),
    (24, "InvalidGroupIdError", False, False, "The configured groupId is invalid."),
    (25, "UnknownMemberIdError", False, False, "The coordinator is not aware of this member."),
    (26, "InvalidSessionTimeoutError", False, False, "The session timeout is not within the range allowed by the broker."),
    (27, "RebalanceInProgressError", False, False, "The group is rebalancing, so a rejoin is needed."),
    (28, "InvalidCommitOffsetSizeError", False, False, "The committing offset data size is not valid."),
    (29, "TopicAuthorizationFailedError", False, False, "Topic authorization failed."),
    (30, "GroupAuthorizationFailedError", False, False, "Group authorization failed."),
    (31, "ClusterAuthorizationFailedError", False, False, "Cluster authorization failed."),
    (32, "InvalidTimestampError", False, False, "The timestamp of the message is out of acceptable range."),
    (33, "UnsupportedSaslMechanismError", False, False, "The broker does not support the requested SASL mechanism."),
    (34, "IllegalSaslStateError", False, False, "Request is not valid given the current SASL state."),
    (35, "UnsupportedVersionError", False, False, "The version of API is not supported."),
    (36, "TopicAlreadyExistsError", False, False, "Topic with this name already exists."),
    (37, "InvalidPartitionsError", False, False, "Number of partitions is below 1."),
    (38, "InvalidReplicationFactorError", False, False, "Replication factor is below 1 or larger than the number of available brokers."),
    (39, "InvalidReplicationAssignmentError", False, False, "Replica assignment is invalid."),
    (40, "InvalidConfigurationError", False, False, "Configuration is invalid."),
    (41, "NotControllerError", True, False, "This is not the correct controller for this cluster."),
    (42, "InvalidRequestError", False, False, "This most likely occurs because of a request being malformed by the client library or the message was sent to an incompatible broker."),
    (43, "UnsupportedForMessageFormatError", False, False, "The message format version on the broker does not support the request."),
    (44, "PolicyViolationError", False, False, "Request parameters do not satisfy the configured policy."),
    (45, "OutOfOrderSequenceNumberError", False, False, "The broker received an out of order sequence number."),
    (46, "DuplicateSequenceNumberError", False, False, "The broker received a duplicate sequence number."),
    (47, "InvalidProducerEpochError", False, False, "Producer attempted to produce with an old epoch."),
    (48, "InvalidTxnStateError", False, False, "The producer attempted a transactional operation in an invalid state."),
    (49, "InvalidProducerIdMappingError", False, False, "The producer attempted to use a producer id which is not currently assigned to its transactional id."),
    (50, "InvalidTransactionTimeoutError", False, False, "The transaction timeout is larger than the maximum value allowed by the broker."),
    (51, "ConcurrentTransactionsError", True, False, "The producer attempted to update a transaction while another concurrent operation on the same transaction was ongoing."),
    (52, "TransactionCoordinatorFencedError", False, False, "Indicates that the transaction coordinator sending a WriteTxnMarker is no longer the current coordinator."),
    (53, "TransactionalIdAuthorizationFailedError", False, False, "Transactional Id authorization failed."),
    (54, "SecurityDisabledError", False, False, "Security features are disabled."),
    (55, "OperationNotAttemptedError", False, False, "The broker did not attempt to execute this operation."),
    (56, "KafkaStorageError", True, True, "Disk error when trying to access log file on the disk."),
    (57, "LogDirNotFoundError", False, False, "The user-specified log directory is not found in the broker config."),
    (58, "SaslAuthenticationFailedError", False, False, "SASL Authentication failed."),
    (59, "UnknownProducerIdError", False, False, "The broker could not locate the producer metadata associated with the producer id."),
    (60, "ReassignmentInProgressError", False, False, "A partition reassignment is in progress."),
    (61, "DelegationTokenAuthDisabledError", False, False, "Delegation Token feature is not enabled."),
    (62, "DelegationTokenNotFoundError", False, False, "Delegation Token is not found on server."),
    (63, "DelegationTokenOwnerMismatchError", False, False, "Specified Principal is not valid Owner/Renewer."),
    (64, "DelegationTokenRequestNotAllowedError", False, False, "Delegation Token requests are not allowed on this connection."),
    (65, "DelegationTokenAuthorizationFailedError", False, False, "Delegation Token authorization failed."),
    (66, "DelegationTokenExpiredError", False, False, "Delegation Token is expired."),
    (67, "InvalidPrincipalTypeError", False, False, "Supplied principalType is not supported."),
    (68, "NonEmptyGroupError", False, False, "The group is not empty."),
    (69, "GroupIdNotFoundError", False, False, "The group id does not exist."),
    (70, "FetchSessionIdNotFoundError", True, False, "The fetch session ID was not found."),
    (71, "InvalidFetchSessionEpochError", True, False, "The fetch session epoch is invalid."),
    (72, "ListenerNotFoundError", True, True, "There is no listener on the leader broker that matches the listener on which metadata request was processed."),
    (73, "TopicDeletionDisabledError", False, False, "Topic deletion is disabled."),
    (74, "FencedLeaderEpochError", True, True, "The leader epoch in the request is older than the epoch on the broker."),
    (75, "UnknownLeaderEpochError", True, True, "The leader epoch in the request is newer than the epoch on the broker."),
    (76, "UnsupportedCompressionTypeError", False, False, "The requesting client does not support the compression type of given partition."),
    (77, "StaleBrokerEpochError", False, False, "Broker epoch has changed."),
    (78, "OffsetNotAvailableError", True, False, "The leader high watermark has not caught up from a recent leader election so the offsets cannot be guaranteed to be monotonically increasing."),
    (79, "MemberIdRequiredError", False, False, "The group member needs to have a valid member id before actually entering a consumer group."),
    (80, "PreferredLeaderNotAvailableError", True, True, "The preferred leader was not available."),
    (81, "GroupMaxSizeReachedError", False, False, "The consumer group has reached its max size."),
    (82, "FencedInstanceIdError", False, False, "The broker rejected this static consumer since another consumer with the same group.instance.id has registered with a different member.id."),
    (83, "EligibleLeadersNotAvailableError", True, True, "Eligible topic partition leaders are not available."),
    (84, "ElectionNotNeededError", True, True, "Leader election not needed for topic partition."),
    (85, "NoReassignmentInProgressError", False, False, "No partition reassignment is in progress."),
    (86, "GroupSubscribedToTopicError", False, False, "Deleting offsets of a topic is forbidden while the consumer group is actively subscribed to it."),
    (87, "InvalidRecordError", False, False, "This record has failed the validation on broker and hence will be rejected."),
    (88, "UnstableOffsetCommitError", True, False, "There are unstable offsets that need to be cleared."),
    (89, "ThrottlingQuotaExceededError", True, False, "The throttling quota has been exceeded."),
    (90, "ProducerFencedError", False, False, "There is a newer producer with the same transactionalId which fences the current one."),
    (91, "ResourceNotFoundError", False, False, "A request illegally referred to a resource that does not exist."),
    (92, "DuplicateResourceError", False, False, "A request illegally referred to the same resource twice."),
    (93, "UnacceptableCredentialError", False, False, "Requested credential would not meet criteria for acceptability."),
    (94, "InconsistentVoterSetError", False, False, "Indicates that the either the sender or recipient of a voter-only request is not one of the expected voters."),
    (95, "InvalidUpdateVersionError", False, False, "The given update version was invalid."),
    (96, "FeatureUpdateFailedError", False, False, "Unable to update finalized features due to an unexpected server error."),
    (97, "PrincipalDeserializationFailureError", False, False, "Request principal deserialization failed during forwarding."),
    (98, "SnapshotNotFoundError", False, False, "Requested snapshot was not found."),
    (99, "PositionOutOfRangeError", False, False, "Requested position is not greater than or equal to zero, and less than the size of the snapshot."),
    (100, "UnknownTopicIdError", True, True, "This server does not host this topic ID."),
    (101, "DuplicateBrokerRegistrationError", False, False, "This broker ID is already in use."),
    (102, "BrokerIdNotRegisteredError", False, False, "The given broker ID was not registered."),
    (103, "InconsistentTopicIdError", True, True, "The log's topic ID did not match the topic ID in the request."),
    (104, "InconsistentClusterIdError", False, False, "The clusterId in the request does not match that found on the server."),
    (105, "TransactionalIdNotFoundError", False, False, "The transactionalId could not be found."),
    (106, "FetchSessionTopicIdError", True, False, "The fetch session encountered inconsistent topic ID usage."),
    (107, "IneligibleReplicaError", False, False, "The new ISR contains at least one ineligible replica."),
    (108, "NewLeaderElectedError", False, False, "The AlterPartition request successfully updated the partition state but the leader has changed."),
    (109, "OffsetMovedToTieredStorageError", False, False, "The requested offset is moved to tiered storage."),
    (110, "FencedMemberEpochError", False, False, "The member epoch is fenced by the group coordinator."),
    (111, "UnreleasedInstanceIdError", False, False, "The instance ID is still used by another member in the consumer group."),
    (112, "UnsupportedAssignorError", False, False, "The assignor or its version range is not supported by the consumer group."),
    (113, "StaleMemberEpochError", False, False, "The member epoch is stale."),
    (114, "MismatchedEndpointTypeError", False, False, "The request was sent to an endpoint of the wrong type."),
    (115, "UnsupportedEndpointTypeError", False, False, "This endpoint type is not supported yet."),
    (116, "UnknownControllerIdError", False, False, "This controller ID is not known."),
    (117, "UnknownSubscriptionIdError", False, False, "Client sent a push telemetry request with an invalid or outdated subscription ID."),
    (118, "TelemetryTooLargeError", False, False, "Client sent a push telemetry request larger than the maximum size the broker will accept."),
    (119, "InvalidRegistrationError", False, False, "The controller has considered the broker registration to be invalid."),
    (120, "TransactionAbortableError", False, False, "The server encountered an error with the transaction; the client can abort the transaction to continue."),
    (121, "InvalidRecordStateError", False, False, "The record state is invalid."),
    (122, "ShareSessionNotFoundError", True, False, "The share session was not found."),
    (123, "InvalidShareSessionEpochError", True, False, "The share session epoch is invalid."),
    (124, "FencedStateEpochError", False, False, "The share coordinator rejected the request because the share-group state epoch did not match."),
    (125, "InvalidVoterKeyError", False, False, "The voter key doesn't match the receiving replica's key."),
    (126, "DuplicateVoterError", False, False, "The voter is already part of the set of voters."),
    (127, "VoterNotFoundError", False, False, "The voter is not part of the set of voters."),
    (128, "InvalidRegularExpressionError", False, False, "The regular expression is not valid."),
    (129, "RebootstrapRequiredError", False, False, "Client metadata is stale; the client should rebootstrap to obtain new metadata."),
    (130, "StreamsInvalidTopologyError", False, False, "The supplied topology is invalid."),
    (131, "StreamsInvalidTopologyEpochError", False, False, "The supplied topology epoch is invalid."),
    (132, "StreamsTopologyFencedError", False, False, "The supplied topology epoch is outdated."),
    (133, "ShareSessionLimitReachedError", True, False, "The limit of share sessions has been reached."),
)

# Older kafka-python spellings of the same classes.
_ALIASES = {
    "CorruptRecordException": "CorruptRecordError",
    "InvalidMessageError": "CorruptRecordError",
    "GroupLoadInProgressError": "CoordinatorLoadInProgressError",
    "GroupCoordinatorNotAvailableError": "CoordinatorNotAvailableError",
    "NotCoordinatorForGroupError": "NotCoordinatorError",
    "StaleLeaderEpochCodeError": "StaleControllerEpochError",
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


def _constant_name(class_name: str) -> str:
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
