"""The kafkad daemon: one asyncio loop composing the broker producer and the IPC server.

Life cycle (`State`, transitions in `_TRANSITIONS`)::

    STARTING --ipc bound--> RUNNING --SIGHUP--> RELOADING --done--> RUNNING
        |                      |                    |
        +----------------------+--SIGTERM/SIGINT----+--> STOPPING --drained--> STOPPED

Signals follow the gunicorn arbiter's shape: the handler installed with
`loop.add_signal_handler` only puts the signal number on a queue, and the
main coroutine takes signals off the queue one at a time and dispatches them
to ``handle_<name>`` (`handle_term`, `handle_int`, `handle_hup`). So a reload
never interleaves with another reload, and a stop waits for a reload to end.

- READY=1 is sent once the IPC socket is bound: producers can connect and
  queue messages even while every broker is down.
- SIGTERM/SIGINT: STOPPING=1, the IPC server stops taking messages, the
  producer drains until ``now + [shutdown] drain_timeout_s``; the number of
  messages not delivered is logged (with their topic/partition), their
  senders are told they failed, everything closes, exit status 0. A second
  SIGTERM/SIGINT during the drain cuts it short.
- SIGHUP: RELOADING=1 with MONOTONIC_USEC, re-read the file; a bad file is
  logged line by line and the running config stays. Otherwise what can change
  at run time is applied (producer.reload, log level, drain timeout, STATUS
  interval, Prometheus address) and every changed key that needs a restart is
  named in the log; then READY=1.
- A STATUS= line every ``[stats] status_interval_s``; WATCHDOG=1 at half the
  interval systemd asks for. Outside systemd the notifications are no-ops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import gc
import logging
import os
import signal
import time
from collections import Counter
from typing import Callable, Iterable

import zmq

import kafkad.spool
from kafkad.broker import BrokerProducer
from kafkad.config import Config
from kafkad.configfile import ConfigError, changed_keys, load_config
from kafkad.engine.types import Outcome, Submission
from kafkad.ipc import EndpointInUse, IpcServer
from kafkad.ipc.server import _AsyncToken, _ReplayToken, _SyncToken
from kafkad.logs import event, set_level
from kafkad.stats import PrometheusServer, StatsCollector, status_line
from kafkad.systemd import Notifier

__all__ = ["Daemon", "StartupError", "State"]

log = logging.getLogger("kafkad.daemon")

# Kafka's REQUEST_TIMED_OUT: what a sender hears about a message still queued
# when the drain deadline passed (it was not delivered in time; it may be retried).
UNDELIVERED_AT_STOP_ERROR = 7

# Exit status after an unexpected internal error (BSD sysexits EX_SOFTWARE).
EXIT_CRASHED = 70

# gc.set_threshold after start-up (see Daemon._start).
GC_THRESHOLDS = (100_000, 50, 100)

# Config keys the daemon cannot change while running (beyond what producer.reload reports).
# While the spool opens, systemd is asked for this much more start time, a third
# of it before it runs out (EXTEND_TIMEOUT_USEC).
_SPOOL_OPEN_EXTEND_S = 30.0
_RESTART_PREFIXES = ("ipc.", "spool.", "logging.log_messages_on_error")


class State(enum.Enum):
    STARTING = "starting"
    RUNNING = "running"
    RELOADING = "reloading"
    STOPPING = "stopping"
    STOPPED = "stopped"


_TRANSITIONS: dict[State, frozenset[State]] = {
    State.STARTING: frozenset({State.RUNNING, State.STOPPING, State.STOPPED}),
    State.RUNNING: frozenset({State.RELOADING, State.STOPPING}),
    State.RELOADING: frozenset({State.RUNNING, State.STOPPING}),
    State.STOPPING: frozenset({State.STOPPED}),
    State.STOPPED: frozenset(),
}


class StartupError(Exception):
    """The daemon could not start (endpoint in use, address taken...); the message says why."""


class Daemon:
    """Runs until SIGTERM/SIGINT; `run()` returns the process exit status."""

    SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)

    def __init__(self, config: Config, config_path: str | None = None, *,
                 notifier: Notifier | None = None,
                 on_ready: Callable[["Daemon"], None] | None = None) -> None:
        self.config = config
        self.config_path = config_path
        self.notifier = notifier or Notifier()
        self._on_ready = on_ready
        self._state = State.STARTING
        self._signals: asyncio.Queue[int] | None = None
        self._producer: BrokerProducer | None = None
        self._ipc: IpcServer | None = None
        self._prometheus: PrometheusServer | None = None
        self._spool: kafkad.spool.Spool | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.stats: StatsCollector | None = None

    def __repr__(self) -> str:
        return f"<Daemon {self._state.name} endpoint={self.config.ipc.endpoint!r}>"

    @property
    def state(self) -> State:
        return self._state

    def _set_state(self, new: State) -> None:
        if new not in _TRANSITIONS[self._state]:
            raise RuntimeError(f"daemon state {self._state.name} -> {new.name} is not allowed")
        self._state = new

    # -- signals -------------------------------------------------------------
    def request(self, signum: int) -> None:
        """Queue a signal for the main loop (what the installed signal handlers call)."""
        if self._signals is not None:
            self._signals.put_nowait(signum)

    def _install_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in self.SIGNALS:
            loop.add_signal_handler(sig, self.request, sig)

    def _remove_signals(self, loop: asyncio.AbstractEventLoop) -> None:
        for sig in self.SIGNALS:
            loop.remove_signal_handler(sig)

    async def _dispatch(self, signum: int) -> None:
        name = signal.Signals(signum).name[3:].lower()
        await getattr(self, f"handle_{name}")()

    # -- life cycle ----------------------------------------------------------
    async def run(self) -> int:
        """Start, serve until told to stop, drain, close. Raises `StartupError`."""
        loop = asyncio.get_running_loop()
        self._signals = asyncio.Queue()
        self._install_signals(loop)
        try:
            await self._start()
            while self._state is not State.STOPPING:
                await self._dispatch(await self._signals.get())
            self._set_state(State.STOPPED)
            event(log, logging.INFO, "stopped", pid=os.getpid())
            return 0
        except StartupError:
            raise
        except Exception as exc:
            # A bug, not an operator mistake: log it with its traceback (to the journal under
            # systemd), close what is open, and exit non-zero so Restart=on-failure applies.
            log.exception("crashed state=%s error=%s", self._state.value, type(exc).__name__)
            await self._close_components()
            return EXIT_CRASHED
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self._tasks.clear()
            self._remove_signals(loop)

    async def _start(self) -> None:
        cfg = self.config
        event(log, logging.INFO, "starting", pid=os.getpid(), config=self.config_path or "-",
              endpoint=cfg.ipc.endpoint, brokers=cfg.kafka.bootstrap_servers,
              security_protocol=cfg.kafka.security_protocol)
        if cfg.spool.enabled:
            self._spool = await self._open_spool()
        self._producer = BrokerProducer(cfg.kafka, cfg.queue, on_outcomes=self._route_outcomes,
                                        on_partitions_changed=self._route_partition_changes,
                                        on_topics_forgotten=self._route_topics_forgotten,
                                        log_messages_on_error=cfg.logging.log_messages_on_error)
        self.stats = StatsCollector(self._producer.stats, state=lambda: self._state.value,
                                    spool_stats=self._spool_stats if self._spool is not None else None)
        self._ipc = IpcServer(cfg.ipc, self._producer, stats_provider=self.stats.snapshot, spool=self._spool,
                              log_messages_on_error=cfg.logging.log_messages_on_error)
        self.stats.set_ipc(self._ipc.stats)
        try:
            await self._producer.start()
            try:
                await self._ipc.start()
            except EndpointInUse as exc:
                raise StartupError(str(exc)) from None
            except (OSError, ValueError, zmq.ZMQError) as exc:
                # A socket directory that is missing or not ours, an unknown socket group...
                raise StartupError(f"cannot serve {cfg.ipc.endpoint}: {exc}") from None
            if cfg.stats.prometheus_listen:
                self._prometheus = await self._start_prometheus(cfg.stats.prometheus_listen)
        except BaseException:
            await self._close_components()
            raise
        self._set_state(State.RUNNING)
        # Everything built so far lives for the whole run: move it out of the collector's
        # view, and collect the young generation less often (the hot path allocates many
        # short-lived objects; cycles are rare). Measured: daemon CPU per async message
        # 3.3 -> 2.9 us (median of 3 interleaved runs, 4 shim processes, 100k messages).
        gc.freeze()
        gc.set_threshold(*GC_THRESHOLDS)
        snap = self.stats.snapshot()
        self.notifier.ready(status=f"ready; {status_line(snap)}")
        event(log, logging.INFO, "ready", endpoint=cfg.ipc.endpoint,
              systemd="yes" if self.notifier.enabled else "no",
              watchdog_s=self.notifier.watchdog_interval or 0)
        self._tasks.append(asyncio.create_task(self._status_loop(), name="kafkad-status"))
        interval = self.notifier.watchdog_interval
        if interval:
            self._tasks.append(asyncio.create_task(self._watchdog_loop(interval), name="kafkad-watchdog"))
        if self._on_ready is not None:
            self._on_ready(self)

    async def _while_opening(self, path: str) -> None:
        """While the spool opens (a full one takes about a minute), keep systemd from
        timing the start out: without this, a spool filled during a long outage made
        TimeoutStartSec kill every start, and its messages were never sent."""
        started = time.monotonic()
        while True:
            took = time.monotonic() - started
            self.notifier.extend_start(_SPOOL_OPEN_EXTEND_S,
                                       f"opening the spool {path} ({took:.0f}s so far)")
            if self.notifier.watchdog_interval:
                self.notifier.watchdog()
            await asyncio.sleep(_SPOOL_OPEN_EXTEND_S / 3)

    async def _open_spool(self) -> kafkad.spool.Spool:
        """Open (and recover) the spool in an executor: it reads the whole spool once."""
        cfg = self.config.spool
        opening = asyncio.get_running_loop().run_in_executor(None, kafkad.spool.open, cfg)
        keep_alive = asyncio.create_task(self._while_opening(cfg.path), name="kafkad-spool-opening")
        try:
            spool = await opening
        except (kafkad.spool.SpoolFormatError, kafkad.spool.SpoolLockedError,
                kafkad.spool.SpoolUnavailable) as exc:
            raise StartupError(f"cannot open the spool {cfg.path}: {exc}") from None
        except OSError as exc:
            raise StartupError(f"cannot open the spool {cfg.path}: {exc.strerror or exc}") from None
        finally:
            keep_alive.cancel()
        st = spool.stats(time.time())
        event(log, logging.INFO, "spool_opened", path=cfg.path, fsync=cfg.fsync, pending=st["entries_pending"],
              bytes=st["bytes"], segments=st["segments"], damaged=st["damaged"],
              oldest_age_s=st["oldest_pending_age_s"] if st["oldest_pending_age_s"] is not None else "-")
        return spool

    def _spool_stats(self) -> dict:
        assert self._spool is not None
        st = self._spool.stats(time.time())
        # Every entry replayed from disk may have reached the broker before the crash
        # (docs/spool.md "Duplicates after a crash"): the upper bound on duplicates.
        st["possible_duplicate_entries"] = st["replayed"]
        return st

    async def _start_prometheus(self, listen: str) -> PrometheusServer:
        assert self.stats is not None
        server = PrometheusServer(listen, self.stats.snapshot)
        try:
            await server.start()
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else str(exc)
            raise StartupError(f"cannot serve Prometheus metrics on {listen}: {reason}") from None
        return server

    def _route_outcomes(self, outcomes: list[Outcome]) -> None:
        if self._ipc is not None:
            self._ipc.on_outcomes(outcomes)

    def _route_partition_changes(self, changes: list[tuple[str, int, list[int]]]) -> None:
        if self._ipc is not None:
            self._ipc.on_partitions_changed(changes)

    def _route_topics_forgotten(self, topics: list[str]) -> None:
        if self._ipc is not None:
            self._ipc.forget_topics(topics)

    async def _close_components(self) -> None:
        """Close whatever was started, last started first; errors are logged, not raised."""
        for name, closer in (("prometheus", self._prometheus and self._prometheus.close),
                             ("ipc", self._ipc and self._ipc.close),
                             ("producer", self._producer and self._producer.close)):
            if closer is None:
                continue
            try:
                await closer()
            except Exception as exc:  # one failing part must not keep the others open
                event(log, logging.ERROR, "close_failed", component=name,
                      error=f"{type(exc).__name__}: {exc}")
        self._prometheus = None
        if self._spool is not None:
            spool, self._spool = self._spool, None
            try:
                # After ipc.close(): writes and fsyncs everything; undelivered entries stay.
                await asyncio.get_running_loop().run_in_executor(None, spool.close)
            except Exception as exc:
                event(log, logging.ERROR, "close_failed", component="spool",
                      error=f"{type(exc).__name__}: {exc}")

    # -- handlers (run by the main loop, one at a time) ------------------------
    async def handle_term(self) -> None:
        await self._stop("SIGTERM")

    async def handle_int(self) -> None:
        await self._stop("SIGINT")

    async def handle_hup(self) -> None:
        if self._state is not State.RUNNING:
            event(log, logging.INFO, "reload_ignored", state=self._state.value)
            return
        self._set_state(State.RELOADING)
        self.notifier.reloading()
        try:
            self._reload()
        finally:
            self._set_state(State.RUNNING)
            assert self.stats is not None
            self.notifier.ready(status=status_line(self.stats.snapshot()))

    def _reload(self) -> None:
        if not self.config_path:
            event(log, logging.WARNING, "reload_skipped", reason="no config file (kafkad dev)")
            return
        try:
            new = load_config(self.config_path, environ=os.environ)
        except ConfigError as exc:
            for problem in exc.problems:
                event(log, logging.ERROR, "reload_failed", problem=str(problem))
            event(log, logging.ERROR, "reload_rejected", path=self.config_path,
                  problems=len(exc.problems), kept="running config")
            return
        old = self.config
        changed = changed_keys(old, new)
        assert self._producer is not None
        try:
            from_producer = self._producer.reload(new.kafka, new.queue)
        except (ValueError, TypeError) as exc:
            event(log, logging.ERROR, "reload_rejected", path=self.config_path,
                  error=f"{type(exc).__name__}: {exc}", kept="running config")
            return
        producer_restart = [_qualify(name) for name in from_producer]
        # A name may be a whole section ("kafka.tls"): it covers every key below it.
        restart = [k for k in changed if k.startswith(_RESTART_PREFIXES)
                   or any(k == name or k.startswith(name + ".") for name in producer_restart)]
        restart += sorted(set(producer_restart) - set(changed)
                          - {name for name in producer_restart
                             if any(k.startswith(name + ".") for k in changed)})
        # What runs now: the new file, except the parts that only a restart changes.
        self.config = dataclasses.replace(
            new, ipc=old.ipc, spool=old.spool,
            logging=dataclasses.replace(new.logging,
                                        log_messages_on_error=old.logging.log_messages_on_error))
        if new.logging.level != old.logging.level:
            set_level(new.logging.level)
        if new.stats.prometheus_listen != old.stats.prometheus_listen:
            asyncio.get_running_loop().create_task(self._move_prometheus(new.stats.prometheus_listen))
        applied = [k for k in changed if k not in restart]
        event(log, logging.INFO, "reloaded", path=self.config_path, changed=len(changed),
              applied=applied or "-", needs_restart=restart or "-")
        if restart:
            event(log, logging.WARNING, "restart_needed", keys=restart,
                  hint="systemctl restart kafkad to apply")

    async def _move_prometheus(self, listen: str) -> None:
        if self._prometheus is not None:
            await self._prometheus.close()
            self._prometheus = None
        if listen:
            try:
                self._prometheus = await self._start_prometheus(listen)
            except StartupError as exc:
                event(log, logging.ERROR, "prometheus_failed", error=str(exc))

    async def _stop(self, signame: str) -> None:
        assert self._producer is not None and self._ipc is not None and self._signals is not None
        self._set_state(State.STOPPING)
        loop = asyncio.get_running_loop()
        timeout = self.config.shutdown.drain_timeout_s
        stats = self._producer.stats()
        queued = stats.get("queued_messages", stats.get("queued", 0))   # the engine names it "queued"
        self.notifier.stopping(status=f"stopping: draining {queued} messages, up to {timeout:g}s")
        event(log, logging.INFO, "stopping", signal=signame, queued=queued, drain_timeout_s=timeout)
        self._ipc.stop_accepting()
        started = loop.time()
        undelivered = await self._drain(started + timeout)
        count = sum(len(sub) for sub in undelivered)
        if self._spool is not None:
            # Spooled entries were acknowledged as persisted: they stay in the spool for
            # the next start instead of being failed towards their senders.
            kept = [sub for sub in undelivered if isinstance(sub.token, _ReplayToken)
                    or (isinstance(sub.token, _AsyncToken) and sub.token.spool_ids is not None)]
            undelivered = [sub for sub in undelivered if not (
                isinstance(sub.token, _ReplayToken)
                or (isinstance(sub.token, _AsyncToken) and sub.token.spool_ids is not None))]
            in_spool = sum(len(sub) for sub in kept) + self._ipc.spooled_undelivered()
            self._producer.note_settled_at_stop(kept=sum(len(sub) for sub in kept))
            if in_spool:
                event(log, logging.INFO, "kept_in_spool", messages=in_spool, path=self.config.spool.path)
            handed_back = 0
        else:
            handed_back, undelivered = self._hand_back(undelivered)
        # Sync sends are answered with the error (their caller raises); async messages
        # left here have no sender to take them back (logged): they stay dropped.
        told: Counter[str] = Counter()
        for sub in undelivered:
            if isinstance(sub.token, _SyncToken):
                told[sub.topic] += len(sub)
        self._producer.note_settled_at_stop(failed=told, code=UNDELIVERED_AT_STOP_ERROR)
        self._report_undelivered(undelivered)
        event(log, logging.WARNING if count else logging.INFO, "drained",
              undelivered=count, handed_back=handed_back, seconds=round(loop.time() - started, 3))
        await self._close_components()

    async def _drain(self, deadline: float) -> list[Submission]:
        """producer.drain(deadline), cut short by a second SIGTERM/SIGINT."""
        assert self._producer is not None and self._signals is not None
        drain = asyncio.ensure_future(self._producer.drain(deadline))
        while True:
            next_signal = asyncio.ensure_future(self._signals.get())
            done, _ = await asyncio.wait({drain, next_signal}, return_when=asyncio.FIRST_COMPLETED)
            if drain in done:
                next_signal.cancel()
                return drain.result()
            signum = next_signal.result()
            if signum in (signal.SIGTERM, signal.SIGINT):
                event(log, logging.WARNING, "drain_cut_short", signal=signal.Signals(signum).name)
                # The producer hands back what is left when its deadline is now.
                drain.cancel()
                await asyncio.gather(drain, return_exceptions=True)
                return await self._producer.drain(asyncio.get_running_loop().time())
            event(log, logging.INFO, "reload_ignored", state=self._state.value)

    def _hand_back(self, undelivered: list[Submission]) -> tuple[int, list[Submission]]:
        """Without a spool: async messages of shims still connected go back to them.

        Those shims keep the messages and replay them to the next daemon (what was
        in flight may then be written twice: at least once). Logged per
        topic/partition and counted as handed back; returns (that count, what is
        left to fail: sync sends and messages of senders that are gone).
        """
        assert self._ipc is not None and self._producer is not None
        handed, rest = self._ipc.hand_back(undelivered)
        total = sum(handed.values())
        if total:
            self._producer.note_handed_back(total)
        for (topic, partition), n in sorted(_by_partition(handed.items()).items()):
            event(log, logging.WARNING, "handed_back", topic=topic, partition=_shown_partition(partition),
                  messages=n, to="their shims, which replay them to the next daemon")
        return total, rest

    def _report_undelivered(self, undelivered: Iterable[Submission]) -> None:
        """Log what was not delivered per topic/partition and fail it towards its senders."""
        per_partition: Counter[tuple[str, int]] = Counter()
        outcomes = []
        for sub in undelivered:
            per_partition[(sub.topic, max(sub.partition, -1))] += len(sub)
            outcomes.append(Outcome(token=sub.token, topic=sub.topic, partition=sub.partition,
                                    error=UNDELIVERED_AT_STOP_ERROR, base_offset=-1,
                                    delivered=0, failed=len(sub)))
        for (topic, partition), n in sorted(per_partition.items()):
            event(log, logging.WARNING, "undelivered", topic=topic, partition=_shown_partition(partition),
                  messages=n)
        if outcomes:
            self._route_outcomes(outcomes)

    # -- background tasks ----------------------------------------------------
    async def _status_loop(self) -> None:
        assert self.stats is not None
        warned = False
        while True:
            await asyncio.sleep(self.config.stats.status_interval_s)
            snap = self.stats.snapshot()
            if self._state is State.RUNNING:
                self.notifier.status(status_line(snap))
            elif self._state is State.STOPPING:   # drain progress for `systemctl status`
                self.notifier.status(f"stopping: draining; {status_line(snap)}")
            if snap["unaccounted"] and not warned:
                warned = True
                event(log, logging.ERROR, "accounting_mismatch", unaccounted=snap["unaccounted"],
                      accepted=snap["accepted"], delivered=snap["delivered"], failed=snap["failed"],
                      dropped=snap["dropped"], queued=snap["queued_messages"], in_flight=snap["in_flight"])

    async def _watchdog_loop(self, interval: float) -> None:
        while True:
            self.notifier.watchdog()
            await asyncio.sleep(interval / 2)


def _qualify(name: str) -> str:
    """Producer-reported setting names as dotted config keys."""
    return name if "." in name else f"kafka.{name}"


def _by_partition(counts) -> Counter:
    """((topic, partition), n) pairs summed per topic and partition, every partition
    still to be picked (negative: one per call of a SimpleProducer) counted as -1."""
    out: Counter = Counter()
    for (topic, partition), n in counts:
        out[(topic, max(partition, -1))] += n
    return out


def _shown_partition(partition: int):
    return partition if partition >= 0 else "not picked yet"
