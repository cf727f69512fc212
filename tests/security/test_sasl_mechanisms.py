"""kafkad.protocol.sasl: PLAIN and the SCRAM client, against RFC vectors and a real server side.

The server side is the one in tests/support/saslgateway.py (the same code
librdkafka is checked against), so a round trip here means kafkad's client
and a server that verifies RFC 5802 proofs agree.
"""

from __future__ import annotations

import base64
import hmac

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kafkad.protocol.sasl import (
    ScramClient,
    ScramError,
    ScramState,
    plain_initial_response,
    saslname_escape,
    saslname_unescape,
)
from tests.support.saslgateway import AuthFailed, ScramServer, make_scram_credential

# RFC 7677 section 3 (SCRAM-SHA-256) and RFC 5802 section 5 (SCRAM-SHA-1).
RFC_VECTORS = [
    pytest.param(
        "SCRAM-SHA-256", "rOprNGfwEbeRWgbNEkqO",
        b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=", id="rfc7677-sha256"),
    pytest.param(
        "SCRAM-SHA-1", "fyko+d2lbbFgONRv9qkxdawL",
        b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=", id="rfc5802-sha1"),
]


@pytest.mark.parametrize("mechanism,nonce,server_first,client_final,server_final", RFC_VECTORS)
def test_scram_client_reproduces_the_rfc_exchange(mechanism, nonce, server_first, client_final,
                                                  server_final):
    client = ScramClient(mechanism, "user", "pencil", nonce=nonce)
    assert client.client_first() == b"n,,n=user,r=" + nonce.encode()
    assert client.client_final(server_first) == client_final
    client.verify_server_final(server_final)
    assert client.state is ScramState.DONE


def _at_final(mechanism="SCRAM-SHA-256", nonce="rOprNGfwEbeRWgbNEkqO"):
    vector = next(v for v in RFC_VECTORS if v.values[0] == mechanism)
    client = ScramClient(mechanism, "user", "pencil", nonce=nonce)
    client.client_first()
    client.client_final(vector.values[2])
    return client


def test_a_forged_server_signature_is_refused():
    client = _at_final()
    forged = base64.b64encode(bytes(32)).decode()
    with pytest.raises(ScramError, match="server signature does not match"):
        client.verify_server_final(f"v={forged}".encode())
    assert client.state is ScramState.FAILED


def test_a_server_error_in_the_final_message_is_reported():
    client = _at_final()
    with pytest.raises(ScramError, match="invalid-proof"):
        client.verify_server_final(b"e=invalid-proof")


@pytest.mark.parametrize("server_first,problem", [
    (b"r=someoneelse123,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "does not extend the client nonce"),
    (b"r=rOprNGfwEbeRWgbNEkqO,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "does not extend the client nonce"),
    (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4095", "outside"),
    (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=-1", "not a positive integer"),
    (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4k", "not a positive integer"),
    (b"r=rOprNGfwEbeRWgbNEkqOxyz,s=!!!,i=4096", "salt is not valid base64"),
    (b"r=rOprNGfwEbeRWgbNEkqOxyz,i=4096", r"lacks attribute\(s\) s"),
    (b"m=ext,r=rOprNGfwEbeRWgbNEkqOxyz,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "extension"),
    (b"e=unknown-user", "server refused the exchange: unknown-user"),
    (b"garbage", "malformed"),
    (b"r=a,r=b,s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096", "repeats"),
])
def test_bad_server_first_messages_are_refused(server_first, problem):
    client = ScramClient("SCRAM-SHA-256", "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO")
    client.client_first()
    with pytest.raises(ScramError, match=problem):
        client.client_final(server_first)
    assert client.state is ScramState.FAILED


def test_iteration_bounds_are_configurable():
    client = ScramClient("SCRAM-SHA-256", "user", "pencil", nonce="rOprNGfwEbeRWgbNEkqO",
                         max_iterations=4000, min_iterations=1)
    client.client_first()
    with pytest.raises(ScramError, match=r"4096 is outside \[1, 4000\]"):
        client.client_final(RFC_VECTORS[0].values[2])


def test_calls_out_of_order_are_refused():
    client = ScramClient("SCRAM-SHA-512", "user", "pencil", nonce="abc")
    with pytest.raises(ScramError, match="not allowed in state 'initial'"):
        client.client_final(b"r=abcdef,s=AAAA,i=4096")
    client.client_first()
    with pytest.raises(ScramError, match="client_first"):
        client.client_first()


@pytest.mark.parametrize("kwargs,error", [
    ({"mechanism": "SCRAM-MD5"}, ValueError),
    ({"nonce": "has,comma"}, ValueError),
    ({"nonce": ""}, ValueError),
    ({"username": ""}, ValueError),
    ({"password": b"bytes"}, TypeError),
])
def test_bad_arguments_name_themselves(kwargs, error):
    args = {"mechanism": "SCRAM-SHA-256", "username": "u", "password": "p", "nonce": "n", **kwargs}
    name = next(iter(kwargs))
    with pytest.raises(error, match=name):
        ScramClient(args.pop("mechanism"), args.pop("username"), args.pop("password"), **args)


def test_no_repr_or_error_shows_the_password():
    secret = "Tr0ub4dor&3-unique"
    client = ScramClient("SCRAM-SHA-256", "user", secret, nonce="abc")
    assert secret not in repr(client)
    client.client_first()
    client.client_final(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=4096")
    with pytest.raises(ScramError) as info:
        client.verify_server_final(b"v=" + base64.b64encode(b"x" * 32))
    assert secret not in str(info.value) and secret not in repr(client)


def test_a_password_that_is_not_text_is_refused_without_showing_it():
    # os.environ keeps a byte that is not UTF-8 as a lone surrogate: encoding it failed
    # with a UnicodeEncodeError naming the character and its position (logged).
    secret = "s3cr" + b"\xe9t".decode("utf-8", "surrogateescape")
    for call in (lambda: plain_initial_response("alice", secret), lambda: _scram_final(secret)):
        with pytest.raises(ValueError) as info:
            call()
        assert type(info.value) is ValueError and str(info.value) == "password is not valid UTF-8 text"
        assert info.value.__cause__ is None and info.value.__suppress_context__


def _scram_final(password):
    client = ScramClient("SCRAM-SHA-256", "user", password, nonce="abc")
    client.client_first()
    return client.client_final(b"r=abcdef,s=QSXCR+Q6sek8bf92,i=4096")


@pytest.mark.parametrize("name,escaped", [("a,b", "a=2Cb"), ("x=y", "x=3Dy"), ("=,", "=3D=2C"),
                                          ("plain", "plain")])
def test_saslname_escaping(name, escaped):
    assert saslname_escape(name) == escaped
    assert saslname_unescape(escaped) == name


@pytest.mark.parametrize("bad", ["a=2", "a=41", "a,b"])
def test_saslname_unescape_refuses_stray_characters(bad):
    with pytest.raises(ScramError):
        saslname_unescape(bad)


def test_plain_message_layout_and_checks():
    assert plain_initial_response("alice", "pw") == b"\0alice\0pw"
    assert plain_initial_response("alice", "pw", authzid="alice") == b"alice\0alice\0pw"
    with pytest.raises(ValueError, match="password"):
        plain_initial_response("alice", "p\0w")
    with pytest.raises(ValueError, match="username"):
        plain_initial_response("", "pw")


# --- round trips against the verifying server ------------------------------------------

names = st.text(st.characters(blacklist_categories=("Cs",)), min_size=1, max_size=20)
passwords = st.text(st.characters(blacklist_categories=("Cs",)), max_size=30)
nonces = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E, blacklist_characters=","),
                 min_size=1, max_size=32)


def _run(mechanism, user, client_password, server_password, nonce, server_nonce="srv+NONCE/1"):
    cred = make_scram_credential(mechanism, server_password, b"salt-" + user.encode()[:8], 4096)
    server = ScramServer(mechanism, {user: cred}, server_nonce)
    client = ScramClient(mechanism, user, client_password, nonce=nonce)
    server_first, done = server.respond(client.client_first())
    assert not done
    server_final, done = server.respond(client.client_final(server_first))
    assert done
    client.verify_server_final(server_final)
    return client, server


@settings(max_examples=25, deadline=None)
@given(mechanism=st.sampled_from(["SCRAM-SHA-256", "SCRAM-SHA-512"]), user=names,
       password=passwords, nonce=nonces)
def test_round_trip_with_the_right_password(mechanism, user, password, nonce):
    client, server = _run(mechanism, user, password, password, nonce)
    assert client.state is ScramState.DONE
    assert server.username == user


@settings(max_examples=15, deadline=None)
@given(mechanism=st.sampled_from(["SCRAM-SHA-256", "SCRAM-SHA-512"]), user=names,
       password=passwords, other=passwords, nonce=nonces)
def test_round_trip_with_a_wrong_password_fails_at_the_server(mechanism, user, password, other,
                                                              nonce):
    if password == other:
        other += "x"
    with pytest.raises(AuthFailed, match="bad password"):
        _run(mechanism, user, other, password, nonce)


def test_a_server_that_does_not_know_the_password_is_caught():
    # An impostor accepts any proof and signs with keys derived from a guessed
    # password (same salt and iteration count): the client must notice.
    real = make_scram_credential("SCRAM-SHA-256", "right", b"salty", 4096)
    guessed = make_scram_credential("SCRAM-SHA-256", "guess", b"salty", 4096)
    server = ScramServer("SCRAM-SHA-256", {"u": real}, "srv")
    client = ScramClient("SCRAM-SHA-256", "u", "right", nonce="cli")
    client_first = client.client_first()
    server_first, _ = server.respond(client_first)
    client_final = client.client_final(server_first)
    without_proof = client_final.rpartition(b",p=")[0]
    auth_message = client_first[3:] + b"," + server_first + b"," + without_proof
    signature = hmac.new(guessed.server_key, auth_message, "sha256").digest()
    with pytest.raises(ScramError, match="server signature does not match"):
        client.verify_server_final(b"v=" + base64.b64encode(signature))
    # ... while the real server's answer is accepted by a fresh client.
    _run("SCRAM-SHA-256", "u", "right", "right", "cli")
