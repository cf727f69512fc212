"""Helpers for the service tests: how to start the real `kafkad` command."""

from __future__ import annotations

import os
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]


def kafkad_cmd(*args: str) -> list[str]:
    """`python -m kafkad ARGS` with the interpreter running the tests."""
    return [sys.executable, "-m", "kafkad", *args]


def daemon_env(**extra: str) -> dict[str, str]:
    """The environment for a daemon started by a test: logs to stderr, never to the journal."""
    env = dict(os.environ)
    for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID", "JOURNAL_STREAM",
                 "INVOCATION_ID", "KAFKAD_ENDPOINT"):
        env.pop(name, None)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env
