"""The engine's state machines: each an enum plus a table of allowed moves.

Every stateful object in the engine (a broker connection, a record batch, a
producer id) holds one of these enums in `.state` and changes it only through
`advance()`, which checks the move against the table. A move that is not in
the table is a bug in the engine, so it raises `AssertionError` naming the
object and both states instead of letting the state drift.

Connection (one per broker node, the driver owns the socket):

    DOWN --connect--> CONNECTING --tcp up--> NEGOTIATING (ApiVersions)
    NEGOTIATING --versions known--> AUTHENTICATING (SASL) or READY
    AUTHENTICATING --authenticated--> READY
    any but DOWN/BACKOFF --closed/failed--> BACKOFF --backoff over--> DOWN

Batch (records of one lane travelling together):

    OPEN (taking records) --> READY (closed: full, lingered, sync or drain)
    READY --sent--> IN_FLIGHT --acked/failed--> DONE
    IN_FLIGHT --retriable failure--> RETRY (backoff, keeps its sequence) --> READY
    OPEN/READY/RETRY --expired or failed locally--> DONE

Producer id (one per idempotent settings group):

    NONE --InitProducerId sent--> INITIALIZING --answer--> READY
    INITIALIZING --retriable error--> NONE (asked again after a backoff)
    INITIALIZING --permanent error--> DISABLED (group sends without idempotence)
    READY --sequence lost (45/59/47)--> BUMP_PENDING (wait for in-flight to settle)
    BUMP_PENDING --InitProducerId sent--> INITIALIZING
"""

from __future__ import annotations

import enum


class _State(enum.Enum):
    """Members are singletons compared by identity, so they hash by identity too.

    Enum's own `__hash__` is Python code (it hashes the name); the engine
    hashes states several times per batch (`advance`, open-state checks), a
    C-level identity hash saves those calls.
    """

    __hash__ = object.__hash__


class ConnState(_State):
    DOWN = "down"
    CONNECTING = "connecting"
    NEGOTIATING = "negotiating"
    AUTHENTICATING = "authenticating"
    READY = "ready"
    BACKOFF = "backoff"


class BatchState(_State):
    OPEN = "open"
    READY = "ready"
    IN_FLIGHT = "in_flight"
    RETRY = "retry"
    DONE = "done"


class PidState(_State):
    NONE = "none"
    INITIALIZING = "initializing"
    READY = "ready"
    BUMP_PENDING = "bump_pending"
    DISABLED = "disabled"


_C = ConnState
_B = BatchState
_P = PidState

TRANSITIONS: dict[type[enum.Enum], dict[enum.Enum, frozenset[enum.Enum]]] = {
    ConnState: {
        _C.DOWN: frozenset({_C.CONNECTING}),
        _C.CONNECTING: frozenset({_C.NEGOTIATING, _C.BACKOFF}),
        _C.NEGOTIATING: frozenset({_C.AUTHENTICATING, _C.READY, _C.BACKOFF}),
        _C.AUTHENTICATING: frozenset({_C.READY, _C.BACKOFF}),
        _C.READY: frozenset({_C.BACKOFF}),
        _C.BACKOFF: frozenset({_C.DOWN}),
    },
    BatchState: {
        _B.OPEN: frozenset({_B.READY, _B.DONE}),
        _B.READY: frozenset({_B.IN_FLIGHT, _B.DONE}),
        _B.IN_FLIGHT: frozenset({_B.DONE, _B.RETRY}),
        _B.RETRY: frozenset({_B.READY, _B.DONE}),
        _B.DONE: frozenset(),
    },
    PidState: {
        _P.NONE: frozenset({_P.INITIALIZING}),
        _P.INITIALIZING: frozenset({_P.READY, _P.NONE, _P.DISABLED}),
        _P.READY: frozenset({_P.BUMP_PENDING}),
        _P.BUMP_PENDING: frozenset({_P.INITIALIZING}),
        _P.DISABLED: frozenset(),
    },
}


def advance(obj, new: enum.Enum) -> None:
    """Move `obj.state` to `new`, checking the move against TRANSITIONS."""
    old = obj.state
    if new is old:
        return
    if new not in TRANSITIONS[type(old)][old]:
        raise AssertionError(f"{obj!r}: illegal state change {old.name} -> {new.name}")
    obj.state = new
