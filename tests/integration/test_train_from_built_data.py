"""The paper recipes' data path end to end: NOVER-format CSVs -> `maestro data build` ->
`maestro train` on the tiny model for 2 steps, reading only the built training rows
(the run's data line names the file and its 'train' rows; the test rows never reach
it)."""

from __future__ import annotations

import csv
import json

import pytest

from tests.support.maestro_cli import run_cli


@pytest.mark.integration
def test_tiny_recipe_trains_from_the_built_training_set(tmp_path):
    nover = tmp_path / "dataset"
    nover.mkdir()
    for stem, task in (("nr", "sum"), ("tombench", "pick")):
        with (nover / f"{stem}.csv").open("w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["prompt", "reference", "split"])
            for i in range(6):
                w.writerow([f"{task} question {i}: what is {i} + {i}?", str(2 * i), "train"])
            w.writerow([f"{task} held-out question: what is 9 + 9?", "18", "test"])
    data = tmp_path / "train.jsonl"
    out = run_cli("data", "build", "--nover", str(nover), "--out", str(data))
    assert "wrote 12 training prompts" in out
    rows = [json.loads(line) for line in data.read_text().splitlines()]
    assert {r["task"] for r in rows} == {"natural_reasoning", "tombench"}
    assert not any("held-out" in r["prompt"] for r in rows)
    run = tmp_path / "run"
    out = run_cli("train", "recipes/tiny_cpu.yaml", f"data.path={data}", "warmup.num_steps=3",
                  "run.num_steps=2", "run.progress=false", f"run.output_dir={run}",
                  "run.log_rollouts=true")
    assert f"data: {data}" in out and "train 12" in out, out[-2000:]
    prompts = {json.loads(line)["prompt"] for line in (run / "rollouts.jsonl").open()}
    assert prompts and all("held-out" not in p for p in prompts)
