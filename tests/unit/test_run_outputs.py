"""The run directory (RunWriter) and its figures."""

from __future__ import annotations

import json

import pytest
import yaml

from maestro_megatron.trainer.outputs import (
    RunWriter,
    read_conductor_weights,
    read_metrics,
    read_rollouts,
)
from maestro_megatron.trainer.plots import (
    conductor_weights_figure,
    plot_conductor_weights,
    plot_rewards,
    rewards_figure,
)

COMPONENTS = ["ppl", "fmt", "ent", "len", "pref"]
RECIPE = {"run": {"name": "tiny", "num_steps": 4}, "grpo": {"lr": 1e-5, "group_size": 4}}


def _write_run(run_dir, steps=4, start_step=0):
    with RunWriter(run_dir, RECIPE, enabled=True, total_steps=steps, start_step=start_step,
                   progress=False) as writer:
        for step in range(start_step + 1, steps + 1):
            writer.log(step, {"reward/scalar": 0.1 * step, "reward/ppl": 0.2 * step,
                              "reward/fmt": 1.0 - 0.1 * step, "train/loss": -step,
                              "timing/rollout": 0.5})
            w = [0.2 + 0.01 * step, 0.2, 0.2, 0.2, 0.2 - 0.01 * step]
            writer.log_conductor_weights(step, {"math": w, "code": w[::-1], "chat": w},
                                         COMPONENTS)
            writer.log_rollouts(step, [{"sample": i, "run": start_step} for i in range(2)])


def _scalars(run_dir, tag):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars(tag)]


def test_run_writer_writes_recipe_metrics_tensorboard_and_weights(tmp_path):
    run_dir = tmp_path / "run"
    _write_run(run_dir)
    assert yaml.safe_load((run_dir / "recipe.yaml").read_text()) == RECIPE
    assert list(yaml.safe_load((run_dir / "recipe.yaml").read_text())) == ["run", "grpo"]
    metrics = read_metrics(run_dir)
    assert [m["step"] for m in metrics] == [1, 2, 3, 4]
    assert metrics[2]["reward/scalar"] == pytest.approx(0.3) and "time" in metrics[2]
    assert [(s, round(v, 5)) for s, v in _scalars(run_dir, "reward/ppl")] == [
        (1, 0.2), (2, 0.4), (3, 0.6), (4, 0.8)]
    assert [v for _, v in _scalars(run_dir, "timing/rollout")] == [0.5] * 4
    weights = read_conductor_weights(run_dir)
    assert len(weights) == 4 and weights[0]["components"] == COMPONENTS
    assert weights[1]["weights"]["code"] == pytest.approx([0.18, 0.2, 0.2, 0.2, 0.22])
    assert _scalars(run_dir, "conductor_weight/math/ppl")[0][1] == pytest.approx(0.21)


def test_lines_are_flushed_per_step(tmp_path):
    writer = RunWriter(tmp_path, RECIPE, enabled=True, total_steps=3, progress=False)
    writer.log(1, {"train/loss": 1.0})
    records = read_metrics(tmp_path)  # before close()
    assert len(records) == 1 and records[0]["train/loss"] == 1.0
    writer.close()
    writer.close()  # idempotent


def test_resume_drops_steps_after_the_checkpoint(tmp_path):
    _write_run(tmp_path, steps=4)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 5, "trai')  # torn line of a killed run
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4]
    _write_run(tmp_path, steps=5, start_step=2)  # resumed from the step-2 checkpoint
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2, 3, 4, 5]
    assert [r["step"] for r in read_conductor_weights(tmp_path)] == [1, 2, 3, 4, 5]
    rollouts = read_rollouts(tmp_path)  # run.log_rollouts: one line per response
    assert [(r["step"], r["sample"], r["run"]) for r in rollouts] == [
        (1, 0, 0), (1, 1, 0), (2, 0, 0), (2, 1, 0),
        (3, 0, 2), (3, 1, 2), (4, 0, 2), (4, 1, 2), (5, 0, 2), (5, 1, 2)]
    assert [s for s, _ in _scalars(tmp_path, "reward/ppl")] == [1, 2, 3, 4, 5]  # purged


def test_disabled_writer_is_a_no_op(tmp_path):
    run_dir = tmp_path / "run"
    with RunWriter(run_dir, RECIPE, enabled=False, total_steps=2) as writer:
        writer.log(1, {"train/loss": 1.0})
        writer.log_conductor_weights(1, {"math": [1.0] * 5}, COMPONENTS)
    assert not run_dir.exists()


def test_weights_must_match_components(tmp_path):
    with RunWriter(tmp_path, RECIPE, enabled=True, total_steps=1, progress=False) as writer:
        with pytest.raises(ValueError, match="3 weights for 5 components"):
            writer.log_conductor_weights(1, {"math": [0.3, 0.3, 0.4]}, COMPONENTS)


def test_progress_bar_shows_key_metrics(tmp_path, capsys):
    with RunWriter(tmp_path, RECIPE, enabled=True, total_steps=2, progress=True) as writer:
        writer.log(1, {"reward/scalar": 0.25, "train/loss": 1.5, "timing/rollout": 3.0})
    err = capsys.readouterr().err
    assert "1/2" in err and "scalar=0.25" in err and "loss=1.5" in err


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


def test_plots_are_pngs_with_one_panel_per_category(tmp_path):
    _write_run(tmp_path)
    fig = conductor_weights_figure(read_conductor_weights(tmp_path))
    assert [ax.get_title() for ax in fig.axes] == ["math", "code", "chat"]
    assert all(len(ax.get_lines()) == len(COMPONENTS) for ax in fig.axes)
    line = fig.axes[0].get_lines()[0]  # math / ppl
    assert list(line.get_xdata()) == [1, 2, 3, 4]
    assert list(line.get_ydata()) == pytest.approx([0.21, 0.22, 0.23, 0.24])
    png = plot_conductor_weights(tmp_path)
    assert png == tmp_path / "conductor_weights.png"
    width, height = _png_size(png)
    assert width > 2 * height  # three panels side by side

    fig = rewards_figure(read_metrics(tmp_path))
    assert len(fig.axes) == 2 and len(fig.axes[0].get_lines()) == 1
    assert len(fig.axes[1].get_lines()) == 2  # reward/fmt, reward/ppl
    png = plot_rewards(tmp_path, tmp_path / "figs" / "r.png")
    assert png.stat().st_size > 1000 and _png_size(png)[0] > 0


def test_many_categories_wrap_into_a_grid(tmp_path):
    records = [{"step": s, "components": ["a", "b"],
                "weights": {f"t{i}": [0.5, 0.5] for i in range(4)}} for s in (1, 2)]
    fig = conductor_weights_figure(records)
    assert len(fig.axes) == 4  # a 2 x 3 grid with the two spare cells removed


def test_missing_or_empty_files_raise_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="conductor_weights.jsonl"):
        plot_conductor_weights(tmp_path)
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_rewards(tmp_path)
    (tmp_path / "conductor_weights.jsonl").write_text("")
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 1, "train/loss": 1.0}) + "\n")
    with pytest.raises(ValueError, match="no records"):
        plot_conductor_weights(tmp_path)
    with pytest.raises(ValueError, match="no reward/"):
        plot_rewards(tmp_path)
    (tmp_path / "metrics.jsonl").write_text("not json\n{}\n")
    with pytest.raises(ValueError, match="metrics.jsonl:1: not a JSON line"):
        read_metrics(tmp_path)
