"""Partitioners for KeyedProducer, with kafka-python's legacy interface.

A partitioner is built with the list of partition ids and answers
`partition(key, partitions=None) -> partition id` (the second argument, when
a non-empty list, is the current partition list and wins over the one it was
built with; None or an empty list means the one it was built with, as in
kafka-python). `Partitioner` itself can be built, as in kafka-python; its
`partition` raises NotImplementedError.

`HashedPartitioner` is `Murmur2Partitioner`: the same partition as the Java
client's default partitioner for a keyed record,
`(murmur2(key) & 0x7fffffff) % len(partitions)`, so every process (whatever
its PYTHONHASHSEED) and every Java or librdkafka ("murmur2_random") producer
puts a key in the same partition. A record without a key goes to a random
partition, as in the Java client.
"""

from __future__ import annotations

import functools
import random

__all__ = ["Partitioner", "Murmur2Partitioner", "HashedPartitioner",
           "RoundRobinPartitioner", "murmur2"]

_M = 0x5BD1E995
_SEED = 0x9747B28C
_MASK = 0xFFFFFFFF


def murmur2(data: bytes) -> int:
    """Kafka's 32-bit murmur2 of `data`, as a signed int (the Java client's value)."""
    length = len(data)
    h = (_SEED ^ length) & _MASK
    tail = length & ~3
    for i in range(0, tail, 4):
        k = int.from_bytes(data[i:i + 4], "little")
        k = (k * _M) & _MASK
        k ^= k >> 24
        k = (k * _M) & _MASK
        h = ((h * _M) & _MASK) ^ k
    rest = length & 3
    if rest == 3:
        h ^= data[tail + 2] << 16
    if rest >= 2:
        h ^= data[tail + 1] << 8
    if rest >= 1:
        h ^= data[tail]
        h = (h * _M) & _MASK
    h ^= h >> 13
    h = (h * _M) & _MASK
    h ^= h >> 15
    return h - (1 << 32) if h & 0x80000000 else h


class Partitioner:
    """Base class: subclasses implement `partition(key, partitions=None)`.

    Not an abstract base class: kafka-python's could be instantiated (only its
    `partition` raised), and legacy code may do so.
    """

    def __init__(self, partitions=None):
        self.partitions = list(partitions) if partitions is not None else None

    def partition(self, key, partitions=None):
        """The partition id for `key`, chosen from `partitions` (or the list given at construction)."""
        raise NotImplementedError(f"{type(self).__name__} must implement partition(key, partitions=None)")

    def _current(self, partitions):
        parts = partitions if partitions else self.partitions      # kafka-python: `if not partitions`
        if not parts:
            raise ValueError("partitions: the topic has no partitions to choose from")
        return parts


class Murmur2Partitioner(Partitioner):
    """Java-compatible hashing: `(murmur2(key) & 0x7fffffff) % n` over the sorted ids."""

    def partition(self, key, partitions=None):
        parts = self._current(partitions)
        if key is None:
            return random.choice(parts)
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"key must be bytes to be hashed, not {type(key).__name__}")
        return parts[(_murmur2_cached(bytes(key)) & 0x7FFFFFFF) % len(parts)]


HashedPartitioner = Murmur2Partitioner

# Keys repeat (user ids, order ids): remember recent hashes.
_murmur2_cached = functools.lru_cache(maxsize=8192)(murmur2)


def pick_index(partitioner: Partitioner, key) -> int | None:
    """The index `partitioner` would take from any sorted partition list, modulo its length.

    For a producer that has no partition list yet (kafkad picks the partition
    once it knows the list: client_shim.schema.PICK_PARTITION_MIN): the key's
    murmur2 hash, or the round robin's next count, in [0, 2**31). None when
    the choice needs the list (a partitioner of the application's own, or one
    that overrides `partition`).
    """
    method = type(partitioner).partition
    if method is Murmur2Partitioner.partition:
        if key is None:
            return random.randrange(2**31)
        if not isinstance(key, (bytes, bytearray, memoryview)):
            raise TypeError(f"key must be bytes to be hashed, not {type(key).__name__}")
        return _murmur2_cached(bytes(key)) & 0x7FFFFFFF
    if method is RoundRobinPartitioner.partition:
        i = partitioner._next % 2**31
        partitioner._next = i + 1
        return i
    return None


class RoundRobinPartitioner(Partitioner):
    """Ignores the key: each call takes the next partition in turn."""

    def __init__(self, partitions=None):
        super().__init__(partitions)
        self._next = 0

    def partition(self, key, partitions=None):
        parts = self._current(partitions)
        i = self._next % len(parts)
        self._next = i + 1
        return parts[i]
