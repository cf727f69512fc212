"""The systemd unit, sysusers and tmpfiles snippets, checked by systemd's own tools."""

from __future__ import annotations

import configparser
import os
import pathlib
import shutil
import stat
import subprocess
import sys

import pytest

from tests.service.conftest import ROOT

UNITS = ROOT / "systemd"


def _tool(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        pytest.skip(f"{name} is not installed (Debian package systemd)")
    return path


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # keys are case-sensitive in unit files
    parser.read(UNITS / "kafkad.service")
    return parser


def _seconds(value: str) -> float:
    assert value.endswith("s") and value[:-1].isdigit(), f"write seconds as '45s', not {value!r}"
    return float(value[:-1])


def test_systemd_analyze_verify_prints_nothing(tmp_path):
    """`systemd-analyze verify` exits 0 even on unknown keys, so any output fails the test."""
    tool = _tool("systemd-analyze")
    kafkad_bin = pathlib.Path(sys.executable).with_name("kafkad")
    if not kafkad_bin.exists():
        pytest.skip(f"no kafkad console script at {kafkad_bin} to stand in for /usr/bin/kafkad")
    text = (UNITS / "kafkad.service").read_text()
    assert "ExecStart=/usr/bin/kafkad run " in text
    # verify checks that ExecStart's program exists: point it at the installed script.
    unit = tmp_path / "kafkad.service"
    unit.write_text(text.replace("/usr/bin/kafkad", str(kafkad_bin)))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert (r.returncode, r.stdout + r.stderr) == (0, "")


def test_verify_would_catch_a_typo(tmp_path):
    """The check above can fail: a misspelt key produces output."""
    tool = _tool("systemd-analyze")
    kafkad_bin = pathlib.Path(sys.executable).with_name("kafkad")
    if not kafkad_bin.exists():
        pytest.skip(f"no kafkad console script at {kafkad_bin} to stand in for /usr/bin/kafkad")
    text = (UNITS / "kafkad.service").read_text().replace("/usr/bin/kafkad", str(kafkad_bin))
    unit = tmp_path / "kafkad.service"
    unit.write_text(text.replace("KillMode=mixed", "KilMode=mixed"))
    r = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60,
                       cwd=tmp_path)
    assert "KilMode" in r.stdout + r.stderr


def test_service_settings_the_daemon_relies_on():
    svc = _unit()["Service"]
    assert svc["Type"] == "notify"
    assert svc["NotifyAccess"] == "main"
    assert svc["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert svc["Restart"] == "on-failure"
    assert svc["KillMode"] == "mixed"
    assert svc["StateDirectory"] == "kafkad"
    assert "RuntimeDirectory" not in svc, "RuntimeDirectory= deletes the socket on every stop"
    assert svc["ReadWritePaths"] == "/run/kafkad"
    assert svc["ProtectSystem"] == "strict"
    assert svc["NoNewPrivileges"] == "yes" and svc["PrivateTmp"] == "yes"
    assert svc["User"] == "kafkad" and svc["SupplementaryGroups"] == "kafkad-clients"
    # The stop timeout must leave room for the whole drain plus a margin.
    from kafkad.config import ShutdownConfig
    assert _seconds(svc["TimeoutStopSec"]) >= ShutdownConfig().drain_timeout_s + 10
    assert _seconds(svc["WatchdogSec"]) >= 10


def test_sysusers_and_tmpfiles_create_what_the_unit_needs(tmp_path):
    """Apply both snippets to an empty root: users, groups and the socket directory appear."""
    sysusers, tmpfiles = _tool("systemd-sysusers"), _tool("systemd-tmpfiles")
    if os.geteuid() != 0:
        pytest.skip("systemd-tmpfiles --root can only chown as root")
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    r = subprocess.run([sysusers, f"--root={root}", str(UNITS / "kafkad.sysusers")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    users = {line.split(":")[0]: line.split(":") for line in (root / "etc/passwd").read_text().splitlines()}
    groups = {line.split(":")[0]: line.split(":") for line in (root / "etc/group").read_text().splitlines()}
    assert "kafkad" in users and "kafkad" in groups and "kafkad-clients" in groups
    assert groups["kafkad-clients"][3].split(",") == ["kafkad"]  # the daemon may chgrp its socket
    r = subprocess.run([tmpfiles, f"--root={root}", "--create", str(UNITS / "kafkad.tmpfiles")],
                       capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    st = (root / "run/kafkad").stat()
    assert stat.S_IMODE(st.st_mode) == 0o2750
    assert st.st_uid == int(users["kafkad"][2])
    assert st.st_gid == int(groups["kafkad-clients"][2])


def test_example_config_paths_match_the_unit():
    from kafkad.config import DEFAULT_CONFIG_PATH, DEFAULT_ENDPOINT, SpoolConfig
    svc = _unit()["Service"]
    assert f"--config {DEFAULT_CONFIG_PATH}" in svc["ExecStart"]
    assert DEFAULT_ENDPOINT.startswith("ipc://" + svc["ReadWritePaths"] + "/")
    assert SpoolConfig().path.startswith("/var/lib/" + svc["StateDirectory"] + "/")


def test_hardening_exposure_stays_low(tmp_path):
    """systemd-analyze security rates the unit; 2.0 of 10 is the ceiling this unit keeps under."""
    tool = _tool("systemd-analyze")
    kafkad_bin = pathlib.Path(sys.executable).with_name("kafkad")
    if not kafkad_bin.exists():
        pytest.skip(f"no kafkad console script at {kafkad_bin} to stand in for /usr/bin/kafkad")
    unit = tmp_path / "kafkad.service"
    unit.write_text((UNITS / "kafkad.service").read_text().replace("/usr/bin/kafkad", str(kafkad_bin)))
    r = subprocess.run([tool, "security", "--offline=true", "--threshold=20", str(unit)],
                       capture_output=True, text=True, timeout=60, cwd=tmp_path)
    if "--offline" in r.stderr and "unrecognized" in r.stderr:
        pytest.skip("this systemd-analyze has no --offline (systemd < 250)")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr
