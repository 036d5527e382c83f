"""Llama 3.1 (llama3) RoPE scaling: the trainer's megatron model scores tokens as
transformers does (and so as vLLM, which applies the same scaling), at TP=1 on CPU fp32.

The scaling is chosen to matter at the test's length: original_max_position_embeddings
64 puts the wavelength bands at 16 and 64 tokens, so 7 of the 8 frequencies of head_dim
16 change; the same model without the scaling must then be visibly off (the test's
teeth: that is what the trainer computed while the scaling was only warned about).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # tests.support

from tests.support.logprobs import max_logprob_gap  # noqa: E402
from tests.support.tiny_hf import build_tiny_hf  # noqa: E402

pytestmark = pytest.mark.integration

WORKER = Path(__file__).resolve().parent / "rope_worker.py"
SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
           "high_freq_factor": 4.0, "original_max_position_embeddings": 64}
SEQ = 96


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    root = tmp_path_factory.mktemp("rope")
    hf_dir = build_tiny_hf(root / "llama", "llama", tied=False, num_layers=2)
    config = json.loads((hf_dir / "config.json").read_text())
    config["rope_parameters"] = {**SCALING, "rope_theta": 500000.0}
    (hf_dir / "config.json").write_text(json.dumps(config, indent=2))
    out = root / "trainer.pt"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(WORKER), "--hf", str(hf_dir), "--seq-length",
                           str(SEQ), "--out", str(out)], capture_output=True, text=True,
                          env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return hf_dir, torch.load(out)


def test_transformers_applies_the_scaling(scored):
    from transformers import AutoConfig

    hf_dir, result = scored
    assert AutoConfig.from_pretrained(hf_dir).rope_parameters["rope_type"] == "llama3"
    assert result["rope_scaling"] == SCALING  # config.json -> ModelConfig, every field


def test_trainer_logprobs_equal_transformers_with_llama3_scaling(scored):
    hf_dir, result = scored
    gap = max_logprob_gap(hf_dir, {**result, "logprobs": result["scaled"]})
    assert gap <= 1e-5, gap


def test_without_the_scaling_the_trainer_is_off(scored):
    hf_dir, result = scored
    gap = max_logprob_gap(hf_dir, {**result, "logprobs": result["unscaled"]})
    assert gap > 1e-3, gap


def test_converter_round_trip_keeps_the_scaling(scored, tmp_path):
    """hf-to-megatron (its metadata holds the ModelConfig) and back: config.json still
    says llama3 with the same parameters, and the positions are the checkpoint's."""
    hf_dir, _ = scored
    mg, back = tmp_path / "mg", tmp_path / "back"
    code = ("import sys; from maestro_megatron.weights.cli import main; sys.exit(main(["
            f"'hf-to-megatron', '--hf', {str(hf_dir)!r}, '--out', {str(mg)!r}, "
            "'--no-progress']))")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=env, timeout=300, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    from maestro_megatron.weights.cli import main

    assert main(["megatron-to-hf", "--megatron", str(mg), "--out", str(back),
                 "--no-progress"]) == 0
    config = json.loads((back / "config.json").read_text())
    source = json.loads((hf_dir / "config.json").read_text())
    assert config["rope_parameters"] == source["rope_parameters"]
    assert config["max_position_embeddings"] == source["max_position_embeddings"] == 128
