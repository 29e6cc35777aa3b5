"""The GPU benchmark, which CI cannot run on a GPU, runs on the CPU at tiny shapes so that it cannot rot:
every table it prints, for every method and batch size, and backends that agree with eager."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest
from paths import ROOT

pytestmark = pytest.mark.slow


def test_gpu_benchmark_runs_on_a_cpu_at_tiny_shapes():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run([sys.executable, "gpu_backends.py", "--device", "cpu", "--quick", "--dtypes", "float32"],
                          cwd=ROOT / "benchmarks", env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [line.split("|")[1:-1] for line in done.stdout.splitlines() if line.startswith("| ")]
    forwards = {cells[2].strip(): cells for cells in rows if len(cells) == 7 and cells[0].strip() == "2"}
    for backend in ("eager", "sdpa"):  # logits agree with eager (CLIP's scale bounds them by 100)
        assert float(forwards[backend][6]) < 1e-3, forwards[backend]
    assert "unavailable: FlashAttention needs a CUDA GPU" in done.stdout  # said, not a traceback
    timed = {(cells[1].strip(), cells[2].strip()) for cells in rows
             if len(cells) == 6 and cells[0].strip() == "tiny" and re.fullmatch(r" [0-9.]+ ", cells[3])}
    assert timed == {(method, n) for method in ("relevance", "legrad", "integrated_gradients", "occlusion")
                     for n in ("1", "2")}
