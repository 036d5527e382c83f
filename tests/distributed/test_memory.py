"""The `memory:` options change what is kept, never the numbers (CPU, gloo).

Activation recomputation (none | selective | full) gives bitwise the same loss,
logprobs and gradients, and really recomputes (forward-hook counts); overlapping the
data-parallel gradient reduction with backward gives bitwise the same losses and
parameters over three steps, with the reductions started by the backward hooks. See
memory_worker.py for what each run checks.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from launch import run_torchrun

pytestmark = pytest.mark.distributed

HERE = Path(__file__).resolve().parent


def test_recompute_gives_identical_gradients_and_reruns_the_layers():
    output = run_torchrun(HERE / "memory_worker.py", 1, ["recompute"])
    assert "MEMORY_RECOMPUTE_OK" in output
    assert "recompute=full2" in output  # every setting ran


def test_overlapped_grad_reduce_gives_identical_steps_at_dp2():
    output = run_torchrun(HERE / "memory_worker.py", 2, ["overlap"])
    assert "MEMORY_OVERLAP_OK" in output
