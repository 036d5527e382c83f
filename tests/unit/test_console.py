"""The main job's console: quiet filters (Python warnings, vLLM's log filter), the
CPU-compat `.grad` read, and the end-of-run summary."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

from maestro_megatron.logs import is_verbose
from maestro_megatron.rollout.vllm_logging import CONFIG_FILE, HarmlessFilter
from maestro_megatron.trainer.summary import format_summary


def _record(message: str, level: int = logging.WARNING) -> logging.LogRecord:
    return logging.LogRecord("vllm.x", level, "x.py", 1, message, None, None)


def test_vllm_filter_drops_only_known_harmless_messages():
    keep = HarmlessFilter().filter
    assert not keep(_record("RotaryEmbedding: Failed to load weights"))
    assert not keep(_record("ParallelLMHead: Failed to load weights"))
    assert not keep(_record("libtcmalloc is not found in LD_PRELOAD. For best performance"))
    assert not keep(_record("[shutdown] Process manager: force killing remaining process"))
    assert not keep(_record("Reset SSM cache type to float32 for accelerated GDN mamba backend"))
    assert keep(_record("[shutdown] EngineCore died", logging.ERROR))  # errors always show
    assert keep(_record("LlamaForCausalLM: Failed to load weights"))
    assert keep(_record("Out of KV cache blocks"))


def test_vllm_logging_config_names_the_filter():
    config = json.loads(CONFIG_FILE.read_text())
    assert config["filters"]["harmless"]["()"] == (
        f"{HarmlessFilter.__module__}.{HarmlessFilter.__qualname__}")
    assert config["handlers"]["vllm"]["filters"] == ["harmless"]
    assert config["loggers"]["vllm"]["level"] == "WARNING"


def test_verbose_from_flag_or_environment(monkeypatch):
    monkeypatch.delenv("MAESTRO_VERBOSE", raising=False)
    assert not is_verbose(False) and is_verbose(True)
    monkeypatch.setenv("MAESTRO_VERBOSE", "1")
    assert is_verbose(False)


QUIET_PROBE = """
import os, sys, warnings
from maestro_megatron.logs import configure_quiet
warnings.simplefilter("always")
acted = configure_quiet(verbose=sys.argv[1] == "1")
def warn(message, category, module):
    warnings.warn_explicit(message, category, "f.py", 1, module=module)
warn("Transformer Engine and Apex are not installed. Falling back", UserWarning,
     "megatron.core.optimizer")
warn("`torch.distributed.all_gather_into_tensor` is deprecated.", FutureWarning,
     "torch.distributed.c10d_logger")
warn("something else", UserWarning, "megatron.core.optimizer")
print(acted, os.environ.get("VLLM_LOGGING_CONFIG_PATH"), os.environ.get("PYTHONWARNINGS"),
      sep=chr(10))
"""


def _probe(verbose: str) -> subprocess.CompletedProcess:
    env = {"PATH": "/usr/bin:/bin"}  # no MAESTRO_VERBOSE / VLLM_* / PYTHONWARNINGS
    return subprocess.run([sys.executable, "-c", QUIET_PROBE, verbose], env=env,
                          capture_output=True, text=True, timeout=120)


def test_configure_quiet_filters_known_warnings_only():
    proc = _probe("0")
    assert proc.returncode == 0, proc.stderr
    assert "Transformer Engine" not in proc.stderr and "deprecated" not in proc.stderr
    assert "something else" in proc.stderr
    acted, config, child = proc.stdout.splitlines()
    assert acted == "True" and config == str(CONFIG_FILE)
    assert "ignore:resource_tracker:UserWarning" in child.split(",")


def test_verbose_keeps_everything():
    proc = _probe("1")
    assert proc.returncode == 0, proc.stderr
    assert "Transformer Engine" in proc.stderr and "deprecated" in proc.stderr
    assert proc.stdout.splitlines() == ["False", "None", "None"]


GRAD_PROBE = """
import warnings
import torch
from maestro_megatron.megatron.cpu_compat import enable_cpu_compat
enable_cpu_compat()
warnings.simplefilter("always")
view = torch.nn.Parameter(torch.ones(4))[:2]
# what megatron's optimizer zero_grad does with its fp32 shard views
in_megatron = {"__name__": "megatron.core.optimizer.optimizer", "view": view}
assert eval("view.grad", in_megatron) is None
view.grad = torch.zeros(2)
assert eval("view.grad", in_megatron) is not None
assert (torch.ones(2, requires_grad=True) * 2).grad is None
"""


def test_cpu_compat_silences_only_megatrons_optimizer_grad_read():
    proc = subprocess.run([sys.executable, "-c", GRAD_PROBE], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    warned = [line for line in proc.stderr.splitlines() if "not a leaf Tensor" in line]
    assert len(warned) == 1, proc.stderr  # the read outside megatron's optimizer


def test_summary_names_outputs_and_first_vs_last_means(tmp_path):
    rows = [{"step": s, "time": 0.0, "reward/scalar": float(s), "reward/fmt": 1.0,
             "kl/seq": 0.1 * s} for s in range(1, 26)]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "hf_final").mkdir()
    text = format_summary(tmp_path)
    lines = text.splitlines()
    assert lines[0] == f"done: 25 steps logged; run directory {tmp_path}"
    assert f"policy (HF)  {tmp_path / 'hf_final'}" in text
    assert "conductor.pt" not in text  # not written: not named
    assert "mean over steps 1-10 -> 16-25:" in text
    # mean(1..10) = 5.5, mean(16..25) = 20.5; kl/seq: 0.55 -> 2.05; no reward/pref logged
    assert any(line.split() == ["reward/scalar", "5.5000", "->", "20.5000"] for line in lines)
    assert any(line.split() == ["kl/seq", "0.5500", "->", "2.0500"] for line in lines)
    assert "reward/pref" not in text
