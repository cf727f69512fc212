"""SASL client mechanisms as pure functions and a sans-IO state machine.

Nothing here touches a socket, a clock or a random source: the caller sends
the bytes these functions return (inside SaslAuthenticate requests) and feeds
back what the broker answered. The client nonce of SCRAM is a parameter, so a
test can replay the RFC vectors byte for byte.

PLAIN (RFC 4616)
    One message, ``authzid NUL authcid NUL password``; the broker answers with
    an empty token or an error. Kafka ignores the authzid; we send it empty.

SCRAM (RFC 5802, SHA-256/512 per RFC 7677; SHA-1 only for the RFC 5802 vector)

    state           input                         output / next state
    --------------  ----------------------------  -----------------------------
    INITIAL         client_first()                client-first -> FIRST_SENT
    FIRST_SENT      client_final(server_first)    client-final -> FINAL_SENT
    FINAL_SENT      verify_server_final(final)    None         -> DONE
    any             a check fails                 ScramError   -> FAILED

    What is checked on the way: the server nonce starts with ours and adds
    something; the salt is valid base64; the iteration count is an integer
    within [min_iterations, max_iterations] (Kafka brokers use 4096..16384);
    the server's final message carries either the signature we computed
    (compared in constant time) or an ``e=`` error, which becomes ScramError.

    Usernames are escaped as RFC 5802 "saslname" (``,`` -> ``=2C``, ``=`` ->
    ``=3D``). Like the Java client, the password is UTF-8 encoded as given
    (no SASLprep normalisation). Channel binding is not used (``n,,``).

No error message, ``repr`` or exception built here contains the password or
any value derived from it.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac

__all__ = [
    "SCRAM_MECHANISMS",
    "SUPPORTED_MECHANISMS",
    "SaslError",
    "ScramClient",
    "ScramError",
    "ScramState",
    "parse_scram_attributes",
    "plain_initial_response",
    "saslname_escape",
    "saslname_unescape",
    "scram_salted_password",
]

#: Hash behind each SCRAM mechanism name. SCRAM-SHA-1 is here only so the
#: RFC 5802 test vector can exercise the same code; Kafka does not offer it.
_SCRAM_HASHES: dict[str, str] = {
    "SCRAM-SHA-1": "sha1",
    "SCRAM-SHA-256": "sha256",
    "SCRAM-SHA-512": "sha512",
}

#: The SCRAM mechanisms Kafka brokers offer (KIP-84).
SCRAM_MECHANISMS: tuple[str, ...] = ("SCRAM-SHA-256", "SCRAM-SHA-512")

#: Every mechanism kafkad can use against a broker.
SUPPORTED_MECHANISMS: tuple[str, ...] = ("PLAIN",) + SCRAM_MECHANISMS

_GS2_HEADER = b"n,,"  # no channel binding, no authzid
_NONCE_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - {","}


class SaslError(Exception):
    """A SASL exchange cannot go on: bad input from the caller or the broker."""


class ScramError(SaslError):
    """A SCRAM step failed: malformed or dishonest server message, or misuse."""


def _require_str(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{name} must be str, not {type(value).__name__}")
    return value


def _utf8(name: str, value: str) -> bytes:
    """`value` in UTF-8; one that cannot be (a byte that is no text, as os.environ keeps
    it) raises a ValueError that names `name` and shows nothing of the value."""
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"{name} is not valid UTF-8 text") from None


def plain_initial_response(username: str, password: str, authzid: str = "") -> bytes:
    """The single PLAIN message: ``authzid NUL username NUL password`` in UTF-8."""
    for name, value in (("username", username), ("password", password), ("authzid", authzid)):
        _require_str(name, value)
        if "\0" in value:
            raise ValueError(f"{name} must not contain a NUL character")
    if not username:
        raise ValueError("username must not be empty")
    return b"\0".join(_utf8(name, part) for name, part in
                      (("authzid", authzid), ("username", username), ("password", password)))


def saslname_escape(name: str) -> str:
    """Escape a username for SCRAM: ``=`` becomes ``=3D`` and ``,`` becomes ``=2C``."""
    return name.replace("=", "=3D").replace(",", "=2C")


def saslname_unescape(name: str) -> str:
    """Undo `saslname_escape`; raise ScramError for a stray ``=``."""
    out = []
    i = 0
    while i < len(name):
        ch = name[i]
        if ch == "=":
            code = name[i + 1:i + 3]
            if code == "3D":
                out.append("=")
            elif code == "2C":
                out.append(",")
            else:
                raise ScramError(f"bad escape {name[i:i + 3]!r} in saslname")
            i += 3
        else:
            if ch == ",":
                raise ScramError("unescaped ',' in saslname")
            out.append(ch)
            i += 1
    return "".join(out)


def scram_salted_password(mechanism: str, password: str, salt: bytes, iterations: int) -> bytes:
    """Hi(password, salt, i) of RFC 5802: PBKDF2-HMAC with the mechanism's hash."""
    return hashlib.pbkdf2_hmac(_hash_name(mechanism), _utf8("password", password), salt, iterations)


def _hash_name(mechanism: str) -> str:
    try:
        return _SCRAM_HASHES[mechanism]
    except KeyError:
        raise ValueError(f"mechanism must be one of {', '.join(_SCRAM_HASHES)}, "
                         f"not {mechanism!r}") from None


def parse_scram_attributes(message: bytes, what: str) -> dict[str, str]:
    """Split ``a=value,b=value`` into a dict; ScramError if it is not that shape.

    Values may contain ``=`` (base64 padding), so only the first one splits.
    A repeated attribute is an error: which one would count would be a guess.
    """
    try:
        text = message.decode("utf-8")
    except UnicodeDecodeError:
        raise ScramError(f"{what} is not valid UTF-8") from None
    attrs: dict[str, str] = {}
    for part in text.split(","):
        if len(part) < 2 or part[1] != "=" or not part[0].isalpha():
            raise ScramError(f"{what} is malformed near {part[:16]!r}")
        if part[0] in attrs:
            raise ScramError(f"{what} repeats attribute {part[0]!r}")
        attrs[part[0]] = part[2:]
    return attrs


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ScramError(f"{what} is not valid base64") from None


class ScramState(enum.Enum):
    INITIAL = "initial"
    FIRST_SENT = "client-first sent"
    FINAL_SENT = "client-final sent"
    DONE = "done"
    FAILED = "failed"


# Which call is allowed in which state, and where it leads on success.
_TRANSITIONS: dict[tuple[ScramState, str], ScramState] = {
    (ScramState.INITIAL, "client_first"): ScramState.FIRST_SENT,
    (ScramState.FIRST_SENT, "client_final"): ScramState.FINAL_SENT,
    (ScramState.FINAL_SENT, "verify_server_final"): ScramState.DONE,
}


class ScramClient:
    """The client side of one SCRAM exchange (sans-IO).

    >>> c = ScramClient("SCRAM-SHA-256", "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    >>> c.client_first()
    b'n,,n=user,r=rOprNGfwEbeRWgbNEkqO'

    then ``c.client_final(server_first)`` and ``c.verify_server_final(server_final)``.
    """

    __slots__ = ("_mechanism", "_hash", "_username", "_password", "_nonce", "_min_iter",
                 "_max_iter", "_state", "_client_first_bare", "_server_signature")

    def __init__(self, mechanism: str, username: str, password: str, *, nonce: str,
                 min_iterations: int = 4096, max_iterations: int = 1_000_000) -> None:
        self._hash = _hash_name(mechanism)
        self._mechanism = mechanism
        self._username = _require_str("username", username)
        self._password = _require_str("password", password)
        if not username:
            raise ValueError("username must not be empty")
        _require_str("nonce", nonce)
        if not nonce or not set(nonce) <= _NONCE_CHARS:
            raise ValueError("nonce must be non-empty printable ASCII without ','")
        if not 1 <= min_iterations <= max_iterations:
            raise ValueError("min_iterations and max_iterations must satisfy "
                             "1 <= min_iterations <= max_iterations")
        self._nonce = nonce
        self._min_iter = min_iterations
        self._max_iter = max_iterations
        self._state = ScramState.INITIAL
        self._client_first_bare = b""
        self._server_signature = b""

    def __repr__(self) -> str:
        return f"<ScramClient {self._mechanism} user={self._username!r} state={self._state.value}>"

    @property
    def mechanism(self) -> str:
        return self._mechanism

    @property
    def state(self) -> ScramState:
        return self._state

    def _step(self, call: str) -> ScramState:
        target = _TRANSITIONS.get((self._state, call))
        if target is None:
            raise ScramError(f"{call}() is not allowed in state {self._state.value!r}")
        return target

    def _fail(self, message: str) -> ScramError:
        self._state = ScramState.FAILED
        # Drop what could help an attacker who later gets hold of this object.
        self._server_signature = b""
        return ScramError(message)

    def client_first(self) -> bytes:
        """The client-first message: GS2 header, escaped username, our nonce."""
        target = self._step("client_first")
        user = _utf8("username", saslname_escape(self._username))
        self._client_first_bare = b"n=" + user + b",r=" + self._nonce.encode("ascii")
        self._state = target
        return _GS2_HEADER + self._client_first_bare

    def client_final(self, server_first: bytes) -> bytes:
        """Check the server-first message and answer with our proof."""
        target = self._step("client_final")
        if not isinstance(server_first, (bytes, bytearray, memoryview)):
            raise TypeError(f"server_first must be bytes, not {type(server_first).__name__}")
        server_first = bytes(server_first)
        try:
            attrs = parse_scram_attributes(server_first, "server-first message")
        except ScramError as exc:
            raise self._fail(str(exc)) from None
        if "e" in attrs:
            raise self._fail(f"server refused the exchange: {attrs['e']}")
        if "m" in attrs:
            raise self._fail("server-first message demands an unsupported extension")
        missing = [k for k in ("r", "s", "i") if k not in attrs]
        if missing:
            raise self._fail(f"server-first message lacks attribute(s) {', '.join(missing)}")
        nonce = attrs["r"]
        if not nonce.startswith(self._nonce) or len(nonce) == len(self._nonce):
            raise self._fail("server nonce does not extend the client nonce")
        if not set(nonce) <= _NONCE_CHARS:
            raise self._fail("server nonce has characters outside printable ASCII")
        try:
            salt = _b64decode(attrs["s"], "salt")
        except ScramError as exc:
            raise self._fail(str(exc)) from None
        if not salt:
            raise self._fail("salt is empty")
        raw_iter = attrs["i"]
        if not raw_iter.isdigit() or not raw_iter.isascii():
            raise self._fail(f"iteration count {raw_iter[:16]!r} is not a positive integer")
        iterations = int(raw_iter)
        if not self._min_iter <= iterations <= self._max_iter:
            raise self._fail(f"iteration count {iterations} is outside "
                             f"[{self._min_iter}, {self._max_iter}]")

        salted = scram_salted_password(self._mechanism, self._password, salt, iterations)
        client_key = self._hmac(salted, b"Client Key")
        stored_key = hashlib.new(self._hash, client_key).digest()
        without_proof = b"c=" + base64.b64encode(_GS2_HEADER) + b",r=" + nonce.encode("ascii")
        auth_message = self._client_first_bare + b"," + server_first + b"," + without_proof
        client_signature = self._hmac(stored_key, auth_message)
        proof = bytes(a ^ b for a, b in zip(client_key, client_signature))
        server_key = self._hmac(salted, b"Server Key")
        self._server_signature = self._hmac(server_key, auth_message)
        self._password = ""  # not needed any more; do not keep it around
        self._state = target
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify_server_final(self, server_final: bytes) -> None:
        """Check the server's signature; ScramError if it is wrong or an error came back."""
        target = self._step("verify_server_final")
        if not isinstance(server_final, (bytes, bytearray, memoryview)):
            raise TypeError(f"server_final must be bytes, not {type(server_final).__name__}")
        try:
            attrs = parse_scram_attributes(bytes(server_final), "server-final message")
        except ScramError as exc:
            raise self._fail(str(exc)) from None
        if "e" in attrs:
            raise self._fail(f"server refused the exchange: {attrs['e']}")
        if "v" not in attrs:
            raise self._fail("server-final message lacks the server signature")
        try:
            signature = _b64decode(attrs["v"], "server signature")
        except ScramError as exc:
            raise self._fail(str(exc)) from None
        if not hmac.compare_digest(signature, self._server_signature):
            raise self._fail("server signature does not match: the server does not "
                             "know this user's credentials")
        self._state = target

    def _hmac(self, key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, self._hash).digest()
