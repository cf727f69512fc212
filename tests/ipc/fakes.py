"""A test double for the BrokerProducer seam, and a thread that hosts an IpcServer.

`FakeProducer` implements what IpcServer uses (`submit`, `partitions_for`,
`fetch_partitions`, `flush_session`, `hold_polls`/`release_polls`) and delivers each submission on the loop, with offsets
counted per partition, unless told to hold, fail or refuse. It is a double
for the seam (DESIGN.md), for unit tests of the link; the end-to-end tests
use the real daemon.

Both `ServerThread` and `short_tmp_endpoint` make a temp dir for the socket;
it lives until the end of the test (a restarted server binds the endpoint of
one already stopped). tests/conftest.py calls `cleanup()` after every test,
passed or failed: it stops the servers left running and removes the dirs.
"""

from __future__ import annotations

import asyncio
import atexit
import collections
import os
import shutil
import tempfile
import threading

from kafkad.config import IpcConfig
from kafkad.engine.types import Outcome, QueueFull, RecordTooLarge
from kafkad.ipc import IpcServer


_dirs: list[str] = []                 # temp dirs made since the last cleanup()
_servers: list["ServerThread"] = []   # servers started since the last cleanup()


def _tmp_dir(prefix: str) -> str:
    d = tempfile.mkdtemp(prefix=prefix)
    _dirs.append(d)
    return d


def cleanup():
    """Stop the servers still running and remove the temp dirs (with their sockets) made so far."""
    try:
        while _servers:
            _servers.pop().stop()
    finally:
        while _dirs:
            shutil.rmtree(_dirs.pop(), ignore_errors=True)


atexit.register(cleanup)  # for use outside pytest, and whatever the last test left


class FakeProducer:
    def __init__(self, partitions=(0, 1, 2)):
        self.partitions = list(partitions)
        self.submissions = []
        self.offsets = collections.Counter()
        self.hold = False            # keep submissions without outcomes
        self.fail_with = 0           # deliver with this error code instead
        self.refuse = 0              # refuse the next N submissions with QueueFull
        self.record_cap = 1 << 20     # a record larger (key + value) is too large for a batch
        self.batch_cap = self.record_cap
        self.counted_failed = []     # count_failed calls: (topic, n, code)
        self.room = True             # what has_room answers (the server's ROOM check)
        self.held = []
        self.flushed = []            # session ids passed to flush_session, in order
        self.on_outcomes = None
        self.loop = None
        self._arrived = threading.Condition()

    def wait_messages(self, n, timeout=10.0):
        """Block until at least `n` messages were submitted (for tests that then release them)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.messages()) >= n, timeout):
                raise TimeoutError(f"{len(self.messages())} of {n} messages reached the producer")

    def partitions_for(self, topic):
        return list(self.partitions)

    def has_room(self, fraction):
        return self.room


    async def fetch_partitions(self, topic, timeout):
        return 0, list(self.partitions)

    def topic_failed(self, topic):
        return False

    def flush_session(self, session_id):
        self.flushed.append(session_id)

    def hold_polls(self):
        pass

    def release_polls(self, poll=True):
        pass

    def too_large(self, keys, values):
        return any(len(k or b"") + len(v or b"") > self.record_cap for k, v in zip(keys, values))

    def count_failed(self, topic, n, code):
        self.counted_failed.append((topic, n, code))

    def submit(self, sub, divisible=False):
        if divisible and self.too_large(sub.keys, sub.values):
            raise RecordTooLarge("fake: a record is larger than record_cap")
        if self.refuse:
            self.refuse -= 1
            raise QueueFull("fake queue full")
        with self._arrived:
            self.submissions.append(sub)
            self._arrived.notify_all()
        if self.hold:
            self.held.append(sub)
        else:
            self.loop.call_soon(self.complete, [sub])

    def complete(self, subs, error=None):
        outs = []
        for sub in subs:
            err = self.fail_with if error is None else error
            n = len(sub.values)
            if err:
                outs.append(Outcome(sub.token, sub.topic, sub.partition, err, -1, 0, n))
            else:
                key = (sub.topic, sub.partition)
                base = self.offsets[key]
                self.offsets[key] += n
                outs.append(Outcome(sub.token, sub.topic, sub.partition, 0,
                                    -1 if sub.settings.acks == 0 else base, n, 0))
        self.on_outcomes(outs)

    def release(self, error=None, after=0):
        """Complete what is held (from any thread); with `after`, first wait for that many messages."""
        if after:
            self.wait_messages(after)
        self.loop.call_soon_threadsafe(self._release_now, error)

    def _release_now(self, error):
        subs, self.held = self.held, []
        self.complete(subs, error)

    def messages(self):
        """Every value taken, in submission order, as (topic, partition, key, value)."""
        out = []
        for sub in self.submissions:
            for k, v in zip(sub.keys, sub.values):
                out.append((sub.topic, sub.partition, k, v))
        return out


class ServerThread:
    """An asyncio loop in a thread running IpcServer over a FakeProducer."""

    def __init__(self, endpoint=None, producer=None, *, spool=None, server_kwargs=None, **cfg):
        self.spool = spool
        self.server_kwargs = dict(server_kwargs or {})
        self.endpoint = endpoint or f"ipc://{_tmp_dir('kafkad-ipc-')}/kafkad.sock"
        self.cfg = IpcConfig(endpoint=self.endpoint, **cfg)
        self.producer = producer or FakeProducer()
        self.loop = asyncio.new_event_loop()
        self.server = None
        self._thread = None
        self.stats_calls = 0

    def _stats(self):
        self.stats_calls += 1
        return {"ipc": self.server.stats(), "answer": 42}

    def start(self):
        started = threading.Event()
        failure = []

        def run():
            asyncio.set_event_loop(self.loop)
            self.producer.loop = self.loop
            self.server = IpcServer(self.cfg, self.producer, stats_provider=self._stats, spool=self.spool,
                                    **self.server_kwargs)
            self.producer.on_outcomes = self.server.on_outcomes
            try:
                self.loop.run_until_complete(self.server.start())
            except BaseException as exc:  # reported to the starting thread
                failure.append(exc)
                started.set()
                return
            started.set()
            self.loop.run_forever()
            self.loop.run_until_complete(self.server.close())

        self._thread = threading.Thread(target=run, daemon=True)
        _servers.append(self)
        self._thread.start()
        started.wait(10)
        if failure:
            raise failure[0]
        return self

    def call(self, fn, *args):
        """Run fn(*args) on the server's loop and return its result."""
        done = threading.Event()
        box = []

        def run():
            box.append(fn(*args))
            done.set()

        self.loop.call_soon_threadsafe(run)
        done.wait(5)
        return box[0]

    def stop(self):
        if self._thread is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            self._thread = None
            self.loop.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()


def short_tmp_endpoint(name="kafkad.sock"):
    """An ipc:// endpoint in a fresh temp dir (short enough for the 107-byte socket path limit)."""
    return f"ipc://{os.path.join(_tmp_dir('kd-'), name)}"
