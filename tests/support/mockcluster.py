"""The librdkafka mock cluster (inside the confluent-kafka wheel), reached through ctypes.

Several brokers in this process, with fault injection: leader moves, brokers
down and up, injected error codes, round-trip delays. Known quirks (checked):
it answers ApiVersions v3+ with error 35 and a v0 body, and it does not
deduplicate idempotent batches.
"""

from __future__ import annotations

import ctypes
import glob
import os

_lib = None


def _librdkafka() -> ctypes.CDLL:
    global _lib
    if _lib is not None:
        return _lib
    import confluent_kafka  # test dependency only

    here = os.path.dirname(confluent_kafka.__file__)
    found = glob.glob(os.path.join(here, "..", "confluent_kafka.libs", "librdkafka*.so*"))
    if not found:
        raise RuntimeError(f"no librdkafka shared library next to {here}")
    lib = ctypes.CDLL(found[0])
    vp, ci, cp, i16, i32, i64 = (ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p,
                                 ctypes.c_int16, ctypes.c_int32, ctypes.c_int64)
    sigs = {
        "rd_kafka_conf_new": (vp, []),
        "rd_kafka_conf_set": (ci, [vp, cp, cp, cp, ctypes.c_size_t]),
        "rd_kafka_new": (vp, [ci, vp, cp, ctypes.c_size_t]),
        "rd_kafka_destroy": (None, [vp]),
        "rd_kafka_mock_cluster_new": (vp, [vp, ci]),
        "rd_kafka_mock_cluster_destroy": (None, [vp]),
        "rd_kafka_mock_cluster_bootstraps": (cp, [vp]),
        "rd_kafka_mock_topic_create": (ci, [vp, cp, ci, ci]),
        "rd_kafka_mock_partition_set_leader": (ci, [vp, cp, i32, i32]),
        "rd_kafka_mock_partition_set_follower": (ci, [vp, cp, i32, i32]),
        "rd_kafka_mock_broker_set_down": (ci, [vp, i32]),
        "rd_kafka_mock_broker_set_up": (ci, [vp, i32]),
        "rd_kafka_mock_broker_set_rtt": (ci, [vp, i32, ci]),
        "rd_kafka_mock_push_request_errors_array": (None, [vp, i16, ctypes.c_size_t, ctypes.POINTER(ci)]),
        "rd_kafka_mock_broker_push_request_error_rtts": (ci, None),
        "rd_kafka_mock_clear_request_errors": (None, [vp, i16]),
        "rd_kafka_mock_topic_set_error": (None, [vp, cp, ci]),
        "rd_kafka_mock_start_request_tracking": (None, [vp]),
        "rd_kafka_mock_stop_request_tracking": (None, [vp]),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name, None)
        if fn is None:
            continue
        fn.restype = res
        if args is not None:
            fn.argtypes = args
    _ = i64
    _lib = lib
    return lib


class MockCluster:
    """A librdkafka mock cluster with `brokers` brokers (ids 1..n)."""

    def __init__(self, brokers: int = 3):
        lib = _librdkafka()
        self._lib = lib
        conf = lib.rd_kafka_conf_new()
        err = ctypes.create_string_buffer(512)
        # A producer handle owns the mock cluster's threads; it never connects anywhere.
        lib.rd_kafka_conf_set(conf, b"log_level", b"0", err, 512)
        self._rk = lib.rd_kafka_new(0, conf, err, 512)
        if not self._rk:
            raise RuntimeError(f"rd_kafka_new failed: {err.value.decode()}")
        self._mc = lib.rd_kafka_mock_cluster_new(self._rk, brokers)
        if not self._mc:
            lib.rd_kafka_destroy(self._rk)
            raise RuntimeError("rd_kafka_mock_cluster_new failed")
        self.brokers = brokers
        self.bootstrap = lib.rd_kafka_mock_cluster_bootstraps(self._mc).decode()

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed with librdkafka error {rc}")

    def create_topic(self, name: str, partitions: int = 3, replication: int = 3) -> None:
        self._check(self._lib.rd_kafka_mock_topic_create(
            self._mc, name.encode(), partitions, min(replication, self.brokers)), "topic_create")

    def set_leader(self, topic: str, partition: int, broker_id: int) -> None:
        self._check(self._lib.rd_kafka_mock_partition_set_leader(
            self._mc, topic.encode(), partition, broker_id), "partition_set_leader")

    def broker_down(self, broker_id: int) -> None:
        self._check(self._lib.rd_kafka_mock_broker_set_down(self._mc, broker_id), "broker_set_down")

    def broker_up(self, broker_id: int) -> None:
        self._check(self._lib.rd_kafka_mock_broker_set_up(self._mc, broker_id), "broker_set_up")

    def set_rtt(self, broker_id: int, rtt_ms: int) -> None:
        self._check(self._lib.rd_kafka_mock_broker_set_rtt(self._mc, broker_id, rtt_ms), "broker_set_rtt")

    def push_request_errors(self, api_key: int, *errors: int) -> None:
        """The next len(errors) requests of api_key (any broker) fail with these codes in turn."""
        arr = (ctypes.c_int * len(errors))(*errors)
        self._lib.rd_kafka_mock_push_request_errors_array(self._mc, api_key, len(errors), arr)

    def clear_request_errors(self, api_key: int) -> None:
        self._lib.rd_kafka_mock_clear_request_errors(self._mc, api_key)

    def set_topic_error(self, topic: str, error: int) -> None:
        self._lib.rd_kafka_mock_topic_set_error(self._mc, topic.encode(), error)

    def close(self) -> None:
        if self._mc:
            self._lib.rd_kafka_mock_cluster_destroy(self._mc)
            self._mc = None
        if self._rk:
            self._lib.rd_kafka_destroy(self._rk)
            self._rk = None
