"""How failed messages appear in a log line: bounded, and findable again.

A failure is logged with the messages' contents, or only their hashes when
message logging is off ([logging] log_messages_on_error, or the sender's
async_log_messages_on_error). Either way the line stays short: a message may
be 16 MiB, and journald cuts lines at 48 KiB. So a value is shown as the
first `VALUE_CHARS` characters of its repr, its length and a hash, and a
line shows at most `MAX_SHOWN` values and says how many more there were.

The hash is BLAKE2b with an 8-byte digest of the value, the one the shim
logs for the same message (client_shim.link), so a daemon line and a
worker's line can be matched, and the message found where it came from.
Pure: used by the engine and by the IPC server.
"""

from __future__ import annotations

import hashlib

VALUE_CHARS = 100   # of each value's repr
MAX_SHOWN = 20      # values per line, with contents
MAX_HASHES = 200    # values per line, hashes only


def digest(value: bytes | None) -> str:
    """The hash a log line gives for `value` (as the shim's: None hashes as b"")."""
    return hashlib.blake2b(value or b"", digest_size=8).hexdigest()


def describe_values(values, contents: bool) -> str:
    """`values` for a log line: "messages: ..." when `contents`, else "hashes ...".

    With contents, each value is its repr (cut at VALUE_CHARS characters, then
    "..."), its length in bytes and its hash; without, only its hash. At most
    MAX_SHOWN values (or MAX_HASHES hashes), then "(+N more)".
    """
    shown = []
    for v in values[:MAX_SHOWN if contents else MAX_HASHES]:
        if v is None:
            shown.append("None")
        elif not contents:
            shown.append(digest(v))
        else:
            r = repr(v)
            if len(r) > VALUE_CHARS:
                r = r[:VALUE_CHARS] + "..."
            shown.append(f"{r} ({len(v)} B, blake2b {digest(v)})")
    more = len(values) - len(shown)
    text = ("messages: " if contents else "hashes ") + ", ".join(shown)
    return text + (f" (+{more} more)" if more > 0 else "")


def describe_all(values, contents: bool) -> list[str]:
    """Every one of `values`, as `describe_values` shows them, over as many bounded
    parts as it takes (MAX_SHOWN values a part with contents, MAX_HASHES without):
    for the lines that are the record of each failed message."""
    per = MAX_SHOWN if contents else MAX_HASHES
    return [describe_values(values[i:i + per], contents) for i in range(0, len(values), per)] \
        or [describe_values([], contents)]
