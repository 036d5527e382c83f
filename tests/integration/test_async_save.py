"""run.async_save: checkpoints written in the background (megatron-core's asynchronous
torch_dist save, a forked writer) while the next steps train.

The same 3-step run with a checkpoint after every step, once with the blocking save and
once in the background: the metrics are equal, and each checkpoint of the background run
holds the same bytes as the blocking run's of the same step (every file but DCP's
`.metadata`, whose save id differs, and the RNG file: same size and sha256 in the
manifests), and the same RNG states except numpy's global one, which megatron-core's
blocking writer draws from in the training process (the background writer draws in its
own process; the trainer draws nothing from numpy: the metrics agree). Training
changes the weights in place while the writer works, so a writer that saved anything
but the state at its save would show here. Each background checkpoint passes the
resume verification, and `latest` names the last one once the run ends.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.support.maestro_cli import run_cli

ROOT = Path(__file__).resolve().parents[2]
ARGS = ["train", "recipes/tiny_cpu.yaml", "warmup.num_steps=5", "run.num_steps=3",
        "run.save_every=1", "run.keep_checkpoints=3", "run.progress=false"]


def _metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if not k.startswith("timing/") and k != "time"}
            for r in rows]


def _files(ckpt: Path) -> dict:
    files = json.loads((ckpt / "manifest.json").read_text())["files"]
    return {name: entry for name, entry in files.items()
            if name != ".metadata" and not name.startswith("rng/")}


def _rng(ckpt: Path) -> dict:
    import torch

    state = torch.load(ckpt / "rng" / "rank_00000.pt", weights_only=False)
    del state["numpy"]
    return state


def _same(a, b) -> bool:
    import torch

    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and a.equal(b)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.integration
def test_background_checkpoints_hold_the_state_of_their_step(tmp_path):
    from maestro_megatron.trainer.checkpoint import checkpoint_problem

    blocking, background = tmp_path / "blocking", tmp_path / "background"
    run_cli(*ARGS, f"run.output_dir={blocking}")
    run_cli(*ARGS, f"run.output_dir={background}", "run.async_save=true")
    assert _metrics(background) == _metrics(blocking)
    for step in (1, 2, 3):
        name = f"step_{step:08d}"
        assert checkpoint_problem(background / "checkpoints" / name) is None
        assert _files(background / "checkpoints" / name) == \
            _files(blocking / "checkpoints" / name), name
        assert _same(_rng(background / "checkpoints" / name),
                     _rng(blocking / "checkpoints" / name)), name
    assert (background / "checkpoints" / "latest").read_text().strip() == "step_00000003"
    assert (background / "FINISHED").is_file()
