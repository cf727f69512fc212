"""A bounded atheris (libFuzzer) campaign against the daemon's frame decoder.

Runs the harness in a subprocess for a fixed number of inputs, starting from
a corpus of valid frames of every kind; a crash makes libFuzzer exit non-zero
and print the input. The hypothesis fuzz in tests/reliability/test_bad_input.py
covers the same decoder with structure-aware inputs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys

import pytest

RUNS = 30_000


@pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                    reason="atheris is not installed (pip install atheris; it ships manylinux wheels)")
def test_frame_decoder_survives_coverage_guided_fuzzing(tmp_path):
    from tests.fuzz.fuzz_ipc_decoder import SEEDS

    corpus = tmp_path / "corpus"
    corpus.mkdir()
    for i, seed in enumerate(SEEDS):
        (corpus / f"seed-{i}").write_bytes(seed)
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-m", "tests.fuzz.fuzz_ipc_decoder", f"-runs={RUNS}", "-max_len=4096",
         "-seed=1", f"-artifact_prefix={tmp_path}/", str(corpus)],
        cwd=root, capture_output=True, text=True, timeout=240,
    )
    tail = (proc.stdout + proc.stderr)[-3000:]
    assert proc.returncode == 0, f"libFuzzer found a crashing input:\n{tail}"
    assert f"Done {RUNS} runs" in proc.stderr, tail
