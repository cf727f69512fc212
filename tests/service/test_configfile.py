"""The TOML loader: every error path with its exact PATH:LINE: key: problem line."""

from __future__ import annotations

import dataclasses
import os
import pathlib
import textwrap
import tomllib
import typing

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafkad.config import Config
from kafkad.configfile import ConfigError, load_config, locate_keys, parse_config
from tests.support.daemon import toml_dumps

ROOT = pathlib.Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "kafkad.toml.example"


def problems(text: str, **kw) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(textwrap.dedent(text), "f.toml", **kw)
    return [str(p) for p in info.value.problems]


# --- the example file and the dataclasses stay in step ----------------------------


def _fields(cls, prefix=()):
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            yield from _fields(hints[f.name], prefix + (f.name,))
        else:
            yield prefix + (f.name,), f


def test_example_loads_to_exactly_the_defaults():
    assert load_config(EXAMPLE) == Config()


def test_example_sets_every_field_to_its_default_with_a_comment():
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    lines = text.splitlines()
    located = locate_keys(text)
    for key, f in _fields(Config):
        table = data
        for part in key[:-1]:
            table = table[part]
        dotted = ".".join(key)
        assert key[-1] in table, f"{dotted} is missing from kafkad.toml.example"
        value = table[key[-1]]
        default = f.default
        if dotted == "ipc.socket_mode":
            value = int(value, 8)
        elif isinstance(default, tuple):
            value = tuple(value)
        assert value == default and type(value) is type(default), (
            f"{dotted}: example says {value!r}, the dataclass default is {default!r}")
        line = lines[located[key] - 2]
        assert line.startswith("# ") and len(line) > 10, f"{dotted} has no one-line meaning above it"


def test_example_has_no_key_the_dataclasses_lack():
    # load_config already rejects unknown keys; this states it for the example explicitly.
    data = tomllib.loads(EXAMPLE.read_text())

    def keys(d, prefix=()):
        for k, v in d.items():
            if isinstance(v, dict):
                yield from keys(v, prefix + (k,))
            else:
                yield prefix + (k,)

    known = {k for k, _ in _fields(Config)}
    assert set(keys(data)) == known


def test_every_numeric_field_has_a_range_rule():
    """A new int/float field must say its range in configfile._FIELD_RULES (negative timeouts...)."""
    from kafkad.configfile import _FIELD_RULES

    missing = [".".join(key) for key, f in _fields(Config)
               if isinstance(f.default, (int, float)) and not isinstance(f.default, bool)
               and ".".join(key) not in _FIELD_RULES and key != ("ipc", "socket_mode")]
    assert missing == []


# --- values that load ----------------------------------------------------------


def test_values_convert_into_the_dataclasses():
    cfg = parse_config(textwrap.dedent("""\
        [kafka]
        bootstrap_servers = ["b1:9092", "[::1]:9093"]
        linger_ms = 5
        [ipc]
        socket_mode = "0640"
        endpoint = "tcp://127.0.0.1:5555"
        [logging]
        level = "debug"
        """))
    assert cfg.kafka.bootstrap_servers == ("b1:9092", "[::1]:9093")
    assert cfg.kafka.linger_ms == 5.0 and isinstance(cfg.kafka.linger_ms, float)
    assert cfg.ipc.socket_mode == 0o640
    assert cfg.ipc.endpoint == "tcp://127.0.0.1:5555"
    assert cfg.logging.level == "DEBUG"
    assert cfg.kafka.tls == Config().kafka.tls


def test_sasl_over_tls_with_readable_files(tmp_path):
    for name in ("ca.pem", "pw"):
        (tmp_path / name).write_text("x\n")
    cfg = parse_config(textwrap.dedent(f"""\
        [kafka]
        security_protocol = "SASL_SSL"
        tls.ca_file = "{tmp_path / 'ca.pem'}"
        sasl = {{ mechanism = "SCRAM-SHA-512", username = "u", password_file = "{tmp_path / 'pw'}" }}
        """))
    assert cfg.kafka.sasl.mechanism == "SCRAM-SHA-512"
    assert cfg.kafka.tls.ca_file.endswith("ca.pem")


# --- one problem per error path, exact text ------------------------------------------


@pytest.mark.parametrize("text,expected", [
    ("[kafka]\nrequest_timeout = 5\n",
     "f.toml:2: kafka.request_timeout: unknown key in [kafka] (did you mean 'request_timeout_ms'?)"),
    ("[kafak]\nx = 1\n", "f.toml:1: kafak: unknown section (did you mean 'kafka'?)"),
    ("\n[kafka.tsl]\nca_file = 'x'\n",
     "f.toml:2: kafka.tsl: unknown section in [kafka] (did you mean 'tls'?)"),
    ("[kafka]\nrequest_timeout_ms = \"30s\"\n",
     "f.toml:2: kafka.request_timeout_ms: must be an integer, not a string"),
    ("[kafka]\nrequest_timeout_ms = 1.5\n",
     "f.toml:2: kafka.request_timeout_ms: must be an integer, not a number"),
    ("[kafka]\nidempotence = 1\n", "f.toml:2: kafka.idempotence: must be a boolean (true or false), not an integer"),
    ("[kafka]\nrequest_timeout_ms = -1\n",
     "f.toml:2: kafka.request_timeout_ms: must be between 1 and 2147483647, not -1"),
    ("[kafka]\nmetadata_max_idle_ms = 50\n",
     "f.toml:2: kafka.metadata_max_idle_ms: must be between 100 and 2147483647, not 50"),
    ('[kafka]\n"client_id\\nx" = 1\n',           # a quoted key stays on one line, quoted
     'f.toml:2: kafka."client_id\\nx": unknown key in [kafka] (did you mean \'client_id\'?)'),
    ('[kafka]\n"a: b" = 1\n', 'f.toml:2: kafka."a: b": unknown key in [kafka]'),
    ("[ipc]\nmax_frame_bytes = 1048576\n",       # one call may be 8 MiB: its frame must fit
     "f.toml:2: ipc.max_frame_bytes: must be between 9437184 and 2147483647, not 1048576"),
    ("[shutdown]\ndrain_timeout_s = -0.5\n",
     "f.toml:2: shutdown.drain_timeout_s: must be between 0 and 86400, not -0.5"),
    ("[kafka]\nbootstrap_servers = \"b:9092\"\n",
     "f.toml:2: kafka.bootstrap_servers: must be an array of strings, not a string"),
    ("[kafka]\nbootstrap_servers = []\n",
     "f.toml:2: kafka.bootstrap_servers: must list at least one \"host:port\""),
    ("[kafka]\nbootstrap_servers = [\n  \"a:1\",\n  \"b\",\n]\n",
     "f.toml:2: kafka.bootstrap_servers: 'b' is not \"host:port\" (IPv6: \"[::1]:9092\")"),
    ("[kafka]\nbootstrap_servers = [\"a:1\", 7]\n",
     "f.toml:2: kafka.bootstrap_servers.1: must be a string, not an integer"),
    ("[kafka]\nbootstrap_servers = [\"a:70000\"]\n",
     "f.toml:2: kafka.bootstrap_servers: 'a:70000': port must be between 1 and 65535"),
    ("[kafka]\nsecurity_protocol = \"TLS\"\n",
     "f.toml:2: kafka.security_protocol: must be one of 'PLAINTEXT', 'SSL', 'SASL_PLAINTEXT', "
     "'SASL_SSL', not 'TLS'"),
    ("[kafka.sasl]\nmechanism = \"GSSAPI\"\n",
     "f.toml:2: kafka.sasl.mechanism: must be one of 'PLAIN', 'SCRAM-SHA-256', 'SCRAM-SHA-512', not 'GSSAPI'"),
    ("[spool]\nfsync = \"sometimes\"\n",
     "f.toml:2: spool.fsync: must be one of 'always', 'interval', 'never', not 'sometimes'"),
    ("[spool]\nwhen_full = \"drop\"\n",
     "f.toml:2: spool.when_full: must be one of 'block', 'reject', not 'drop'"),
    ("[spool]\npath = \"spool\"\n", "f.toml:2: spool.path: 'spool' must be an absolute path"),
    ("[ipc]\nsocket_mode = 660\n",
     "f.toml:2: ipc.socket_mode: must be an octal string such as \"0660\", not the integer 660"),
    ("[ipc]\nsocket_mode = \"rw-rw----\"\n",
     "f.toml:2: ipc.socket_mode: must be an octal string such as \"0660\", not 'rw-rw----'"),
    ("[ipc]\nendpoint = \"/run/kafkad/kafkad.sock\"\n",
     "f.toml:2: ipc.endpoint: '/run/kafkad/kafkad.sock' must start with ipc:// or tcp://"),
    ("[ipc]\nendpoint = \"tcp://10.0.0.1:5555\"\n",
     "f.toml:2: ipc.endpoint: 'tcp://10.0.0.1:5555': tcp:// endpoints must be on the loopback "
     "(127.0.0.1 or [::1]); the daemon serves this host only"),
    ("[stats]\nprometheus_listen = \"0.0.0.0:9465\"\n",
     "f.toml:2: stats.prometheus_listen: '0.0.0.0:9465' listens on every interface; "
     "name one local address (e.g. 127.0.0.1)"),
    ("[logging]\nlevel = \"LOUD\"\n",
     "f.toml:2: logging.level: must be one of 'DEBUG', 'INFO', 'WARNING', 'ERROR', 'CRITICAL', not 'LOUD'"),
    ("kafka = 3\n", "f.toml:1: kafka: must be a table ([kafka]), not an integer"),
    ("[kafka]\ntls = { ca_file = \"/x\",\n}\n", None),  # TOML syntax error, checked below
])
def test_each_error_path(text, expected):
    got = problems(text)
    if expected is None:
        assert len(got) == 1 and got[0].startswith("f.toml:2: invalid TOML: ")
    else:
        assert got == [expected]


def test_an_ipc_path_must_fit_a_unix_socket_address():
    # sun_path holds 108 bytes with the final NUL; `run` failed at start past that
    fits = "/run/" + "k" * 102                      # 107 bytes
    assert parse_config(f'[ipc]\nendpoint = "ipc://{fits}"\n').ipc.endpoint == f"ipc://{fits}"
    long = fits + "k"
    assert problems(f'[ipc]\nendpoint = "ipc://{long}"\n') == [
        f"f.toml:2: ipc.endpoint: 'ipc://{long}': the socket path is 108 bytes long, more than "
        "the 107 a Unix socket address holds (use a shorter path)"]
    assert problems('[ipc]\nendpoint = "ipc://@' + "a" * 107 + '"\n')[0].startswith(
        "f.toml:2: ipc.endpoint: 'ipc://@aaaa")
    assert parse_config('[ipc]\nendpoint = "ipc://@' + "a" * 106 + '"\n')

def test_cross_field_rules(tmp_path):
    got = problems("""\
        [kafka]
        security_protocol = "SASL_SSL"
        delivery_timeout_ms = 1000

        [kafka.tls]
        cert_file = "/nonexistent/cert.pem"

        [kafka.sasl]
        password = "p"
        password_file = "/nonexistent/pw"
        """)
    assert got == [
        "f.toml:2: kafka.sasl.username: is required when security_protocol is 'SASL_SSL'",
        "f.toml:3: kafka.delivery_timeout_ms: must be >= request_timeout_ms + linger_ms (30000 + 5), not 1000",
        "f.toml:6: kafka.tls.cert_file: is set without key_file (mutual TLS needs both)",
        "f.toml:6: kafka.tls.cert_file: cannot read '/nonexistent/cert.pem': No such file or directory",
        "f.toml:10: kafka.sasl.password_file: give the password one way only: "
        "password and password_file are both set",
        "f.toml:10: kafka.sasl.password_file: cannot read '/nonexistent/pw': No such file or directory",
    ]


@pytest.mark.parametrize("text,expected", [
    # out of range: reported once, on its own line, not also against a default at line 1
    ("[kafka]\nrequest_timeout_ms = 9999999999999\n",
     ["f.toml:2: kafka.request_timeout_ms: must be between 1 and 2147483647, not 9999999999999"]),
    ("[kafka]\nrequest_timeout_ms = 200000\n",
     ["f.toml:2: kafka.request_timeout_ms: with linger_ms 5, must be <= 119995 "
      "(delivery_timeout_ms is 120000, its default), not 200000; set delivery_timeout_ms as well"]),
    ("[kafka]\nreconnect_backoff_ms = 5000\n",
     ["f.toml:2: kafka.reconnect_backoff_ms: must be <= reconnect_backoff_max_ms "
      "(1000, its default), not 5000; set reconnect_backoff_max_ms as well"]),
    ("[kafka]\nrequest_max_bytes = 100000\n",
     ["f.toml:2: kafka.request_max_bytes: must be >= batch_max_bytes "
      "(1048576, its default), not 100000; set batch_max_bytes as well"]),
    ("[spool]\nsegment_bytes = 8589934592\n",
     ["f.toml:2: spool.segment_bytes: must be <= max_bytes "
      "(4294967296, its default), not 8589934592; set max_bytes as well"]),
])
def test_a_conflict_with_a_default_is_reported_on_the_key_that_was_set(text, expected):
    assert problems(text) == expected

def test_file_checks_can_be_skipped():
    text = '[kafka]\nsecurity_protocol = "SSL"\ntls.ca_file = "/nonexistent/ca.pem"\n'
    assert problems(text) == [
        "f.toml:3: kafka.tls.ca_file: cannot read '/nonexistent/ca.pem': No such file or directory"]
    assert parse_config(text, check_files=False).kafka.tls.ca_file == "/nonexistent/ca.pem"


def test_tls_and_sasl_settings_the_protocol_ignores_are_errors():
    assert problems('[kafka.tls]\nca_file = "/etc/hostname"\n[kafka.sasl]\nusername = "u"\n') == [
        "f.toml:2: kafka.tls.ca_file: is set but security_protocol is 'PLAINTEXT', so TLS is not used "
        "(set security_protocol to \"SSL\" or \"SASL_SSL\", or remove it)",
        "f.toml:4: kafka.sasl.username: is set but security_protocol is 'PLAINTEXT', so SASL is not used "
        "(set security_protocol to \"SASL_PLAINTEXT\" or \"SASL_SSL\", or remove it)",
    ]


def test_sasl_needs_a_password_source_and_the_env_var_when_running():
    base = '[kafka]\nsecurity_protocol = "SASL_PLAINTEXT"\n[kafka.sasl]\nusername = "u"\n'
    assert problems(base) == [
        "f.toml:2: kafka.sasl.password: a password is required when security_protocol is "
        "'SASL_PLAINTEXT': set one of password, password_file, password_env"]
    with_env = base + 'password_env = "KAFKAD_TEST_PW"\n'
    assert parse_config(with_env).kafka.sasl.password_env == "KAFKAD_TEST_PW"  # check-config: env unknown
    assert problems(with_env, environ={}) == [
        "f.toml:5: kafka.sasl.password_env: environment variable KAFKAD_TEST_PW is not set or empty"]
    assert parse_config(with_env, environ={"KAFKAD_TEST_PW": "s"}).kafka.sasl.username == "u"


def test_idempotence_limits_in_flight_requests():
    assert problems("[kafka]\nmax_in_flight_per_connection = 6\n") == [
        "f.toml:2: kafka.max_in_flight_per_connection: must be <= 5 when idempotence is on "
        "(brokers keep the order of 5 batches per producer), not 6"]
    assert parse_config("[kafka]\nidempotence = false\nmax_in_flight_per_connection = 6\n") \
        .kafka.max_in_flight_per_connection == 6


def test_all_problems_are_reported_in_line_order():
    got = problems("""\
        [spool]
        fsync = "no"
        [kafka]
        linger_ms = "2"
        bogus = 1
        """)
    assert [g.split(":")[1] for g in got] == ["2", "4", "5"]


def test_toml_syntax_error_has_its_line():
    assert problems("[kafka]\nclient_id = \"a\"\nlinger_ms = = 2\n") == [
        "f.toml:3: invalid TOML: Invalid value (column 13)"]
    got = problems("[kafka]\nclient_id = \"abc\n")
    assert len(got) == 1 and got[0].startswith("f.toml:2: invalid TOML: ")


def test_missing_unreadable_and_binary_files(tmp_path):
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    assert str(info.value) == f"{missing}:0: file: cannot read: No such file or directory"
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)
    assert str(info.value) == f"{tmp_path}:0: file: cannot read: Is a directory"
    binary = tmp_path / "bin.toml"
    binary.write_bytes(b"[kafka]\n\xff\xfe = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(binary)
    assert str(info.value) == f"{binary}:2: invalid TOML: the file is not valid UTF-8"
    if os.geteuid() != 0:  # root reads any file
        private = tmp_path / "private.toml"
        private.write_text("")
        private.chmod(0)
        with pytest.raises(ConfigError) as info:
            load_config(private)
        assert str(info.value) == f"{private}:0: file: cannot read: Permission denied"


# --- the key locator -------------------------------------------------------------


def test_locator_handles_tables_dotted_inline_and_multiline_values():
    text = "\n".join([
        '# comment with key = "value"',
        "top = 1",
        "[a]",
        's = """',
        "fake = 1",
        "[not.a.table]",
        '"""',
        "\"quoted.key\" = 'x'   # trailing = comment",
        "b.c.d = 2",
        "arr = [",
        "  1,  # x = 1",
        "  { inl = 3, other = 4 },",
        "  [5, 6],",
        "]",
        '[ a . "sub" ]',
        "k = \'\'\'literal \'\'\'\'\'",
        "e = 5",
        "[[items]]",
        "n = 1",
        "[[items]]",
        "n = 2",
    ]) + "\n"
    tomllib.loads(text)  # the fixture is valid TOML
    found = locate_keys(text)
    assert found[("top",)] == 2
    assert found[("a",)] == 3
    assert found[("a", "s")] == 4
    assert ("fake",) not in found and ("a", "fake") not in found and ("not", "a", "table") not in found
    assert found[("a", "quoted.key")] == 8
    assert found[("a", "b", "c", "d")] == 9 and found[("a", "b")] == 9
    assert found[("a", "arr")] == 10
    assert found[("a", "arr", 1, "inl")] == 12
    assert found[("a", "arr", 1, "other")] == 12
    assert found[("a", "arr", 2)] == 13
    assert found[("a", "sub")] == 15
    assert found[("a", "sub", "k")] == 16
    assert found[("a", "sub", "e")] == 17
    assert found[("items", 0, "n")] == 19
    assert found[("items", 1, "n")] == 21


def test_problem_lines_follow_the_key_not_the_first_mention():
    got = problems('[kafka]\nclient_id = "x"  # linger_ms = 1\n\n[kafka.tls]\n'
                   'check_hostname = "no"\n')
    assert got == ["f.toml:5: kafka.tls.check_hostname: must be a boolean (true or false), not a string"]


def test_loaded_config_is_frozen():
    cfg = parse_config("")
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.kafka = None  # type: ignore[misc]


# --- property: any file written key by key locates every key on its own line ---------

_SCALARS = st.one_of(st.integers(-5, 5), st.booleans(), st.text("ab =#\"'[]{}.\\\n", max_size=6),
                     st.lists(st.integers(0, 3), max_size=3))
_NAMES = st.text("abcxyz_-", min_size=1, max_size=5)


@settings(max_examples=150, deadline=None)
@given(st.dictionaries(_NAMES, st.one_of(_SCALARS, st.dictionaries(_NAMES, st.one_of(
    _SCALARS, st.dictionaries(_NAMES, _SCALARS, max_size=3)), max_size=4)), max_size=5))
def test_locator_finds_every_key_of_generated_files(doc):
    text = toml_dumps(doc)
    assert tomllib.loads(text) == doc
    found = locate_keys(text)
    lines = text.splitlines()

    def walk(d, prefix):
        for k, v in d.items():
            key = prefix + (k,)
            if isinstance(v, dict):
                walk(v, key)
            else:
                assert key in found, (key, text)
                assert lines[found[key] - 1].startswith(f"{k} = "), (key, text)

    walk(doc, ())
