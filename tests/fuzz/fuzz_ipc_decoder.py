"""Coverage-guided fuzzing of the daemon's frame decoder with atheris (libFuzzer).

The daemon decodes every frame from the ZeroMQ socket with
`client_shim.schema.decode_request(frame, max_bytes)`. Whatever the bytes, it
must return a (kind, fields) pair or raise `SchemaError`: any other exception
is a crash of the daemon's input path, and libFuzzer reports it with the
input that caused it.

Run by hand (longer):
    python -m tests.fuzz.fuzz_ipc_decoder -runs=2000000 -max_len=4096
`tests/fuzz/test_atheris.py` runs a bounded campaign in `make test`.
"""

from __future__ import annotations

import sys

import atheris

with atheris.instrument_imports():
    from client_shim import schema

MAX_FRAME = 64 * 1024

# Valid frames of every kind, so mutations start from deep inside the schema
# rather than at the msgpack header.
SEEDS = [
    schema.encode([schema.REGISTER, schema.SCHEMA_VERSION, 1, b"s" * 16, 0, {"acks": 1}]),
    schema.encode([schema.SEND, b"s" * 16, [[0, "topic", 0, 1, None, [b"v"]]]]),
    schema.encode([schema.SEND_GROUPS, b"s" * 16, [["topic", 0, 1, [0, 2], [1, 2], None, [b"v"] * 3]]]),
    schema.encode([schema.SEND_SYNC, b"s" * 16, 1, "topic", 0, 1, None, [b"v"]]),
    schema.encode([schema.METADATA, 1, "topic"]),
]


def test_one_input(data: bytes) -> None:
    try:
        kind, fields = schema.decode_request(data, MAX_FRAME)
    except schema.SchemaError:
        return
    if not isinstance(kind, int) or not isinstance(fields, list):
        raise AssertionError(f"decode_request returned {kind!r}, {type(fields).__name__}")


def main(argv: list[str]) -> None:
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
