"""Load a kafkad TOML file into the typed `kafkad.config.Config`.

Every problem an operator can make is reported as one line
``PATH:LINE: key: problem`` (the key as a dotted path such as
``kafka.request_timeout_ms``), and all problems of a file are reported at
once, so a single `kafkad check-config` run shows everything to fix.

The work is done in four steps, each in one place:

1. parse with `tomllib` (a syntax error becomes ``PATH:LINE: ...`` too);
2. convert the nested tables into the frozen dataclasses, field by field,
   following the dataclass type hints: unknown sections and keys, wrong types;
3. per-key rules (`_FIELD_RULES`): ranges, enumerations, address syntax;
4. cross-field rules (`validate`): TLS/SASL settings against the security
   protocol, password sources, timeouts that must be ordered, files that must
   be readable.

`tomllib` gives values but no positions, so `locate_keys` scans the TOML text
once and maps every dotted key (and table header) to the line that defines it.
"""

from __future__ import annotations

import dataclasses
import difflib
import grp
import ipaddress
import json
import os
import re
import tomllib
import typing
from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

from kafkad.config import MIN_FRAME_BYTES, Config

__all__ = ["ConfigError", "Problem", "changed_keys", "load_config", "locate_keys", "parse_config", "validate"]

KeyPath = tuple  # a dotted key as a tuple: ("kafka", "tls", "ca_file"); array items add ints

SECURITY_PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
FSYNC_POLICIES = ("always", "interval", "never")
WHEN_FULL_POLICIES = ("block", "reject")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
INT32_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a config file, located at a line when possible."""

    path: str
    line: int | None   # None: the problem concerns the whole file (e.g. unreadable)
    key: str           # dotted key, or a short label such as "syntax"
    message: str

    def __str__(self) -> str:
        # A whole-file problem shows as line 0 (as flake8's E902 does), so that every
        # line keeps the PATH:LINE: key: problem shape tools parse.
        return f"{self.path}:{self.line if self.line is not None else 0}: {self.key}: {self.message}"


class ConfigError(Exception):
    """A config file could not be used; `problems` lists every reason, in file order."""

    def __init__(self, problems: Iterable[Problem]) -> None:
        self.problems = sorted(problems, key=lambda p: (p.line or 0, p.key))
        if not self.problems:
            raise ValueError("ConfigError needs at least one problem")
        super().__init__("\n".join(str(p) for p in self.problems))


# ---------------------------------------------------------------------------
# Locating keys in TOML text
# ---------------------------------------------------------------------------

_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class _Locator:
    """A forgiving scanner over TOML text that `tomllib` has already accepted.

    It understands exactly what is needed to know where keys are: table
    headers, arrays of tables, dotted and quoted keys, inline tables, arrays
    spanning lines, basic/literal/multi-line strings and comments. Values are
    skipped, not interpreted.
    """

    def __init__(self, text: str) -> None:
        self.s = text
        self.i = 0
        self.n = len(text)
        self._newlines = [m.start() for m in re.finditer("\n", text)]
        self.found: dict[KeyPath, int] = {}
        self._array_counts: dict[KeyPath, int] = {}

    def line(self, pos: int) -> int:
        return bisect_right(self._newlines, pos - 1) + 1

    def _record(self, key: KeyPath, pos: int) -> None:
        self.found.setdefault(key, self.line(pos))

    # -- low-level helpers ----------------------------------------------
    def _peek(self, k: int = 1) -> str:
        return self.s[self.i:self.i + k]

    def _skip_ws(self, newlines: bool = False) -> None:
        while self.i < self.n:
            c = self.s[self.i]
            if c in " \t\r" or (newlines and c == "\n"):
                self.i += 1
            elif c == "#":
                while self.i < self.n and self.s[self.i] != "\n":
                    self.i += 1
            else:
                return

    def _string(self) -> str:
        """Read a string starting at self.i; return its (roughly unescaped) text."""
        s = self.s
        for quote in ('"""', "'''"):
            if s.startswith(quote, self.i):
                end = s.find(quote, self.i + 3)
                while end != -1 and quote == '"""' and _escaped(s, end):
                    end = s.find(quote, end + 1)
                end = self.n if end == -1 else end
                # A closing delimiter may be followed by up to two more quotes.
                stop = end + 3
                while stop < self.n and s[stop] == quote[0] and stop < end + 5:
                    stop += 1
                text = s[self.i + 3:stop - 3]
                self.i = stop
                return text
        quote = s[self.i]
        j = self.i + 1
        while j < self.n and s[j] != quote and s[j] != "\n":
            j += 2 if (quote == '"' and s[j] == "\\") else 1
        text = s[self.i + 1:j]
        self.i = min(j + 1, self.n)
        if quote == '"':
            try:
                text = text.encode("utf-8").decode("unicode_escape")
            except UnicodeDecodeError:
                pass
        return text

    def _key(self) -> KeyPath:
        parts: list[str] = []
        while True:
            self._skip_ws()
            c = self._peek()
            if c in ('"', "'"):
                parts.append(self._string())
            else:
                m = _BARE_KEY.match(self.s, self.i)
                if not m:
                    break
                parts.append(m.group())
                self.i = m.end()
            self._skip_ws()
            if self._peek() == ".":
                self.i += 1
                continue
            break
        return tuple(parts)

    # -- grammar ---------------------------------------------------------
    def run(self) -> dict[KeyPath, int]:
        prefix: KeyPath = ()
        while True:
            self._skip_ws(newlines=True)
            if self.i >= self.n:
                return self.found
            start = self.i
            if self._peek(2) == "[[":
                self.i += 2
                name = self._key()
                idx = self._array_counts.get(name, 0)
                self._array_counts[name] = idx + 1
                self._record(name, start)
                prefix = name + (idx,)
                self._record(prefix, start)
                self._to_eol()
            elif self._peek() == "[":
                self.i += 1
                prefix = self._key()
                self._record(prefix, start)
                self._to_eol()
            else:
                before = self.i
                self._keyval(prefix)
                if self.i == before:      # not something we understand: skip the line
                    self._to_eol()

    def _to_eol(self) -> None:
        while self.i < self.n and self.s[self.i] != "\n":
            self.i += 1

    def _keyval(self, prefix: KeyPath) -> None:
        start = self.i
        key = self._key()
        if not key:
            return
        self._skip_ws()
        if self._peek() != "=":
            return
        self.i += 1
        for k in range(1, len(key) + 1):
            self._record(prefix + key[:k], start)
        self._skip_ws()
        self._value(prefix + key)

    def _value(self, path: KeyPath) -> None:
        c = self._peek()
        if c in ('"', "'"):
            self._string()
        elif c == "[":
            self.i += 1
            idx = 0
            while True:
                self._skip_ws(newlines=True)
                if self.i >= self.n:
                    return
                if self._peek() == "]":
                    self.i += 1
                    return
                if self._peek() == ",":
                    self.i += 1
                    continue
                self._record(path + (idx,), self.i)
                before = self.i
                self._value(path + (idx,))
                if self.i == before:
                    self.i += 1
                idx += 1
        elif c == "{":
            self.i += 1
            while True:
                self._skip_ws(newlines=True)
                if self.i >= self.n:
                    return
                if self._peek() == "}":
                    self.i += 1
                    return
                if self._peek() == ",":
                    self.i += 1
                    continue
                before = self.i
                self._keyval(path)
                if self.i == before:
                    self.i += 1
        else:
            # A bare scalar: number, boolean, date-time (which may hold a space).
            while self.i < self.n and self.s[self.i] not in ",]}\n#":
                self.i += 1


def _escaped(s: str, pos: int) -> bool:
    """True when the character at `pos` is preceded by an odd number of backslashes."""
    k = pos - 1
    count = 0
    while k >= 0 and s[k] == "\\":
        count += 1
        k -= 1
    return count % 2 == 1


def locate_keys(text: str) -> dict[KeyPath, int]:
    """Map each key path defined in TOML `text` (and each table header) to its 1-based line."""
    return _Locator(text).run()


# ---------------------------------------------------------------------------
# Conversion into the dataclasses
# ---------------------------------------------------------------------------


class _Collector:
    """Collects problems against one file, resolving key paths to lines."""

    def __init__(self, path: str, lines: Mapping[KeyPath, int]) -> None:
        self.path = path
        self.lines = lines
        self.problems: list[Problem] = []

    def line_of(self, *keys: KeyPath) -> int:
        """The line of the first key found; otherwise of its nearest defined ancestor; else 1."""
        for key in keys:
            if key in self.lines:
                return self.lines[key]
        for key in keys:
            for k in range(len(key) - 1, 0, -1):
                if key[:k] in self.lines:
                    return self.lines[key[:k]]
        return 1

    def add(self, key: KeyPath, message: str, *, at: Iterable[KeyPath] = ()) -> None:
        line = self.line_of(key, *at)
        self.problems.append(Problem(self.path, line, _dotted(key), message))


_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


def _dotted(key: KeyPath) -> str:
    """The key as TOML writes it: a part that is not a bare key is quoted (with JSON's
    escapes, which TOML's basic strings share), so a problem stays one parsable line."""
    return ".".join(str(k) if _BARE_KEY.fullmatch(str(k)) else json.dumps(str(k)) for k in key)


_TYPE_NAMES = {bool: "a boolean (true or false)", int: "an integer", float: "a number",
               str: "a string"}


def _describe(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return type(value).__name__


def _build(cls: type, table: Mapping[str, Any], key: KeyPath, out: _Collector) -> Any:
    """Build dataclass `cls` from `table`; problems go to `out`, bad fields keep their default."""
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for name, raw in table.items():
        here = key + (name,)
        if name not in hints:
            what = "section" if isinstance(raw, dict) else "key"
            near = difflib.get_close_matches(name, names, n=1, cutoff=0.6)
            hint = f" (did you mean {near[0]!r}?)" if near else ""
            where = f" in [{_dotted(key)}]" if key else ""
            out.add(here, f"unknown {what}{where}{hint}")
            continue
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            if not isinstance(raw, dict):
                out.add(here, f"must be a table ([{_dotted(here)}]), not {_describe(raw)}")
                continue
            kwargs[name] = _build(hint, raw, here, out)
            continue
        ok, value = _convert(hint, raw, here, out)
        if ok:
            kwargs[name] = value
    return cls(**kwargs)


def _convert(hint: Any, raw: Any, key: KeyPath, out: _Collector) -> tuple[bool, Any]:
    special = _CONVERTERS.get(_dotted(key))
    if special is not None:
        return special(raw, key, out)
    if hint is bool:
        if isinstance(raw, bool):
            return True, raw
    elif hint is int:
        if isinstance(raw, int) and not isinstance(raw, bool):
            return True, raw
    elif hint is float:
        if isinstance(raw, (int, float)) and not isinstance(raw, bool):
            return True, float(raw)
    elif hint is str:
        if isinstance(raw, str):
            return True, raw
    elif typing.get_origin(hint) is tuple and typing.get_args(hint)[1:] == (Ellipsis,):
        item = typing.get_args(hint)[0]
        if isinstance(raw, list):
            bad = [i for i, v in enumerate(raw) if not isinstance(v, item)]
            if not bad:
                return True, tuple(raw)
            out.add(key + (bad[0],), f"must be {_TYPE_NAMES[item]}, not {_describe(raw[bad[0]])}")
            return False, None
        out.add(key, f"must be an array of {_TYPE_NAMES[item].split(' ', 1)[1]}s, not {_describe(raw)}")
        return False, None
    else:  # pragma: no cover - a dataclass field type this loader does not know
        raise TypeError(f"config field {_dotted(key)} has unsupported type {hint!r}")
    out.add(key, f"must be {_TYPE_NAMES[hint]}, not {_describe(raw)}")
    return False, None


def _socket_mode(raw: Any, key: KeyPath, out: _Collector) -> tuple[bool, Any]:
    if isinstance(raw, str) and re.fullmatch(r"0?o?[0-7]{3,4}", raw):
        mode = int(raw.replace("o", ""), 8)
        if mode <= 0o777:
            return True, mode
        out.add(key, f"{raw!r} has bits beyond 0777 (only permission bits are allowed)")
        return False, None
    if isinstance(raw, int) and not isinstance(raw, bool):
        out.add(key, f"must be an octal string such as \"0660\", not the integer {raw}")
        return False, None
    out.add(key, f"must be an octal string such as \"0660\", not {raw!r}")
    return False, None


_CONVERTERS: dict[str, Callable[[Any, KeyPath, _Collector], tuple[bool, Any]]] = {
    "ipc.socket_mode": _socket_mode,
}


# ---------------------------------------------------------------------------
# Per-key rules: each returns None when fine, else the problem text.
# ---------------------------------------------------------------------------

Rule = Callable[[Any], "str | None"]


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def _at_least(low: float) -> Rule:
    return lambda v: None if v >= low else f"must be >= {_num(low)}, not {_num(v)}"


def _between(low: float, high: float) -> Rule:
    return lambda v: None if low <= v <= high else (
        f"must be between {_num(low)} and {_num(high)}, not {_num(v)}")


def _one_of(choices: tuple[str, ...]) -> Rule:
    return lambda v: None if v in choices else (
        f"must be one of {', '.join(repr(c) for c in choices)}, not {v!r}")


def _host_port(value: str) -> str | None:
    """Problem with a "host:port" string, or None. IPv6 hosts are written in brackets."""
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\[\]\s]+):(\d+)", value)
    if not m:
        return f"{value!r} is not \"host:port\" (IPv6: \"[::1]:9092\")"
    host = m.group(1) or m.group(3)
    port = int(m.group(2) or m.group(4))
    if m.group(1):
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return f"{value!r}: {host!r} is not an IPv6 address"
    elif not re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host):
        return f"{value!r}: {host!r} is not a valid host name or address"
    if not 1 <= port <= 65535:
        return f"{value!r}: port must be between 1 and 65535"
    return None


def _servers(value: tuple[str, ...]) -> str | None:
    if not value:
        return "must list at least one \"host:port\""
    for item in value:
        problem = _host_port(item)
        if problem:
            return problem
    return None


def _listen(value: str) -> str | None:
    """`[stats] prometheus_listen`: empty (off) or one local IP address and a port."""
    if value == "":
        return None
    problem = _host_port(value)
    if problem:
        return problem
    host = value.rsplit(":", 1)[0].strip("[]")
    if host == "localhost":
        return None
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return f"{value!r}: give an IP address of this host (e.g. 127.0.0.1), not a host name"
    if addr.is_unspecified:
        return f"{value!r} listens on every interface; name one local address (e.g. 127.0.0.1)"
    return None


# sockaddr_un.sun_path is 108 bytes on Linux, the last one the terminating NUL;
# ZeroMQ counts an abstract name's "@" in it too.
_IPC_PATH_MAX = 107


def _endpoint(value: str) -> str | None:
    if value.startswith("ipc://"):
        path = value[len("ipc://"):]
        if path.startswith("@"):
            if len(path) == 1:
                return "abstract ipc:// endpoint needs a name after '@'"
        elif not path.startswith("/"):
            return f"{value!r}: an ipc:// endpoint needs an absolute path (ipc:///run/kafkad/kafkad.sock)"
        size = len(os.fsencode(path))
        if size > _IPC_PATH_MAX:
            return (f"{value!r}: the socket path is {size} bytes long, more than the "
                    f"{_IPC_PATH_MAX} a Unix socket address holds (use a shorter path)")
        return None
    if value.startswith("tcp://"):
        problem = _host_port(value[len("tcp://"):])
        if problem:
            return problem
        host = value[len("tcp://"):].rsplit(":", 1)[0].strip("[]")
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        return None if loopback else (
            f"{value!r}: tcp:// endpoints must be on the loopback (127.0.0.1 or [::1]); "
            "the daemon serves this host only")
    return f"{value!r} must start with ipc:// or tcp://"


def _env_name(value: str) -> str | None:
    if value == "" or re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", value):
        return None
    return f"{value!r} is not an environment variable name"


def _absolute(value: str) -> str | None:
    return None if value.startswith("/") else f"{value!r} must be an absolute path"


def _level(value: str) -> str | None:
    return _one_of(LOG_LEVELS)(value.upper())


_FIELD_RULES: dict[str, Rule] = {
    "kafka.bootstrap_servers": _servers,
    "kafka.client_id": lambda v: None if v and v.isprintable() else "must be a non-empty printable string",
    "kafka.security_protocol": _one_of(SECURITY_PROTOCOLS),
    "kafka.request_timeout_ms": _between(1, INT32_MAX),
    "kafka.connect_timeout_ms": _between(1, INT32_MAX),
    "kafka.delivery_timeout_ms": _between(1, INT32_MAX),
    "kafka.metadata_max_age_ms": _between(1, INT32_MAX),
    "kafka.metadata_max_idle_ms": _between(100, INT32_MAX),
    "kafka.max_in_flight_per_connection": _between(1, 100),
    "kafka.retry_backoff_max_ms": _between(0, INT32_MAX),
    "kafka.reconnect_backoff_ms": _between(0, INT32_MAX),
    "kafka.reconnect_backoff_max_ms": _between(0, INT32_MAX),
    "kafka.linger_ms": _between(0, 60_000),
    "kafka.batch_max_bytes": _between(1024, INT32_MAX),
    "kafka.request_max_bytes": _between(1024, INT32_MAX),
    "kafka.unknown_topic_wait_ms": _between(0, INT32_MAX),
    "kafka.sasl.mechanism": _one_of(SASL_MECHANISMS),
    "kafka.sasl.password_env": _env_name,
    "queue.max_messages": _at_least(1),
    "queue.max_bytes": _at_least(1024),
    "ipc.endpoint": _endpoint,
    "ipc.max_frame_bytes": _between(MIN_FRAME_BYTES, INT32_MAX),
    "ipc.max_sessions": _at_least(1),
    "ipc.max_inflight_per_session": _at_least(1),
    "ipc.metadata_timeout_s": _between(0.001, 3600),
    "spool.path": _absolute,
    "spool.fsync": _one_of(FSYNC_POLICIES),
    "spool.fsync_interval_ms": _between(1, INT32_MAX),
    "spool.segment_bytes": _at_least(4096),
    "spool.max_bytes": _at_least(4096),
    "spool.when_full": _one_of(WHEN_FULL_POLICIES),
    "shutdown.drain_timeout_s": _between(0, 86_400),
    "stats.prometheus_listen": _listen,
    "stats.status_interval_s": _between(0.05, 86_400),
    "logging.level": _level,
}


def _check_fields(obj: Any, key: KeyPath, out: _Collector, given: Mapping[str, Any]) -> None:
    """Apply `_FIELD_RULES` to the values given in the file (defaults are known to be fine)."""
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        here = key + (f.name,)
        if dataclasses.is_dataclass(value):
            sub = given.get(f.name)
            _check_fields(value, here, out, sub if isinstance(sub, dict) else {})
            continue
        rule = _FIELD_RULES.get(_dotted(here))
        if rule is None or f.name not in given:
            continue
        problem = rule(value)
        if problem:
            out.add(here, problem)


# ---------------------------------------------------------------------------
# Cross-field rules
# ---------------------------------------------------------------------------


def validate(cfg: Config, *, check_files: bool = True,
             environ: Mapping[str, str] | None = None,
             is_set: Callable[[KeyPath], bool] | None = None) -> list[tuple[KeyPath, str]]:
    """Every rule that relates two or more settings, in one place.

    Returns (key path, problem) pairs; empty when the config is consistent.
    `check_files`: also check what the config names on this machine: files
    that must be readable by this process (TLS material, SASL password file)
    and the socket group. `environ`: when given,
    check that `kafka.sasl.password_env` names a variable that is set in it
    (`kafkad run` passes its own environment; `check-config` does not, since
    the service's environment may differ from the shell's). `is_set`: whether
    the file sets a key (None: every key counts as set). A rule between two
    keys is reported on the key it is about, unless the file left that one at
    its default and set the other: then on the other, naming the default.
    """
    problems: list[tuple[KeyPath, str]] = []

    def defaulted(key: KeyPath, *others: KeyPath) -> bool:
        """`key` was left at its default while one of `others` was set."""
        return is_set is not None and not is_set(key) and any(is_set(o) for o in others)

    def ordered(section: str, low: str, high: str, low_value, high_value, about: str) -> None:
        """The rule `low <= high`, about the key `about` (low or high): reported on it,
        or on the other key when the file left `about` at its default and set that one."""
        if low_value <= high_value:
            return
        other = low if about == high else high
        if defaulted((section, about), (section, other)):
            value = high_value if about == high else low_value
            if about == high:
                text = f"must be <= {high} ({value}, its default), not {low_value}"
            else:
                text = f"must be >= {low} ({value}, its default), not {high_value}"
            problems.append(((section, other), f"{text}; set {about} as well"))
        elif about == high:
            problems.append(((section, high), f"must be >= {low} ({low_value}), not {high_value}"))
        else:
            problems.append(((section, low), f"must be <= {high} ({high_value}), not {low_value}"))

    k = cfg.kafka
    proto = k.security_protocol
    uses_tls = proto in ("SSL", "SASL_SSL")
    uses_sasl = proto in ("SASL_PLAINTEXT", "SASL_SSL")

    tls, sasl = k.tls, k.sasl
    if not uses_tls:
        for name in ("ca_file", "cert_file", "key_file", "key_password_file"):
            if getattr(tls, name):
                problems.append((("kafka", "tls", name),
                                 f"is set but security_protocol is {proto!r}, so TLS is not used "
                                 "(set security_protocol to \"SSL\" or \"SASL_SSL\", or remove it)"))
    else:
        if bool(tls.cert_file) != bool(tls.key_file):
            given, missing = ("cert_file", "key_file") if tls.cert_file else ("key_file", "cert_file")
            problems.append((("kafka", "tls", given),
                             f"is set without {missing} (mutual TLS needs both)"))
        if tls.key_password_file and not tls.key_file:
            problems.append((("kafka", "tls", "key_password_file"), "is set but key_file is not"))
        if check_files:
            for name in ("ca_file", "cert_file", "key_file", "key_password_file"):
                problem = _unreadable(getattr(tls, name))
                if problem:
                    problems.append((("kafka", "tls", name), problem))

    sources = [n for n in ("password", "password_file", "password_env") if getattr(sasl, n)]
    if not uses_sasl:
        for name in ("username", *sources):
            if getattr(sasl, name):
                problems.append((("kafka", "sasl", name),
                                 f"is set but security_protocol is {proto!r}, so SASL is not used "
                                 "(set security_protocol to \"SASL_PLAINTEXT\" or \"SASL_SSL\", or remove it)"))
    else:
        if not sasl.username:
            problems.append((("kafka", "sasl", "username"),
                             f"is required when security_protocol is {proto!r}"))
        if not sources:
            problems.append((("kafka", "sasl", "password"),
                             f"a password is required when security_protocol is {proto!r}: "
                             "set one of password, password_file, password_env"))
        if sasl.password and len(sources) > 1:
            other = next(n for n in sources if n != "password")
            problems.append((("kafka", "sasl", other),
                             f"give the password one way only: password and {other} are both set"))
        if check_files and sasl.password_file:
            problem = _unreadable(sasl.password_file)
            if problem:
                problems.append((("kafka", "sasl", "password_file"), problem))
        if (environ is not None and sasl.password_env and not sasl.password_file
                and not environ.get(sasl.password_env)):
            problems.append((("kafka", "sasl", "password_env"),
                             f"environment variable {sasl.password_env} is not set or empty"))

    if k.delivery_timeout_ms < k.request_timeout_ms + k.linger_ms:
        if defaulted(("kafka", "delivery_timeout_ms"), ("kafka", "request_timeout_ms"), ("kafka", "linger_ms")):
            if is_set(("kafka", "request_timeout_ms")):
                key, other, value = "request_timeout_ms", "linger_ms", k.request_timeout_ms
                other_value = k.linger_ms
            else:
                key, other, value = "linger_ms", "request_timeout_ms", k.linger_ms
                other_value = k.request_timeout_ms
            problems.append((("kafka", key),
                             f"with {other} {_num(other_value)}, must be <= "
                             f"{_num(k.delivery_timeout_ms - other_value)} (delivery_timeout_ms is "
                             f"{k.delivery_timeout_ms}, its default), not {_num(value)}; "
                             "set delivery_timeout_ms as well"))
        else:
            problems.append((("kafka", "delivery_timeout_ms"),
                             f"must be >= request_timeout_ms + linger_ms "
                             f"({k.request_timeout_ms} + {k.linger_ms:g}), not {k.delivery_timeout_ms}"))
    ordered("kafka", "reconnect_backoff_ms", "reconnect_backoff_max_ms",
            k.reconnect_backoff_ms, k.reconnect_backoff_max_ms, about="reconnect_backoff_max_ms")
    ordered("kafka", "batch_max_bytes", "request_max_bytes", k.batch_max_bytes, k.request_max_bytes,
            about="batch_max_bytes")
    if k.idempotence and k.max_in_flight_per_connection > 5:
        problems.append((("kafka", "max_in_flight_per_connection"),
                         "must be <= 5 when idempotence is on (brokers keep the order of "
                         f"5 batches per producer), not {k.max_in_flight_per_connection}"))

    if check_files and cfg.ipc.socket_group:
        try:
            grp.getgrnam(cfg.ipc.socket_group)
        except KeyError:
            problems.append((("ipc", "socket_group"),
                             f"no group named {cfg.ipc.socket_group!r} on this machine "
                             "(create it, e.g. with systemd/kafkad.sysusers)"))

    sp = cfg.spool
    ordered("spool", "segment_bytes", "max_bytes", sp.segment_bytes, sp.max_bytes, about="max_bytes")
    return problems


def _unreadable(path: str) -> str | None:
    if not path:
        return None
    try:
        with open(path, "rb"):
            return None
    except IsADirectoryError:
        return f"{path!r} is a directory, not a file"
    except OSError as exc:
        return f"cannot read {path!r}: {exc.strerror or exc}"


# ---------------------------------------------------------------------------
# Entry points
# ---------------------------------------------------------------------------

_TOML_POSITION = re.compile(r"\s*\(at line (\d+), column (\d+)\)\s*$")
_TOML_END = re.compile(r"\s*\(at end of document\)\s*$")


def parse_config(text: str, path: str = "<config>", *, check_files: bool = True,
                 environ: Mapping[str, str] | None = None) -> Config:
    """Parse TOML `text` (named `path` in messages) into a `Config`, or raise `ConfigError`."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        m = _TOML_POSITION.search(msg)
        if m:
            line, col = int(m.group(1)), int(m.group(2))
            detail = f"{_TOML_POSITION.sub('', msg)} (column {col})"
        else:
            line = text.count("\n") + 1
            detail = _TOML_END.sub("", msg) + " (at end of file)"
        raise ConfigError([Problem(path, line, "invalid TOML", detail)]) from None

    out = _Collector(path, locate_keys(text))
    cfg = _build(Config, data, (), out)
    _check_fields(cfg, (), out, data)
    # A field already reported on its own is not reported again by a cross-field rule.
    reported = {p.key for p in out.problems}
    for key, message in validate(cfg, check_files=check_files, environ=environ,
                                 is_set=lambda key: _is_given(data, key)):
        if _dotted(key) not in reported:
            out.add(key, message, at=(("kafka", "security_protocol"),))
    if out.problems:
        raise ConfigError(out.problems)
    if cfg.logging.level != cfg.logging.level.upper():
        cfg = dataclasses.replace(cfg, logging=dataclasses.replace(
            cfg.logging, level=cfg.logging.level.upper()))
    return cfg


def _is_given(data: Mapping[str, Any], key: KeyPath) -> bool:
    """Whether the parsed TOML `data` sets `key`."""
    node: Any = data
    for part in key:
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True


def _flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            out.update(_flatten(value, f"{prefix}{f.name}."))
        else:
            out[f"{prefix}{f.name}"] = value
    return out


def changed_keys(old: Config, new: Config) -> list[str]:
    """Dotted keys whose value differs between two configs, in declaration order (for reload)."""
    a, b = _flatten(old), _flatten(new)
    return [k for k in a if a[k] != b[k]]


def load_config(path: str | os.PathLike[str], *, check_files: bool = True,
                environ: Mapping[str, str] | None = None) -> Config:
    """Read and validate the TOML file at `path`; raise `ConfigError` on any problem.

    A missing or unreadable file is a `ConfigError` too (with no line number).
    """
    name = os.fspath(path)
    try:
        with open(name, "rb") as f:
            raw = f.read()
    except OSError as exc:
        raise ConfigError([Problem(name, None, "file", f"cannot read: {exc.strerror or exc}")]) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError([Problem(name, line, "invalid TOML", "the file is not valid UTF-8")]) from None
    return parse_config(text, name, check_files=check_files, environ=environ)
