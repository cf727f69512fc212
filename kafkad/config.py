"""kafkad's configuration: frozen, typed dataclasses with their defaults.

This module holds only the *shape* of the configuration and its defaults.
Loading a TOML file into it (with `PATH:LINE: key: problem` errors) lives in
`kafkad.configfile`. `kafkad.toml.example` documents every key; a test keeps
the example and these dataclasses in step.
"""

from __future__ import annotations

from dataclasses import dataclass, field

DEFAULT_CONFIG_PATH = "/etc/kafkad/kafkad.toml"
DEFAULT_ENDPOINT = "ipc:///run/kafkad/kafkad.sock"


@dataclass(frozen=True, slots=True)
class TlsConfig:
    # Used with security_protocol SSL / SASL_SSL (kafkad.broker.security.make_ssl_context).
    # The broker's certificate chain is always verified; TLS 1.2 is the oldest version offered.
    ca_file: str = ""          # empty: the system trust store
    cert_file: str = ""        # client certificate (mutual TLS), optional
    key_file: str = ""         # private key (PEM) of cert_file
    key_password_file: str = ""  # password of an encrypted key_file (the only source for it)
    check_hostname: bool = True  # false skips only the host name check, never the chain


@dataclass(frozen=True, slots=True)
class SaslConfig:
    mechanism: str = "PLAIN"   # PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
    username: str = ""
    password: str = field(default="", repr=False)
    # Read at each authentication (a rotated password is used on the next
    # connection); wins over password_env. Final line break removed.
    password_file: str = ""
    password_env: str = ""     # name of an environment variable holding the password


@dataclass(frozen=True, slots=True)
class KafkaConfig:
    bootstrap_servers: tuple[str, ...] = ("127.0.0.1:9092",)
    client_id: str = "kafkad"
    security_protocol: str = "PLAINTEXT"  # PLAINTEXT | SSL | SASL_PLAINTEXT | SASL_SSL
    idempotence: bool = True
    # How long to wait for a broker's answer before the request counts as lost
    # (and is retried).
    request_timeout_ms: int = 30_000
    connect_timeout_ms: int = 10_000
    # A record not delivered this long after it was accepted fails with
    # RequestTimedOutError (the per-record upper bound on retries).
    delivery_timeout_ms: int = 120_000
    metadata_max_age_ms: int = 300_000
    # A topic with no submission for this long and no records left in the
    # daemon is forgotten (metadata, lanes, per-topic counters): the Java
    # producer's metadata.max.idle.ms (KIP-526).
    metadata_max_idle_ms: int = 300_000
    allow_auto_create_topics: bool = True
    max_in_flight_per_connection: int = 5
    retry_backoff_max_ms: int = 1_000
    reconnect_backoff_ms: int = 50
    reconnect_backoff_max_ms: int = 1_000
    # How long released records may wait for companions before a request goes
    # out. Sync sends ignore it. 5 ms: librdkafka's default, and the Java
    # producer's since Kafka 4.0 (KIP-1030); kafkad.toml.example has the figures.
    linger_ms: float = 5.0
    batch_max_bytes: int = 1_048_576     # one RecordBatch, before compression
    request_max_bytes: int = 1_048_576   # one Produce request
    # How long records for a topic the cluster says does not exist wait (for
    # auto-creation or a topic just created elsewhere) before they fail with
    # UnknownTopicOrPartitionError.
    unknown_topic_wait_ms: int = 3_000
    tls: TlsConfig = TlsConfig()
    sasl: SaslConfig = SaslConfig()


@dataclass(frozen=True, slots=True)
class QueueConfig:
    # Global caps on messages accepted but not yet delivered or failed.
    max_messages: int = 1_000_000
    max_bytes: int = 512 * 1024 * 1024


# The smallest `[ipc] max_frame_bytes` a config file may set: a frame the shim
# builds holds up to about 256 KiB of calls plus one call of up to 8 MiB
# (client_shim.schema.MAX_CALL_BYTES, message overhead included), and a frame
# the daemon cannot take would be offered again on every replay.
MIN_FRAME_BYTES = 9 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class IpcConfig:
    endpoint: str = DEFAULT_ENDPOINT
    socket_mode: int = 0o660     # written as a string in TOML: "0660"
    socket_group: str = ""       # empty: the daemon's primary group
    max_frame_bytes: int = 16 * 1024 * 1024
    max_sessions: int = 10_000
    # One producer session's share of the daemon queue: past this many of its
    # messages in flight its SENDs are refused (the shim backs off and
    # replays), so one flooding process cannot starve the others.
    max_inflight_per_session: int = 200_000
    # How long a METADATA question from a shim may wait for the cluster.
    metadata_timeout_s: float = 5.0


@dataclass(frozen=True, slots=True)
class SpoolConfig:
    enabled: bool = False
    path: str = "/var/lib/kafkad/spool"
    fsync: str = "interval"      # always | interval | never
    fsync_interval_ms: int = 100
    segment_bytes: int = 64 * 1024 * 1024
    max_bytes: int = 4 * 1024 * 1024 * 1024
    when_full: str = "block"     # block | reject


@dataclass(frozen=True, slots=True)
class ShutdownConfig:
    drain_timeout_s: float = 30.0


@dataclass(frozen=True, slots=True)
class StatsConfig:
    prometheus_listen: str = ""  # "127.0.0.1:9465" to serve /metrics; empty: off
    status_interval_s: float = 5.0


@dataclass(frozen=True, slots=True)
class LoggingConfig:
    level: str = "INFO"
    log_messages_on_error: bool = True


@dataclass(frozen=True, slots=True)
class Config:
    kafka: KafkaConfig = KafkaConfig()
    queue: QueueConfig = QueueConfig()
    ipc: IpcConfig = IpcConfig()
    spool: SpoolConfig = SpoolConfig()
    shutdown: ShutdownConfig = ShutdownConfig()
    stats: StatsConfig = StatsConfig()
    logging: LoggingConfig = LoggingConfig()
