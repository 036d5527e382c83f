"""slurm/submit.sh's advance signal on the local SLURM cluster: without --signal it asks
`maestro plan --stop-lead` for the recipe's stop lead time and submits with it; a
recipe that cannot run on the nodes asked for is refused before anything is queued.
Jobs are submitted held and cancelled: nothing runs."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
STATE = Path(os.environ.get("MAESTRO_SLURM_DIR", "/tmp/maestro-slurm"))
CONF = STATE / "slurm.conf"

pytestmark = [pytest.mark.slurm, pytest.mark.skipif(
    shutil.which("sbatch") is None or not CONF.is_file(),
    reason="no local SLURM cluster (bash slurm/local_cluster.sh start 2)")]


def _env(**extra: str) -> dict:
    return dict(os.environ, SLURM_CONF=str(CONF), MAESTRO_PYTHON=str(ROOT / ".venv/bin/python"),
                MAESTRO_NPROC_PER_NODE="1", **extra)


def _submit(*args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", "slurm/submit.sh", "--hold", *args], cwd=ROOT,
                          env=_env(**env), capture_output=True, text=True, timeout=120)


def _queued(job: str) -> bool:
    out = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], env=_env(),
                         capture_output=True, text=True).stdout
    return job in out.split()


def _cancel(job: str) -> None:
    subprocess.run(["scancel", job], env=_env(), check=True)


def test_signal_from_the_recipe_and_a_given_signal_kept(tmp_path):
    recipe = ["recipes/tiny_cpu.yaml", f"run.output_dir={tmp_path / 'run'}"]
    proc = _submit("--nodes=2", "--", *recipe, MAESTRO_STEP_SECONDS="30")
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    try:
        assert _queued(job)
        # one step of 30 s + a tiny checkpoint (< 1 s to write and hash) + the 60 s margin
        assert "advance signal: --signal=B:USR1@91 " in proc.stderr, proc.stderr
    finally:
        _cancel(job)
    proc = _submit("--nodes=2", "--signal=B:USR1@300", "--", *recipe)
    assert proc.returncode == 0, proc.stderr
    job = proc.stdout.strip().split(";")[0]
    _cancel(job)
    assert "advance signal" not in proc.stderr


def test_a_recipe_that_does_not_fit_the_nodes_is_refused_before_queueing(tmp_path):
    before = subprocess.run(["squeue", "-h", "-o", "%i"], env=_env(), capture_output=True,
                            text=True).stdout.split()
    proc = _submit("--nodes=1", "--", "recipes/qwen3_8b_maestro.yaml",
                   f"run.output_dir={tmp_path / 'run'}")
    assert proc.returncode != 0 and proc.stdout.strip() == ""
    assert "error:" in proc.stderr and "tensor_parallel" in proc.stderr, proc.stderr
    after = subprocess.run(["squeue", "-h", "-o", "%i"], env=_env(), capture_output=True,
                           text=True).stdout.split()
    assert after == before
