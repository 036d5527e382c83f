"""Launch a worker script under torchrun from a pytest test (multi-process, CPU/gloo)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]


def run_torchrun(script: Path, nproc: int, args: list[str], *, timeout: float = 300) -> str:
    """Run ``torchrun --standalone --nproc-per-node nproc script *args``; return its output.

    Fails the calling test with the combined output when a rank exits non-zero.
    ``--standalone`` picks a free rendezvous port, so tests never collide on one.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("OMP_NUM_THREADS", "1")  # 2-core CI: ranks must not oversubscribe
    env.setdefault("PYTHONWARNINGS", "ignore")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone",
           f"--nproc-per-node={nproc}", str(script), *args]
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise AssertionError(f"torchrun exited {proc.returncode}:\n{output[-8000:]}")
    return output
