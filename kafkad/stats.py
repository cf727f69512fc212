"""One statistics snapshot of the daemon, and its three renderings.

`StatsCollector.snapshot()` merges `BrokerProducer.stats()`, `IpcServer.stats()`
(and the spool's, when there is one) into one plain dict that the IPC layer
serves to `kafkad stats`. From that dict come:

- `render_table(snap)`: the human table of `kafkad stats`;
- `status_line(snap)`: the one-line summary for systemd's ``STATUS=``;
- `render_prometheus(snap)`: the Prometheus text format (served by
  `PrometheusServer` on ``[stats] prometheus_listen``).

Snapshot shape (every key always present; sub-dicts may be empty)::

    version, pid, state, uptime_s,
    accepted, delivered, failed, dropped, handed_back, retried,   # counters (messages)
    queued_messages, queued_bytes, in_flight,            # gauges (messages, bytes)
    unplaced,             # of the queued: waiting for their topic's partitions (kafkad picks)
    requests,                                            # Produce requests sent
    sent, sent_bytes,     # records written in Produce requests (retries too), their batch bytes
    delivered_bytes,                                     # keys and values delivered
    unaccounted,          # accepted - (delivered + failed + dropped + handed_back + kept_in_spool
                          #   + queued + in_flight): 0
    delivered_per_s, accepted_per_s,                     # over the last ~10 s
    brokers: {broker: {...}},     # as the producer reports them (latency p50/p99, ...)
    topics:  {topic: {..., <counter>_per_s}},
    ipc:     {...}, spool: {...}

`unaccounted` is the accounting check: a message that was accepted is always
exactly one of delivered, failed, dropped, handed back (at a stop without a
spool: returned to its shim, which replays it to the next daemon), queued or
in flight.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections import deque
from typing import Any, Callable, Mapping

from kafkad import __version__
from kafkad.logs import event

__all__ = ["COUNTERS", "GAUGES", "PrometheusServer", "RateTracker", "StatsCollector",
           "render_prometheus", "render_table", "status_line"]

log = logging.getLogger("kafkad.stats")

# Counters (monotonic; messages unless named bytes, and requests) and gauges that
# every snapshot carries at the top level.
COUNTERS = ("accepted", "delivered", "failed", "dropped", "handed_back", "kept_in_spool", "retried", "requests",
            "sent", "sent_bytes", "delivered_bytes")
GAUGES = ("queued_messages", "queued_bytes", "in_flight", "unplaced")
# Terms of the accounting identity: accepted = sum of these.
BALANCE_TERMS = ("delivered", "failed", "dropped", "handed_back", "kept_in_spool", "queued_messages", "in_flight")
# Counters that get a per-second rate, overall and per topic.
RATED = ("accepted", "delivered", "failed")
RATE_WINDOW_S = 10.0


def _plain(value: Any) -> Any:
    """A copy with string keys throughout (JSON and msgpack friendly)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class RateTracker:
    """Per-second rates of counters, from samples over a sliding window of `window` seconds."""

    MAX_SAMPLES = 1024   # frequent scrapes cannot grow the history without bound

    def __init__(self, window: float = RATE_WINDOW_S) -> None:
        self.window = window
        self._samples: deque[tuple[float, dict[str, float]]] = deque(maxlen=self.MAX_SAMPLES)

    def update(self, now: float, counters: Mapping[str, float]) -> dict[str, float]:
        """Record `counters` at `now`; return {name: per-second rate} (0.0 until there is history).

        A counter missing from the oldest sample in the window (a topic seen
        for the first time) counted 0 then.
        """
        self._samples.append((now, dict(counters)))
        while len(self._samples) > 2 and now - self._samples[1][0] >= self.window:
            self._samples.popleft()
        then, old = self._samples[0]
        dt = now - then
        if dt <= 0:
            return {name: 0.0 for name in counters}
        return {name: max(0.0, (value - old.get(name, 0)) / dt) for name, value in counters.items()}


class StatsCollector:
    """Builds snapshots from the live components; owned by the daemon's loop."""

    def __init__(self, producer_stats: Callable[[], Mapping[str, Any]],
                 ipc_stats: Callable[[], Mapping[str, Any]] | None = None, *,
                 spool_stats: Callable[[], Mapping[str, Any]] | None = None,
                 state: Callable[[], str] = lambda: "running",
                 clock: Callable[[], float] | None = None) -> None:
        self._producer_stats = producer_stats
        self._ipc_stats = ipc_stats
        self._spool_stats = spool_stats
        self._state = state
        self._clock = clock or asyncio.get_running_loop().time
        self._started = self._clock()
        self._rates = RateTracker()

    def set_ipc(self, ipc_stats: Callable[[], Mapping[str, Any]]) -> None:
        self._ipc_stats = ipc_stats

    def snapshot(self) -> dict[str, Any]:
        now = self._clock()
        prod = _plain(self._producer_stats())
        if "queued_messages" not in prod and "queued" in prod:
            prod["queued_messages"] = prod.pop("queued")   # the engine's name for it
        snap: dict[str, Any] = {
            "version": __version__,
            "pid": os.getpid(),
            "state": self._state(),
            "uptime_s": round(now - self._started, 3),
        }
        for name in COUNTERS + GAUGES:
            value = prod.get(name, 0)
            snap[name] = value if _number(value) else 0
        snap["unaccounted"] = snap["accepted"] - sum(snap[t] for t in BALANCE_TERMS)
        # Anything else the producer reports at the top level is kept as it is.
        for name, value in prod.items():
            if name not in snap and name not in ("brokers", "topics"):
                snap[name] = value
        brokers = prod.get("brokers") or {}
        topics = {t: dict(v) for t, v in (prod.get("topics") or {}).items() if isinstance(v, Mapping)}

        samples = {name: snap[name] for name in RATED}
        for topic, counters in topics.items():
            for name in RATED:
                if _number(counters.get(name)):
                    samples[f"{topic}\0{name}"] = counters[name]
        rates = self._rates.update(now, samples)
        for name in RATED:
            snap[f"{name}_per_s"] = round(rates[name], 3)
        for key, rate in rates.items():
            if "\0" in key:
                topic, name = key.split("\0", 1)
                topics[topic][f"{name}_per_s"] = round(rate, 3)
        snap["brokers"] = brokers
        snap["topics"] = topics
        snap["ipc"] = _plain(self._ipc_stats()) if self._ipc_stats else {}
        if self._spool_stats is not None:
            snap["spool"] = _plain(self._spool_stats())
        return snap


# ---------------------------------------------------------------------------
# Renderings
# ---------------------------------------------------------------------------


def _human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"  # pragma: no cover - loop always returns


def _human_duration(seconds: float) -> str:
    s = int(seconds)
    d, s = divmod(s, 86400)
    h, s = divmod(s, 3600)
    m, s = divmod(s, 60)
    if d:
        return f"{d}d{h:02d}h{m:02d}m"
    if h:
        return f"{h}h{m:02d}m{s:02d}s"
    return f"{m}m{s:02d}s" if m else f"{s}s"


def _rate(value: float) -> str:
    return f"{value:.1f}/s"


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".") if not value.is_integer() else f"{value:.0f}"
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    if isinstance(value, Mapping):
        return " ".join(f"{k}={_cell(v)}" for k, v in value.items()) or "none"
    return str(value)


def _table(title: str, rows: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """A table with one row per entry of `rows` and one column per key seen in any row."""
    columns: list[str] = []
    for row in rows.values():
        for key in row:
            if key not in columns:
                columns.append(key)
    header = [title, *columns]
    body = [[str(name), *(_cell(row.get(c, "")) for c in columns)] for name, row in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    fmt = lambda r: "  ".join(  # noqa: E731 - a local formatter keeps the alignment in one place
        (c.ljust(w) if i == 0 else c.rjust(w)) for i, (c, w) in enumerate(zip(r, widths)))
    return [fmt(header), *(fmt(r) for r in body)]


def render_table(snap: Mapping[str, Any]) -> str:
    """The human view of a snapshot, as printed by `kafkad stats`."""
    lines = [f"kafkad {snap.get('version', '?')}  pid {snap.get('pid', '?')}  "
             f"{snap.get('state', '?')}  up {_human_duration(snap.get('uptime_s', 0))}", ""]
    msg_rows = [
        ("accepted", snap.get("accepted", 0), _rate(snap.get("accepted_per_s", 0))),
        ("delivered", snap.get("delivered", 0),
         f"{_rate(snap.get('delivered_per_s', 0))}  {_human_bytes(snap.get('delivered_bytes', 0))}"),
        ("failed", snap.get("failed", 0), _rate(snap.get("failed_per_s", 0))),
        ("dropped", snap.get("dropped", 0), ""),
        ("handed back", snap.get("handed_back", 0), ""),
        ("kept in spool", snap.get("kept_in_spool", 0), ""),
        ("queued", snap.get("queued_messages", 0), _human_bytes(snap.get("queued_bytes", 0))),
        ("in flight", snap.get("in_flight", 0), ""),
        ("unplaced", snap.get("unplaced", 0), "(of the queued: no partition list yet)"),
        ("sent", snap.get("sent", 0), f"{_human_bytes(snap.get('sent_bytes', 0))} written"),
        ("retried", snap.get("retried", 0), ""),
        ("requests", snap.get("requests", 0), ""),
    ]
    width = max(len(_cell(v)) for _, v, _ in msg_rows)
    lines.append("messages")
    lines += [f"  {name:<13} {_cell(value):>{width}}  {extra}".rstrip() for name, value, extra in msg_rows]
    unaccounted = snap.get("unaccounted", 0)
    check = ("balanced" if unaccounted == 0 else f"OFF BY {unaccounted}")
    lines.append(f"  accounting: accepted = delivered + failed + dropped + handed back + kept in spool + queued "
                 f"+ in flight: "
                 f"{check}")
    for title, key in (("broker", "brokers"), ("topic", "topics")):
        rows = snap.get(key) or {}
        lines.append("")
        lines += _table(title, rows) if rows else [f"{key}: none yet"]
    sections = ["ipc", "spool"] + [k for k, v in snap.items() if isinstance(v, Mapping)
                                   and k not in ("brokers", "topics", "ipc", "spool")]
    for title in sections:
        section = snap.get(title)
        if section:
            width = max(len(str(k)) for k in section)
            lines.append("")
            lines.append(title)
            lines += [f"  {k:<{width}}  {_cell(v)}" for k, v in section.items()]
    return "\n".join(lines)


def status_line(snap: Mapping[str, Any]) -> str:
    """One line for systemd's STATUS=: what an operator checks first."""
    parts = [
        f"queued {snap.get('queued_messages', 0)} ({_human_bytes(snap.get('queued_bytes', 0))})",
        f"in flight {snap.get('in_flight', 0)}",
        f"delivered {snap.get('delivered', 0)} ({_rate(snap.get('delivered_per_s', 0))})",
        f"failed {snap.get('failed', 0)}",
        f"dropped {snap.get('dropped', 0)}",
    ]
    sessions = (snap.get("ipc") or {}).get("sessions")
    if _number(sessions):
        parts.append(f"{sessions} sessions")
    if snap.get("unaccounted"):
        parts.append(f"ACCOUNTING OFF BY {snap['unaccounted']}")
    return ", ".join(parts)


_HELP = {
    "accepted": ("counter", "messages_accepted_total", "Messages accepted from producers."),
    "delivered": ("counter", "messages_delivered_total", "Messages acknowledged by Kafka."),
    "failed": ("counter", "messages_failed_total", "Messages that failed and were reported to their producer."),
    "dropped": ("counter", "messages_dropped_total", "Messages given up without a producer to report to."),
    "handed_back": ("counter", "messages_handed_back_total",
                    "Messages not delivered at stop, handed back to their shims to replay to the next daemon."),
    "kept_in_spool": ("counter", "messages_kept_in_spool_total",
                      "Messages not delivered at stop, kept in the spool for the next start."),
    "retried": ("counter", "messages_retried_total", "Message sends retried."),
    "requests": ("counter", "produce_requests_total", "Produce requests sent to brokers."),
    "sent": ("counter", "messages_sent_total",
             "Records written to brokers in Produce requests, each retry counted again."),
    "sent_bytes": ("counter", "sent_bytes_total",
                   "RecordBatch bytes written to brokers (compressed, batch headers included, retries too)."),
    "delivered_bytes": ("counter", "delivered_bytes_total", "Bytes of keys and values acknowledged by Kafka."),
    "topics_forgotten": ("counter", "topics_forgotten_total",
                         "Topics forgotten after [kafka] metadata_max_idle_ms without a send."),
    "queued_messages": ("gauge", "queued_messages", "Messages accepted and waiting to be sent."),
    "queued_bytes": ("gauge", "queued_bytes", "Bytes of keys and values waiting to be sent."),
    "in_flight": ("gauge", "in_flight_messages", "Messages in requests awaiting a broker's answer."),
    "unplaced": ("gauge", "unplaced_messages",
                 "Queued messages waiting for their topic's partition list (kafkad picks the partition)."),
    "unaccounted": ("gauge", "unaccounted_messages", "Accepted messages in no state (always 0)."),
    "uptime_s": ("gauge", "uptime_seconds", "Seconds since the daemon started."),
}


# Per-broker, per-topic, ipc and spool fields that only ever grow (Prometheus counters);
# every other numeric field is exported as a gauge.
_COUNTER_FIELDS = frozenset(COUNTERS) | {
    "accepted_bytes", "delivered_bytes", "failed_bytes", "dropped_bytes",
    "frames_in", "frames_out", "messages_in", "duplicates_dropped",
    "replies_dropped_peer_gone", "replies_dropped_peer_full", "error_replies_suppressed",
    "sessions_evicted", "connects", "disconnects", "errors",
    "handed_back_messages", "partition_changes_sent",
}


def _metric_name(text: str) -> str:
    out = "".join(c if c.isalnum() or c == "_" else "_" for c in text.lower())
    return out if out and not out[0].isdigit() else f"_{out}"


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _sample(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "NaN"
        if math.isinf(value):
            return "+Inf" if value > 0 else "-Inf"
    return repr(float(value)) if isinstance(value, float) else str(int(value))


def render_prometheus(snap: Mapping[str, Any]) -> str:
    """The Prometheus text exposition format (0.0.4) of a snapshot; all names start kafkad_."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple[str, Any]]) -> None:
        if not samples:
            return
        out.append(f"# HELP kafkad_{name} {help_text}")
        out.append(f"# TYPE kafkad_{name} {kind}")
        out.extend(f"kafkad_{name}{labels} {_sample(v)}" for labels, v in samples)

    family("info", "gauge", "Version of the running kafkad.",
           [(f'{{version="{_label(snap.get("version", ""))}"}}', 1)])
    for key, (kind, name, help_text) in _HELP.items():
        if _number(snap.get(key)):
            family(name, kind, help_text, [("", snap[key])])

    errors = snap.get("errors")
    if isinstance(errors, Mapping):
        family("broker_errors_total", "counter", "Error codes received from brokers, by name.",
               [(f'{{error="{_label(name)}"}}', n) for name, n in errors.items() if _number(n)])

    for section, label, prefix in (("brokers", "broker", "broker"), ("topics", "topic", "topic"),
                                   ("ipc", None, "ipc"), ("spool", None, "spool")):
        data = snap.get(section) or {}
        rows = data.items() if label else [("", data)]
        fields: dict[str, list[tuple[str, Any]]] = {}
        for row_name, row in rows:
            if not isinstance(row, Mapping):
                continue
            labels = f'{{{label}="{_label(row_name)}"}}' if label else ""
            for field_name, value in row.items():
                if _number(value):
                    fields.setdefault(field_name, []).append((labels, value))
        for field_name, samples in fields.items():
            counter = field_name in _COUNTER_FIELDS or field_name.endswith("_total")
            name = f"{prefix}_{_metric_name(field_name)}"
            if counter and not name.endswith("_total"):
                name += "_total"
            family(name, "counter" if counter else "gauge",
                   f"{field_name} per {label}" if label else f"{section} {field_name}", samples)
    return "\n".join(out) + "\n"


class PrometheusServer:
    """A minimal HTTP/1.x server for ``GET /metrics`` on one local address."""

    MAX_REQUEST_BYTES = 8192
    READ_TIMEOUT_S = 5.0

    def __init__(self, listen: str, snapshot: Callable[[], Mapping[str, Any]]) -> None:
        host, _, port = listen.rpartition(":")
        self.host = host.strip("[]")
        self.port = int(port)
        self._snapshot = snapshot
        self._server: asyncio.base_events.Server | None = None

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        sock = self._server.sockets[0]
        self.port = sock.getsockname()[1]
        event(log, logging.INFO, "prometheus_listening", address=f"{self.host}:{self.port}")

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.READ_TIMEOUT_S)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError,
                ConnectionError):
            writer.close()
            return
        request = head.split(b"\r\n", 1)[0].decode("latin-1").split()
        if len(request) != 3 or len(head) > self.MAX_REQUEST_BYTES:
            status, body, ctype = "400 Bad Request", "bad request\n", "text/plain"
        elif request[0] not in ("GET", "HEAD"):
            status, body, ctype = "405 Method Not Allowed", "only GET\n", "text/plain"
        elif request[1].split("?", 1)[0] != "/metrics":
            status, body, ctype = "404 Not Found", "see /metrics\n", "text/plain"
        else:
            status = "200 OK"
            body = render_prometheus(self._snapshot())
            ctype = "text/plain; version=0.0.4; charset=utf-8"
        data = body.encode()
        headers = (f"HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\n"
                   f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n").encode()
        try:
            writer.write(headers if request[:1] == ["HEAD"] else headers + data)
            await writer.drain()
        except ConnectionError:
            pass
        finally:
            writer.close()
