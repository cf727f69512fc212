"""client_shim: the legacy kafka-python Producer API, served by the local kafkad daemon.

Application processes import this package instead of `kafka`; messages go
over a local ZeroMQ socket to the kafkad daemon, which owns the broker
connections. Importing it creates nothing: no socket, no thread, no context
(those appear at the first send, per process, and again after fork()).
Dependencies: pyzmq and msgpack only.
"""

from client_shim import errors
from client_shim.client import DaemonClient, KafkaClient, SimpleClient
from client_shim.errors import (
    AsyncProducerQueueFull,
    FailedPayloadsError,
    KafkadUnavailableError,
    KafkaError,
    KafkaUnavailableError,
    UnsupportedCodecError,
)
from client_shim.partitioner import (
    HashedPartitioner,
    Murmur2Partitioner,
    Partitioner,
    RoundRobinPartitioner,
)
from client_shim.producer import (
    ALL_CODECS,
    CODEC_GZIP,
    CODEC_LZ4,
    CODEC_NONE,
    CODEC_SNAPPY,
    CODEC_ZSTD,
    KeyedProducer,
    ProduceResponsePayload,
    Producer,
    SimpleProducer,
)

ACK_NOT_REQUIRED = Producer.ACK_NOT_REQUIRED
ACK_AFTER_LOCAL_WRITE = Producer.ACK_AFTER_LOCAL_WRITE
ACK_AFTER_CLUSTER_COMMIT = Producer.ACK_AFTER_CLUSTER_COMMIT
DEFAULT_ACK_TIMEOUT = Producer.DEFAULT_ACK_TIMEOUT

__all__ = [
    "ACK_AFTER_CLUSTER_COMMIT", "ACK_AFTER_LOCAL_WRITE", "ACK_NOT_REQUIRED", "ALL_CODECS",
    "AsyncProducerQueueFull", "CODEC_GZIP", "CODEC_LZ4", "CODEC_NONE", "CODEC_SNAPPY",
    "CODEC_ZSTD", "DEFAULT_ACK_TIMEOUT", "DaemonClient", "FailedPayloadsError",
    "HashedPartitioner", "KafkaClient", "KafkaError", "KafkaUnavailableError",
    "KafkadUnavailableError", "KeyedProducer", "Murmur2Partitioner", "Partitioner",
    "ProduceResponsePayload", "Producer", "RoundRobinPartitioner", "SimpleClient",
    "SimpleProducer", "UnsupportedCodecError", "errors",
]
