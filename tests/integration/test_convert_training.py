"""megatron-to-hf of a TRAINING checkpoint (trainer/checkpoint.py: no maestro_weights.json).

One run directory is made by the trainer's own functions (convert_worker.py
--training-run: tiny recipe, a 500-token tokenizer, so the embedding holds 512 rows of
which 12 are padding; 3 warm-up steps; a checkpoint with optimizer state) together with
the trainer's log-probs of fixed tokens from that checkpoint. The converter must write
the whole model (500 real rows, the tokenizer files) whose transformers log-probs match
the trainer's, and refuse a config or tokenizer that disagrees with the checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from maestro_megatron.weights.cli import main  # noqa: E402
from maestro_megatron.weights.hf_io import TOKENIZER_FILES, HFCheckpoint  # noqa: E402
from tests.support.logprobs import max_logprob_gap  # noqa: E402

pytestmark = pytest.mark.integration

WORKER = Path(__file__).resolve().parent / "convert_worker.py"
VOCAB, ROWS = 500, 512
EMBED = "embedding.word_embeddings.weight"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("training") / "run"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(WORKER), "--training-run", str(run),
                           "--recipe-override", f"data.tokenizer_vocab_size={VOCAB}"],
                          capture_output=True, text=True, env=env, timeout=600, cwd=ROOT)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return run


def _ckpt(run: Path) -> Path:
    return run / "checkpoints" / "step_00000001"


def test_training_checkpoint_converts_whole(run_dir, tmp_path):
    """The README's usage, in a real process: `--config RECIPE` (which leaves the
    vocabulary to the tokenizer); the run's tokenizer is found beside the checkpoint."""

    from maestro_megatron.weights.dcp_read import read_boxes, tensor_metadata

    out = tmp_path / "hf"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "convert_checkpoint.py"),
                           "megatron-to-hf", "--megatron", str(_ckpt(run_dir)), "--out",
                           str(out), "--config", str(ROOT / "recipes" / "tiny_cpu.yaml"),
                           "--no-progress"], capture_output=True, text=True, env=env,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-4000:]

    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == VOCAB and config["tie_word_embeddings"]
    written = [f for f in TOKENIZER_FILES if (out / f).is_file()]
    assert {"tokenizer.json", "tokenizer_config.json"} <= set(written)
    for name in written:
        assert (out / name).read_bytes() == (run_dir / "tokenizer" / name).read_bytes(), name

    # Every tensor whole: equal to the trainer's own export of the same weights (the live
    # gather path, not the converter's), and the embedding to the checkpoint's 500 rows.
    hf, trainer_export = HFCheckpoint(out), HFCheckpoint(run_dir / "hf_warmup")
    assert hf.names() == trainer_export.names()
    for name in sorted(hf.names()):
        assert torch.equal(hf.read(name), trainer_export.read(name)), name
    meta = tensor_metadata(_ckpt(run_dir))
    assert meta[EMBED][0] == (ROWS, 128)
    saved = read_boxes(_ckpt(run_dir), {EMBED: [((0, 0), (ROWS, 128))]},
                       {EMBED: meta[EMBED][1]})[EMBED][0]
    embed = hf.read("model.embed_tokens.weight")
    assert embed.shape == (VOCAB, 128) and torch.equal(embed, saved[:VOCAB])
    assert not saved[VOCAB:].any()  # what was dropped is padding

    # Logits: transformers on the converted model vs the trainer's log-probs.
    trainer = torch.load(run_dir / "trainer.pt")
    assert trainer["vocab_size"] == VOCAB
    gap = max_logprob_gap(out, trainer)
    assert gap <= 1e-5, gap


def test_defaults_need_no_config(run_dir, tmp_path):
    """Without --config the run's recipe.yaml is used; same model as with it."""
    out = tmp_path / "hf"
    assert main(["megatron-to-hf", "--megatron", str(_ckpt(run_dir)), "--out", str(out),
                 "--no-progress"]) == 0
    config = json.loads((out / "config.json").read_text())
    assert config["vocab_size"] == VOCAB
    assert HFCheckpoint(out).shape("model.embed_tokens.weight") == (VOCAB, 128)
    assert (out / "tokenizer.json").is_file()


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """Tokenizers of other sizes, trained on the same texts as the run's."""
    from maestro_megatron.data.prompts import builtin_texts
    from maestro_megatron.data.tokenizer import train_chat_tokenizer

    root = tmp_path_factory.mktemp("tokenizers")
    return {n: train_chat_tokenizer(builtin_texts(), root / str(n), vocab_size=n)
            for n in (300, 490, 600)}


def _recipe_with(run_dir: Path, tmp: Path, **model) -> list[str]:
    import yaml

    recipe = yaml.safe_load((run_dir / "recipe.yaml").read_text())
    recipe["model"].update(model)
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe))
    return ["--config", str(tmp / "recipe.yaml")]


def _no_tokenizer(run_dir, tmp, toks):
    bare = tmp / "bare"  # a run directory that lost its tokenizer/
    shutil.copytree(_ckpt(run_dir), bare / "checkpoints" / "step_00000001")
    shutil.copy(run_dir / "recipe.yaml", bare / "recipe.yaml")
    return ([str(bare / "checkpoints" / "step_00000001")],
            "model.vocab_size: the config says 256 (in ", "but the checkpoint's embedding "
            "has 512 rows")


CASES = {
    "no-tokenizer": _no_tokenizer,
    "tokenizer-too-small": lambda run, tmp, toks: (
        ["--tokenizer", str(toks[300])], f"the tokenizer in {toks[300]} has 300 tokens, which "
        "pads to 384 rows (make_vocab_size_divisible_by=128 x TP=1)", "has 512 rows"),
    "tokenizer-too-large": lambda run, tmp, toks: (
        ["--tokenizer", str(toks[600])], f"the tokenizer in {toks[600]} has 600 tokens, the "
        "checkpoint's embedding only 512 rows", ""),
    "real-rows-past-tokenizer": lambda run, tmp, toks: (
        ["--tokenizer", str(toks[490])], "embedding.word_embeddings.weight: rows 490..511 are "
        "not zero, so they are not vocabulary padding", ""),
    "hidden-size": lambda run, tmp, toks: (
        _recipe_with(run, tmp, hidden_size=256), "model.hidden_size: the config says 256, the "
        "checkpoint's embedding has 128 columns", ""),
    "num-layers": lambda run, tmp, toks: (
        _recipe_with(run, tmp, num_layers=2), "model.num_layers: the config says 2, the "
        "checkpoint's decoder.layers.self_attention.linear_qkv.weight stacks 4 layers", ""),
    "untied": lambda run, tmp, toks: (
        _recipe_with(run, tmp, tie_embeddings=False), "model.tie_embeddings: the config says "
        "false, but the checkpoint lacks output_layer.weight", ""),
    "unknown-key": lambda run, tmp, toks: (
        _recipe_with(run, tmp, num_layerz=4), "model.num_layerz: unknown key", ""),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_disagreeing_config_or_tokenizer_is_refused(run_dir, tokenizers, case, tmp_path,
                                                    capsys):
    args, *messages = CASES[case](run_dir, tmp_path, tokenizers)
    if not args[0].startswith("--"):
        ckpt, args = args[0], args[1:]
    else:
        ckpt = str(_ckpt(run_dir))
    out = tmp_path / "out"
    assert main(["megatron-to-hf", "--megatron", ckpt, "--out", str(out), "--no-progress",
                 *args]) == 2
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, err
    for message in messages:
        assert message in errors[0], err
    assert not out.exists() and not list(tmp_path.glob(".*partial"))
