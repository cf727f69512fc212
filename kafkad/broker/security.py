"""TLS and SASL for broker connections: the I/O-side half of `[kafka] security_protocol`.

The broker connection code (kafkad.broker) uses two things from here:

- `make_ssl_context(kafka_cfg)`: the client TLS context for ``SSL`` and
  ``SASL_SSL``, handed to ``asyncio.open_connection(..., ssl=ctx,
  server_hostname=host)``. Certificates are always verified (against
  ``[kafka.tls] ca_file``, or the system trust store when it is empty);
  ``check_hostname`` (default true) adds the host name check; TLS 1.2 is the
  oldest version offered; a client certificate is loaded when ``cert_file``
  is set (its key may be encrypted, with the password in ``key_password_file``).
- `authenticate(exchange, kafka_cfg, broker_versions)`: the SASL exchange for
  ``SASL_PLAINTEXT`` and ``SASL_SSL``, run right after ApiVersions on every
  new connection and before any other request. SaslHandshake v1 names the
  mechanism; then SaslAuthenticate (the highest of v0-v2 the broker offers)
  carries the tokens of PLAIN or SCRAM-SHA-256/512 (kafkad.protocol.sasl).

Secrets (the SASL password and the TLS key password) are read when a context
or an exchange is made, kept in local variables only, and never put in a log
line, an exception, a ``repr`` or the stats. Usernames, mechanisms and broker
addresses do appear in messages: an operator needs them to find the mistake.

Errors, by how the caller reacts:

- `SecurityConfigError` (a ValueError): the configuration cannot work (file
  missing or unreadable, bad key password, unknown mechanism, no password).
  Retrying will not help; the message names the config key.
- `AuthenticationError`: the broker refused us, or did not prove it knows our
  SCRAM credentials. Carries the Kafka error code (``errno``) and the
  kafka-python class name, e.g. SaslAuthenticationFailedError (58). Not
  retriable as such: the connection should be dropped and retried with the
  reconnect backoff, so a fixed password file is picked up on reload.
- TLS verification failures surface from the connection attempt as
  ``ssl.SSLCertVerificationError``; `describe_tls_error` turns one into a
  sentence that names the broker and what to check. A TLS connection closed
  before the broker's first answer (how asyncio shows a refused client
  certificate under TLS 1.3) is explained by `describe_early_close`.
"""

from __future__ import annotations

import logging
import os
import secrets
import ssl
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from kafkad.config import KafkaConfig, SaslConfig
from kafkad.protocol.messages import SaslAuthenticateRequest, SaslHandshakeRequest
from kafkad.protocol.sasl import (
    SUPPORTED_MECHANISMS,
    ScramClient,
    ScramError,
    plain_initial_response,
)

__all__ = [
    "AuthenticationError",
    "SecurityConfigError",
    "authenticate",
    "describe_early_close",
    "describe_tls_error",
    "make_ssl_context",
    "resolve_password",
    "uses_sasl",
    "uses_tls",
]

log = logging.getLogger(__name__)

SASL_HANDSHAKE_KEY = 17
SASL_AUTHENTICATE_KEY = 36
_HANDSHAKE_VERSION = 1          # v0 would send the tokens unframed; kafkad never does
_AUTHENTICATE_VERSIONS = (0, 2)  # what kafkad implements (2 is the flexible version)

# Kafka error codes of the SASL path, with kafka-python's class names.
_SASL_ERRORS = {
    33: "UnsupportedSaslMechanismError",
    34: "IllegalSaslStateError",
    35: "UnsupportedVersionError",
    58: "SaslAuthenticationFailedError",
}
SASL_AUTHENTICATION_FAILED = 58
UNSUPPORTED_SASL_MECHANISM = 33
UNSUPPORTED_VERSION = 35


class SecurityConfigError(ValueError):
    """The `[kafka.tls]` / `[kafka.sasl]` settings cannot work; the message names the key."""


class AuthenticationError(Exception):
    """SASL authentication with a broker failed.

    `errno` is the Kafka error code (58 SASL_AUTHENTICATION_FAILED, 33
    UNSUPPORTED_SASL_MECHANISM, 34 ILLEGAL_SASL_STATE, 35 UNSUPPORTED_VERSION)
    and `error_name` the matching kafka-python class name. The message never
    contains the password.
    """

    retriable = False

    def __init__(self, message: str, *, errno: int = SASL_AUTHENTICATION_FAILED,
                 mechanism: str = "", username: str = "") -> None:
        self.errno = errno
        self.error_name = _SASL_ERRORS.get(errno, "KafkaError")
        self.mechanism = mechanism
        self.username = username
        super().__init__(f"{self.error_name} ({errno}): {message}")


def uses_tls(kafka_cfg: KafkaConfig) -> bool:
    """True when `security_protocol` puts connections under TLS (SSL, SASL_SSL)."""
    return kafka_cfg.security_protocol in ("SSL", "SASL_SSL")


def uses_sasl(kafka_cfg: KafkaConfig) -> bool:
    """True when `security_protocol` asks for SASL (SASL_PLAINTEXT, SASL_SSL)."""
    return kafka_cfg.security_protocol in ("SASL_PLAINTEXT", "SASL_SSL")


def _read_secret_file(path: str, key: str) -> str:
    """The file's text without its final line break; SecurityConfigError naming `key`."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise SecurityConfigError(f"{key} {path!r}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise SecurityConfigError(f"{key} {path!r}: is not UTF-8 text") from None
    if text.endswith("\r\n"):
        text = text[:-2]
    elif text.endswith("\n"):
        text = text[:-1]
    return text


def make_ssl_context(kafka_cfg: KafkaConfig) -> ssl.SSLContext:
    """The client TLS context for broker connections, from `kafka_cfg.tls`.

    Always verifies the broker's certificate chain; checks the host name
    unless `check_hostname` is false; offers TLS 1.2 and newer only.
    Raises SecurityConfigError when a file is missing, unreadable or invalid,
    or when the key password is wrong.
    """
    if not isinstance(kafka_cfg, KafkaConfig):
        raise TypeError(f"kafka_cfg must be a KafkaConfig, not {type(kafka_cfg).__name__}")
    tls = kafka_cfg.tls
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.check_hostname = bool(tls.check_hostname)
    if tls.ca_file:
        try:
            ctx.load_verify_locations(cafile=tls.ca_file)
        except FileNotFoundError:
            raise SecurityConfigError(f"[kafka.tls] ca_file {tls.ca_file!r}: no such file") from None
        except (OSError, ssl.SSLError) as exc:
            raise SecurityConfigError(
                f"[kafka.tls] ca_file {tls.ca_file!r}: not a readable PEM CA bundle ({_reason(exc)})"
            ) from None
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)

    if tls.cert_file or tls.key_file:
        if not tls.cert_file:
            raise SecurityConfigError("[kafka.tls] key_file is set without cert_file")
        password = None
        if tls.key_password_file:
            password = _read_secret_file(tls.key_password_file, "[kafka.tls] key_password_file")
        for key, path in (("cert_file", tls.cert_file), ("key_file", tls.key_file)):
            if path and not os.path.exists(path):
                raise SecurityConfigError(f"[kafka.tls] {key} {path!r}: no such file")
        key_path = tls.key_file or tls.cert_file

        def no_password() -> str:
            # OpenSSL asks only when the key is encrypted; without a configured
            # password, fail here rather than prompt on a terminal.
            raise SecurityConfigError(f"[kafka.tls] key_file {key_path!r} is encrypted and "
                                      "key_password_file is not set")

        try:
            ctx.load_cert_chain(tls.cert_file, tls.key_file or None,
                                password=password if password is not None else no_password)
        except (OSError, ssl.SSLError) as exc:
            hint = ("wrong key_password_file, or the key does not match the certificate"
                    if tls.key_password_file else
                    "the key may be encrypted (set key_password_file) or not match the certificate")
            raise SecurityConfigError(
                f"[kafka.tls] cert_file {tls.cert_file!r} / key_file {tls.key_file!r}: "
                f"cannot load the client certificate ({_reason(exc)}; {hint})") from None
    return ctx


def _reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return exc.reason
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


_X509_HOSTNAME_MISMATCH = 62      # OpenSSL's X509_V_ERR_HOSTNAME_MISMATCH
_X509_IP_ADDRESS_MISMATCH = 64


def describe_tls_error(exc: BaseException, broker: str, kafka_cfg: KafkaConfig) -> str:
    """One sentence for a failed TLS handshake with `broker`, naming what to check."""
    tls = kafka_cfg.tls
    if isinstance(exc, ssl.SSLCertVerificationError):
        detail = exc.verify_message or _reason(exc)
        if exc.verify_code in (_X509_HOSTNAME_MISMATCH, _X509_IP_ADDRESS_MISMATCH):
            return (f"TLS to {broker}: the broker's certificate is not valid for this host name "
                    f"({detail}); connect by a name in its subjectAltName, or set "
                    f"[kafka.tls] check_hostname = false")
        trust = f"ca_file {tls.ca_file!r}" if tls.ca_file else "the system trust store"
        return (f"TLS to {broker}: the broker's certificate was not accepted ({detail}); "
                f"check that {trust} holds the CA that signed it")
    return f"TLS to {broker}: handshake failed ({_reason(exc)})"


def describe_early_close(broker: str, kafka_cfg: KafkaConfig) -> str:
    """One sentence for a TLS connection the broker closed before its first answer.

    With TLS 1.3 a broker that refuses the client's certificate (or wants one
    and got none) sends its alert after the client's side of the handshake
    has finished; asyncio then reports a plain end of stream on the first
    read. This names the likely cause instead of "closed by the broker".
    """
    tls = kafka_cfg.tls
    if tls.cert_file:
        return (f"TLS to {broker}: the broker closed the connection before answering; it may "
                f"not accept the client certificate {tls.cert_file!r} (check that its CA trusts it)")
    return (f"TLS to {broker}: the broker closed the connection before answering; it may require "
            f"a client certificate (set [kafka.tls] cert_file and key_file)")


def resolve_password(sasl_cfg: SaslConfig) -> str:
    """The SASL password from `password_file`, else `password_env`, else `password`.

    Reads the file or the environment at each call, so a reload or a new
    connection sees a rotated secret. SecurityConfigError (never containing
    the password) when the chosen source is missing or empty.
    """
    if not isinstance(sasl_cfg, SaslConfig):
        raise TypeError(f"sasl_cfg must be a SaslConfig, not {type(sasl_cfg).__name__}")
    if sasl_cfg.password_file:
        password = _read_secret_file(sasl_cfg.password_file, "[kafka.sasl] password_file")
        source = f"password_file {sasl_cfg.password_file!r}"
    elif sasl_cfg.password_env:
        password = os.environ.get(sasl_cfg.password_env, "")
        source = f"password_env: environment variable {sasl_cfg.password_env}"
    else:
        password = sasl_cfg.password
        source = "password"
    if not password:
        raise SecurityConfigError(f"[kafka.sasl] {source} gives an empty password "
                                  "(set one of password, password_file, password_env)")
    return password


Exchange = Callable[[Any, int], Awaitable[Any]]


def _pick_authenticate_version(broker_versions: Mapping[int, tuple[int, int]]) -> int | None:
    rng = broker_versions.get(SASL_AUTHENTICATE_KEY)
    if rng is None:
        return None
    lo, hi = max(rng[0], _AUTHENTICATE_VERSIONS[0]), min(rng[1], _AUTHENTICATE_VERSIONS[1])
    return hi if lo <= hi else None


async def authenticate(exchange: Exchange, kafka_cfg: KafkaConfig,
                       broker_versions: Mapping[int, tuple[int, int]]) -> None:
    """Log this connection in with SASL; return when the broker accepted us.

    `exchange(msg, version)` sends one request on the connection and returns
    the decoded response; `broker_versions` is the broker's ApiVersions
    answer as {api_key: (min, max)}. Raises AuthenticationError when the
    broker refuses (or, for SCRAM, does not prove it knows the credentials),
    SecurityConfigError when the password cannot be read. Exceptions from
    `exchange` (a lost connection) propagate unchanged.
    """
    sasl = kafka_cfg.sasl
    mechanism = sasl.mechanism
    if mechanism not in SUPPORTED_MECHANISMS:
        raise SecurityConfigError(f"[kafka.sasl] mechanism must be one of "
                                  f"{', '.join(SUPPORTED_MECHANISMS)}, not {mechanism!r}")
    if not sasl.username:
        raise SecurityConfigError("[kafka.sasl] username is empty")
    user = sasl.username

    def fail(message: str, errno: int = SASL_AUTHENTICATION_FAILED) -> AuthenticationError:
        return AuthenticationError(f"SASL {mechanism} as {user!r}: {message}",
                                   errno=errno, mechanism=mechanism, username=user)

    hs = broker_versions.get(SASL_HANDSHAKE_KEY)
    if hs is None or not hs[0] <= _HANDSHAKE_VERSION <= hs[1]:
        offered = "does not offer SaslHandshake" if hs is None else f"offers SaslHandshake v{hs[0]}-v{hs[1]}"
        raise fail(f"the broker {offered}; kafkad needs v1 (Kafka 1.0 or newer, with a SASL "
                   "listener on this port - is security_protocol right?)", UNSUPPORTED_VERSION)
    auth_version = _pick_authenticate_version(broker_versions)
    if auth_version is None:
        raise fail("the broker offers no SaslAuthenticate version in v0-v2", UNSUPPORTED_VERSION)

    password = resolve_password(sasl)

    response = await exchange(SaslHandshakeRequest(mechanism=mechanism), _HANDSHAKE_VERSION)
    if response.error_code:
        enabled = ", ".join(response.mechanisms) or "none"
        if response.error_code == UNSUPPORTED_SASL_MECHANISM:
            raise fail(f"the broker does not enable this mechanism (it enables: {enabled})",
                       UNSUPPORTED_SASL_MECHANISM)
        raise fail(f"SaslHandshake refused (broker enables: {enabled})", response.error_code)

    async def step(token: bytes) -> bytes:
        reply = await exchange(SaslAuthenticateRequest(auth_bytes=token), auth_version)
        if reply.error_code:
            said = reply.error_message or "no reason given"
            raise fail(f"the broker refused the credentials: {said}", reply.error_code)
        return reply.auth_bytes

    if mechanism == "PLAIN":
        await step(plain_initial_response(user, password))
    else:
        scram = ScramClient(mechanism, user, password, nonce=secrets.token_urlsafe(24))
        try:
            server_first = await step(scram.client_first())
            server_final = await step(scram.client_final(server_first))
            scram.verify_server_final(server_final)
        except ScramError as exc:
            raise fail(str(exc)) from None
    log.debug("SASL %s authentication as %r succeeded", mechanism, user)
