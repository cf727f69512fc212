"""kafkad: a host-local producer sidecar for Apache Kafka."""

__version__ = "0.1.0"
