"""The layering rule, checked on the source: who may import whom.

client_shim      -> pyzmq, msgpack, stdlib; never kafkad
kafkad.protocol  -> listed pure stdlib modules + codec libraries; no I/O, no clock,
                    no other kafkad layer
kafkad.engine    -> listed pure stdlib modules + kafkad.protocol (+ client_shim.schema);
                    no I/O, no clock
everything else  -> the I/O shell, may import all of the above

The pure layers are checked against an allow-list, not a deny-list: a deny-list
always misses one (`_socket`, `http.client`, `sched`, a third-party client).
Three checks: the static imports of every file, dynamic imports (`__import__`,
`import_module`, `exec`/`eval`) and clock calls through allowed modules
(`uuid.uuid1()`), and what importing each layer in a fresh interpreter really
loads beyond what its allowed dependencies load themselves (catches I/O pulled
in through another kafkad or client_shim module; not modules such as socket
that crc32c already loads, which only the static check can catch).
"""

from __future__ import annotations

import ast
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# Standard library modules the pure layers may import, by full name (so
# `logging` does not admit `logging.handlers`): pure computation only. Add a
# module here only if importing and using it does no I/O and reads no clock. `logging` is the one exception: the engine logs, and handlers are the
# shell's choice (it imports `threading`, which is loaded before the
# fresh-interpreter check takes its snapshot).
PURE_STDLIB = {
    "__future__", "abc", "base64", "binascii", "collections", "dataclasses", "enum",
    "hashlib", "hmac", "itertools", "logging", "random", "re", "struct", "types",
    "typing", "uuid", "zlib",
}
# Third-party modules kafkad.protocol may import (compression and checksums).
CODECS = {"lz4.frame", "snappy", "zstandard", "crc32c"}

# client_shim.schema is allowed by DESIGN.md, but importing it runs
# client_shim/__init__.py, which loads zmq and threading: the fresh-interpreter
# check below fails if the engine ever uses it (it does not today).
LAYERS = {
    "kafkad/protocol": (PURE_STDLIB | CODECS, {"kafkad.protocol"}),
    "kafkad/engine": (PURE_STDLIB, {"kafkad.protocol", "kafkad.engine", "client_shim.schema"}),
}

# Names that read a clock when called, whatever module they come from
# (`time.monotonic()`, `datetime.now()`, `uuid.uuid1()`, `timeit.default_timer()`).
CLOCK_CALLS = {"time", "monotonic", "perf_counter", "time_ns", "monotonic_ns",
               "process_time", "thread_time", "default_timer", "now", "utcnow", "today",
               "uuid1"}
# Ways to import or run code the static import check cannot see.
DYNAMIC = {"__import__", "import_module", "exec", "eval", "__builtins__", "builtins"}

# Modules whose presence after importing a pure layer means it can do I/O.
IO_MODULES = {"_socket", "socket", "ssl", "select", "selectors", "asyncio", "threading",
              "_thread", "zmq", "subprocess", "multiprocessing", "concurrent", "signal",
              "mmap", "fcntl", "http", "urllib", "socketserver", "queue", "os", "io",
              "confluent_kafka", "time", "datetime", "sched", "timeit"}


def _imports(path: pathlib.Path) -> list[tuple[int, str, list[str]]]:
    """(line, module, names imported from it) for every import statement."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name, []) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative import: resolve against the package
                pkg = path.relative_to(ROOT).with_suffix("").parts[:-node.level]
                mod = ".".join(pkg + ((node.module,) if node.module else ()))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod, [a.name for a in node.names]))
    return found


def _files(package: str):
    return sorted((ROOT / package).rglob("*.py"))


def _top(mod: str) -> str:
    return mod.split(".")[0]


def _within(mod: str, prefixes) -> bool:
    return any(mod == ok or mod.startswith(ok + ".") for ok in prefixes)


def _module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def test_client_shim_imports_only_pyzmq_msgpack_and_stdlib():
    allowed = {"zmq", "msgpack", "client_shim"} | set(sys.stdlib_module_names)
    bad = [f"{p.relative_to(ROOT)}:{ln}: {m}" for p in _files("client_shim")
           for ln, m, _ in _imports(p) if _top(m) not in allowed]
    assert not bad, "client_shim must stand alone:\n" + "\n".join(bad)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_pure_layers_import_only_what_they_are_allowed(layer):
    externals, may_import = LAYERS[layer]
    bad = []
    for p in _files(layer):
        for ln, m, names in _imports(p):
            where = f"{p.relative_to(ROOT)}:{ln}"
            if _top(m) in ("kafkad", "client_shim"):
                if not _within(m, may_import):
                    bad.append(f"{where}: imports {m} (wrong layer)")
            elif m not in externals:
                bad.append(f"{where}: imports {m} (not on the pure layer's allow-list)")
            for name in names:
                if name in CLOCK_CALLS or name in DYNAMIC:
                    bad.append(f"{where}: imports {name} from {m} (clock or dynamic import)")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_pure_layers_read_no_clock_and_import_nothing_dynamically(layer):
    bad = []
    for p in _files(layer):
        for node in ast.walk(ast.parse(p.read_text(), filename=str(p))):
            where = f"{p.relative_to(ROOT)}:{getattr(node, 'lineno', '?')}"
            if isinstance(node, ast.Name) and node.id in DYNAMIC:
                bad.append(f"{where}: uses {node.id}")
            elif isinstance(node, ast.Attribute) and node.attr in DYNAMIC:
                bad.append(f"{where}: uses .{node.attr}")
            elif isinstance(node, ast.Call):
                f = node.func
                name = f.attr if isinstance(f, ast.Attribute) else getattr(f, "id", None)
                if name in CLOCK_CALLS:
                    bad.append(f"{where}: calls {name}() (pure layers take `now`)")
    assert not bad, "\n".join(bad)


# Run in a fresh interpreter: import every module the pure layers may import
# (crc32c alone loads socket, threading and tempfile, and logging loads
# threading), snapshot sys.modules, import every module of the layer, print
# what was loaded after the snapshot. What the allowed modules load themselves
# (socket, select, threading, time, os...) is in the snapshot, so this check
# cannot see a layer import those: the static checks above catch a direct
# import of them. It catches what comes in through anything else: another
# kafkad layer, client_shim (zmq), asyncio, ssl, a third-party package.
_PROBE = """
import importlib, sys
sys.path.insert(0, sys.argv[1])
for dep in sys.argv[2].split():
    importlib.import_module(dep)
before = set(sys.modules)
for mod in sys.argv[3].split():
    importlib.import_module(mod)
import kafkad
print(kafkad.__file__)
print(*sorted(set(sys.modules) - before), sep="\\n")
"""


@pytest.mark.parametrize("layer", sorted(LAYERS))
def test_importing_a_pure_layer_loads_no_io_module(layer):
    _, may_import = LAYERS[layer]
    # The engine reaches the codec libraries through kafkad.protocol.
    deps = PURE_STDLIB | CODECS
    mods = [_module_name(p) for p in _files(layer)]
    out = subprocess.run(
        [sys.executable, "-c", _PROBE, str(ROOT), " ".join(sorted(deps)), " ".join(mods)],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    kafkad_file, *loaded = out.stdout.split()
    assert pathlib.Path(kafkad_file).is_relative_to(ROOT), kafkad_file  # not another checkout
    strays = [m for m in loaded if not (m == "kafkad" or _within(m, may_import))]
    io = sorted(m for m in strays if _top(m) in IO_MODULES)
    assert not strays, (
        f"importing {layer} loads modules beyond its allowed dependencies "
        f"(I/O among them: {io or 'none'}):\n" + "\n".join(strays))
