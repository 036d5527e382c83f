"""Run the `maestro` command line in a fresh process, as a user would."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_cli(*args: str, nproc: int = 0, timeout: int = 900) -> str:
    """`python -m maestro_megatron.cli ARGS` (under torchrun with `nproc` ranks when
    nproc > 0) with the console a user gets by default (no verbose switches,
    OMP_NUM_THREADS=1); asserts exit 0, returns stdout + stderr."""
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for name in ("PYTHONWARNINGS", "MAESTRO_VERBOSE", "VLLM_LOGGING_LEVEL",
                 "VLLM_LOGGING_CONFIG_PATH"):
        env.pop(name, None)
    cli = [sys.executable, "-m", "maestro_megatron.cli"]
    if nproc:
        # -m, not the file: run as a script, cli.py's folder would shadow `megatron`
        cli = [sys.executable, "-m", "torch.distributed.run", "--standalone",
               f"--nproc-per-node={nproc}", "-m", "maestro_megatron.cli"]
    proc = subprocess.run([*cli, *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    return out
