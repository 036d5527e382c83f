"""A fresh start never appends to an earlier run's records (RunWriter, run.overwrite)."""

from __future__ import annotations

import pytest

from maestro_megatron.errors import RunDirError, UserError
from maestro_megatron.trainer.outputs import RunWriter, read_conductor_weights, read_metrics

RECIPE = {"run": {"name": "tiny"}}


def _run(run_dir, steps, *, start_step=0, overwrite=False, loss=1.0):
    with RunWriter(run_dir, RECIPE, enabled=True, total_steps=steps, start_step=start_step,
                   progress=False, overwrite=overwrite) as writer:
        for step in range(start_step + 1, steps + 1):
            writer.log(step, {"train/loss": loss})
            writer.log_conductor_weights(step, {"math": [0.5, 0.5]}, ["a", "b"])


def _tb_steps(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tb"))
    acc.Reload()
    return [(e.step, e.value) for e in acc.Scalars("train/loss")]


def test_fresh_start_over_an_earlier_run_is_refused_naming_the_file(tmp_path):
    _run(tmp_path, 3)
    before = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(RunDirError, match=f"^{tmp_path / 'metrics.jsonl'} holds records of "
                       "an earlier run .*set run.overwrite=true") as info:
        _run(tmp_path, 2)
    assert isinstance(info.value, UserError)  # the CLI: one line `error: ...`, exit 2
    assert (tmp_path / "metrics.jsonl").read_text() == before  # nothing touched
    with pytest.raises(RunDirError):  # the check alone (every rank, before the models)
        RunWriter.check_fresh_start(tmp_path, overwrite=False)
    RunWriter.check_fresh_start(tmp_path, overwrite=True)
    RunWriter.check_fresh_start(tmp_path / "new", overwrite=False)


def test_overwrite_removes_the_earlier_records_first(tmp_path):
    _run(tmp_path, 3, loss=1.0)
    _run(tmp_path, 2, overwrite=True, loss=2.0)
    assert [(m["step"], m["train/loss"]) for m in read_metrics(tmp_path)] == [(1, 2.0),
                                                                            (2, 2.0)]
    assert [w["step"] for w in read_conductor_weights(tmp_path)] == [1, 2]
    assert _tb_steps(tmp_path) == [(1, 2.0), (2, 2.0)]


def test_empty_files_of_a_run_killed_before_step_one_are_no_earlier_run(tmp_path):
    RunWriter(tmp_path, RECIPE, enabled=True, total_steps=2, progress=False).close()
    assert (tmp_path / "metrics.jsonl").read_text() == ""
    _run(tmp_path, 2)
    assert [m["step"] for m in read_metrics(tmp_path)] == [1, 2]


def test_resume_keeps_the_records_up_to_the_checkpoint(tmp_path):
    _run(tmp_path, 4, loss=1.0)
    _run(tmp_path, 4, start_step=2, loss=3.0)  # resumed from step 2: no refusal
    assert [(m["step"], m["train/loss"]) for m in read_metrics(tmp_path)] == [
        (1, 1.0), (2, 1.0), (3, 3.0), (4, 3.0)]
