"""Logging set-up: the journal under systemd, stderr otherwise; one key=value line per event.

The daemon logs events worth an operator's attention (start, ready, reload,
broker trouble, undelivered messages, stop), never one line per message.
`event(logger, level, name, **fields)` writes ``name key=value key=value``;
values with spaces or quotes are quoted so a line splits back unambiguously.
Under the journal the same fields also travel as structured journal fields
(``KAFKAD_EVENT=reload``, ``KAFKAD_PATH=...``) for ``journalctl KAFKAD_EVENT=...``.

Running under systemd is recognised as systemd documents it: ``JOURNAL_STREAM``
names the device and inode of our stderr, or ``INVOCATION_ID`` is set.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from typing import IO, Any, Mapping

try:  # systemd-python; without it kafkad logs to stderr, which the journal also captures.
    from systemd.journal import JournalHandler as _JournalHandler
except ImportError:  # pragma: no cover - depends on the installation
    _JournalHandler = None

__all__ = ["event", "format_fields", "setup_logging", "set_level", "under_systemd"]

ROOT_LOGGER = "kafkad"


def under_systemd(environ: Mapping[str, str] | None = None, stream: IO[str] | None = None) -> bool:
    """True when stderr is connected to the journal or the process runs as a systemd unit."""
    env = os.environ if environ is None else environ
    stream = sys.stderr if stream is None else stream
    journal = env.get("JOURNAL_STREAM", "")
    if journal:
        try:
            dev, ino = (int(x) for x in journal.split(":", 1))
            st = os.fstat(stream.fileno())
            if (st.st_dev, st.st_ino) == (dev, ino):
                return True
        except (ValueError, OSError, AttributeError):
            pass
    return bool(env.get("INVOCATION_ID"))


def _quote(value: Any) -> str:
    text = value if isinstance(value, str) else (
        ",".join(map(str, value)) if isinstance(value, (list, tuple, set, frozenset)) else str(value))
    if text == "" or any(c in text for c in ' "=\t\n\\'):
        escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
        return f'"{escaped}"'
    return text


def format_fields(name: str, fields: Mapping[str, Any]) -> str:
    """``name k=v k2="v 2"``: the text of one event line."""
    return " ".join([name, *(f"{k}={_quote(v)}" for k, v in fields.items())])


def event(logger: logging.Logger, level: int, name: str, **fields: Any) -> None:
    """Log one event as a key=value line (and as journal fields under systemd)."""
    if not logger.isEnabledFor(level):
        return
    extra = {"KAFKAD_EVENT": name}
    extra.update({f"KAFKAD_{k.upper()}": _quote(v) for k, v in fields.items()})
    logger.log(level, "%s", format_fields(name, fields), extra=extra)


class _StderrFormatter(logging.Formatter):
    """``2026-01-31T12:00:00.123Z INFO kafkad.daemon: ready endpoint=...`` (UTC)."""

    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", self.converter(record.created))
        line = f"{stamp}.{int(record.msecs):03d}Z {record.levelname} {record.name}: {record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def setup_logging(level: str = "INFO", *, environ: Mapping[str, str] | None = None,
                  stream: IO[str] | None = None) -> logging.Handler:
    """Route the ``kafkad`` loggers to the journal or to `stream` (stderr); return the handler.

    Calling it again replaces the handler installed before (used by `kafkad dev`
    and by tests that run the daemon in-process).
    """
    stream = sys.stderr if stream is None else stream
    root = logging.getLogger(ROOT_LOGGER)
    for old in list(root.handlers):
        if getattr(old, "_kafkad", False):
            root.removeHandler(old)
    handler: logging.Handler
    if _JournalHandler is not None and under_systemd(environ, stream):
        handler = _JournalHandler(SYSLOG_IDENTIFIER="kafkad")
        handler.setFormatter(logging.Formatter("%(message)s"))
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(_StderrFormatter())
    handler._kafkad = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.propagate = False
    set_level(level)
    return handler


def set_level(level: str) -> None:
    """Set the level of every ``kafkad`` logger (SIGHUP applies `[logging] level` this way)."""
    logging.getLogger(ROOT_LOGGER).setLevel(level.upper())
