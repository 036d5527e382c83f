"""The SFT baseline's data (trainer/sft.py): the train split only, targets from the
response column or the wrapped reference, epochs without replacement; recipe checks."""

from __future__ import annotations

import json

import pytest

from maestro_megatron.config import load_recipe
from maestro_megatron.data.prompts import load_data_config
from maestro_megatron.trainer.sft import batch_indices, sft_rows


def test_tiny_sft_trains_on_the_train_split_only():
    recipe = load_recipe("recipes/tiny_cpu_sft.yaml")
    rows, skipped = sft_rows(recipe)
    held_out = {r.prompt for r in load_data_config(recipe.data, split="test")}
    assert len(rows) == 147 and skipped == 0 and len(held_out) == 49
    assert not held_out & {r["prompt"] for r in rows}  # no held-out row is trained on
    assert rows[0]["response"] == "<think>0 plus 3 is 3.</think><answer>3</answer>"


def test_targets_without_a_response_column(tmp_path):
    data = tmp_path / "d.jsonl"
    lines = [{"prompt": "p1", "reference": "r1", "split": "train"},
             {"prompt": "p2", "reference": "r2", "response": "own answer", "split": "train"},
             {"prompt": "p3", "reference": "", "split": "train"},  # nothing to train on
             {"prompt": "p4", "reference": "r4", "split": "test"}]
    data.write_text("".join(json.dumps(x) + "\n" for x in lines))
    recipe = load_recipe("recipes/tiny_cpu_sft.yaml", [f"data.path={data}"])
    rows, skipped = sft_rows(recipe)
    assert [(r["prompt"], r["response"]) for r in rows] == [
        ("p1", "<think></think><answer>r1</answer>"), ("p2", "own answer")]
    assert skipped == 1


def test_batches_are_epochs_without_replacement():
    steps = [batch_indices(10, 4, step, seed=3) for step in range(1, 6)]  # 20 = 2 epochs
    flat = [i for s in steps for i in s]
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:]) == list(range(10))
    assert flat[:10] != flat[10:]  # reshuffled per epoch
    assert batch_indices(10, 4, 3, seed=3) == steps[2]  # a resumed step draws the same rows


@pytest.mark.parametrize("override,key", [(["warmup.num_steps=5"], "warmup.num_steps"),
                                          (["sft.answer_template=x"], "sft.answer_template"),
                                          (["run.algorithm=dpo"], "run.algorithm")])
def test_sft_recipe_checks(override, key):
    with pytest.raises(ValueError, match=key):
        load_recipe("recipes/tiny_cpu_sft.yaml", override)
