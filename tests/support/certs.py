"""Throwaway certificates for TLS tests, made at test time with the `openssl` command line.

Nothing here is checked in: every call writes a fresh CA and keys into the
directory it is given (a pytest tmp dir), and they expire after two days.
EC P-256 keys keep generation to a few milliseconds per key.

What `make_test_pki` produces:

- ``ca_file``: the test CA that signs everything below.
- ``server_cert``/``server_key``: a server certificate for ``localhost`` and
  ``127.0.0.1`` (subjectAltName), serverAuth.
- ``client_cert``/``client_key``: a client certificate (clientAuth) whose key
  is encrypted with the password in ``client_key_password_file``.
- ``wrong_host_cert``/``wrong_host_key``: signed by the same CA but only for
  ``broker.invalid``: a client connecting to 127.0.0.1 must refuse it.
- ``other_ca_file``: an unrelated CA, for "unknown CA" tests.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

_CURVE = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"]
_DAYS = "2"


def openssl_binary() -> str | None:
    """Path of the `openssl` command line tool, or None when it is not installed."""
    return shutil.which("openssl")


@dataclass(frozen=True)
class TestPki:
    directory: str
    ca_file: str
    server_cert: str
    server_key: str
    client_cert: str
    client_key: str
    client_key_password_file: str
    wrong_host_cert: str
    wrong_host_key: str
    other_ca_file: str

    __test__ = False  # not a pytest test class, despite the name


def _run(openssl: str, *args: str, cwd: str) -> None:
    proc = subprocess.run([openssl, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=30, stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed ({proc.returncode}): {proc.stderr.strip()}")


def _make_ca(openssl: str, d: str, name: str) -> tuple[str, str]:
    key, cert = f"{name}.key", f"{name}.pem"
    _run(openssl, "genpkey", *_CURVE, "-out", key, cwd=d)
    _run(openssl, "req", "-x509", "-new", "-key", key, "-out", cert, "-days", _DAYS,
         "-subj", f"/CN=kafkad test {name}",
         "-addext", "basicConstraints=critical,CA:TRUE",
         "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    return key, cert


def _make_leaf(openssl: str, d: str, name: str, ca: tuple[str, str], cn: str,
               extensions: str, key_password_file: str | None = None) -> tuple[str, str]:
    ca_key, ca_cert = ca
    key, csr, cert, ext = f"{name}.key", f"{name}.csr", f"{name}.pem", f"{name}.ext"
    if key_password_file is None:
        _run(openssl, "genpkey", *_CURVE, "-out", key, cwd=d)
        key_in = ["-key", key]
    else:
        # file: keeps the password off the command line (and out of `ps`).
        _run(openssl, "genpkey", *_CURVE, "-aes-128-cbc", "-pass", f"file:{key_password_file}",
             "-out", key, cwd=d)
        key_in = ["-key", key, "-passin", f"file:{key_password_file}"]
    _run(openssl, "req", "-new", *key_in, "-out", csr, "-subj", f"/CN={cn}", cwd=d)
    with open(os.path.join(d, ext), "w") as f:
        f.write(extensions)
    _run(openssl, "x509", "-req", "-in", csr, "-CA", ca_cert, "-CAkey", ca_key,
         "-CAcreateserial", "-out", cert, "-days", _DAYS, "-extfile", ext, cwd=d)
    return cert, key


def make_test_pki(directory: str) -> TestPki:
    """Write a fresh test CA, server, client and decoy certificates into `directory`."""
    openssl = openssl_binary()
    if openssl is None:
        raise RuntimeError("the openssl command line tool is not installed")
    d = os.path.abspath(directory)
    os.makedirs(d, exist_ok=True)
    ca = _make_ca(openssl, d, "ca")
    _, other_ca_cert = _make_ca(openssl, d, "other-ca")
    server_cert, server_key = _make_leaf(
        openssl, d, "server", ca, "localhost",
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    wrong_cert, wrong_key = _make_leaf(
        openssl, d, "wrong-host", ca, "broker.invalid",
        "subjectAltName=DNS:broker.invalid\nextendedKeyUsage=serverAuth\n")
    password_file = os.path.join(d, "client-key.password")
    with open(os.open(password_file, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "w") as f:
        f.write("client-key-" + os.urandom(8).hex() + "\n")
    client_cert, client_key = _make_leaf(
        openssl, d, "client", ca, "kafkad-client", "extendedKeyUsage=clientAuth\n",
        key_password_file=password_file)

    def p(name: str) -> str:
        return os.path.join(d, name)

    return TestPki(directory=d, ca_file=p(ca[1]), server_cert=p(server_cert),
                   server_key=p(server_key), client_cert=p(client_cert),
                   client_key=p(client_key), client_key_password_file=password_file,
                   wrong_host_cert=p(wrong_cert), wrong_host_key=p(wrong_key),
                   other_ca_file=p(other_ca_cert))
