"""The layering rule, checked on the source: who may import whom.

client_shim      -> pyzmq, msgpack, stdlib; never kafkad
kafkad.protocol  -> stdlib + codec libraries; no I/O, no clock, no other kafkad layer
kafkad.engine    -> kafkad.protocol (+ client_shim.schema); no I/O
everything else  -> the I/O shell, may import all of the above
"""

from __future__ import annotations

import ast
import pathlib
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

IO_MODULES = {"asyncio", "socket", "selectors", "threading", "zmq", "subprocess", "ssl",
              "multiprocessing", "signal", "select"}
CLOCK_CALLS = {"time", "monotonic", "perf_counter", "time_ns", "monotonic_ns"}


def _imports(path: pathlib.Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                pkg = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                mod = ".".join(pkg + ((node.module,) if node.module else ()))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
    return found


def _files(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def _top(mod: str) -> str:
    return mod.split(".")[0]


def test_client_shim_imports_only_pyzmq_msgpack_and_stdlib():
    allowed = {"zmq", "msgpack", "client_shim"} | set(sys.stdlib_module_names)
    bad = [f"{p.relative_to(ROOT)}:{ln}: {m}" for p in _files("client_shim")
           for ln, m in _imports(p) if _top(m) not in allowed]
    assert not bad, "client_shim must stand alone:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer,may_import", [
    ("kafkad/protocol", {"kafkad.protocol"}),
    ("kafkad/engine", {"kafkad.protocol", "kafkad.engine", "client_shim.schema"}),
])
def test_pure_layers_do_no_io(layer, may_import):
    bad = []
    for p in _files(layer):
        for ln, m in _imports(p):
            top = _top(m)
            if top in IO_MODULES:
                bad.append(f"{p.relative_to(ROOT)}:{ln}: imports {m} (I/O)")
            if top in ("kafkad", "client_shim") and not any(
                    m == ok or m.startswith(ok + ".") for ok in may_import):
                bad.append(f"{p.relative_to(ROOT)}:{ln}: imports {m} (wrong layer)")
            if top == "time" or top == "datetime":
                bad.append(f"{p.relative_to(ROOT)}:{ln}: imports {m} (pure layers take `now`)")
    assert not bad, "\n".join(bad)
