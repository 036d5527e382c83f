"""Colocation plumbing on CPU: the refit transport chosen from the engine's device, the
sleep level and wake tags the engine protocol accepts, rollout.sleep_level in recipes,
and the step's sleep/wake timing bookkeeping (trainer/colocation.py).

The order of the calls under the trainer's real `run_step` on the real CPU engine:
tests/integration/test_step_order.py; sleep, wake and refit by CUDA IPC on a real GPU
engine: tests/gpu/test_vllm_sleep_refit.py."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from maestro_megatron.config import ConfigError, load_recipe
from maestro_megatron.rollout.base import (
    SLEEP_TAGS,
    check_awake,
    check_sleep_level,
    check_sleep_tags,
)
from maestro_megatron.rollout.bucket_io import refit_transport
from maestro_megatron.trainer import loop
from maestro_megatron.trainer.colocation import sleep_engine, wake_engine
from maestro_megatron.trainer.loop import Timer


@pytest.mark.parametrize("device, shared, expected", [
    ("cuda", False, "cuda_ipc"), ("cuda", True, "cuda_ipc"),
    ("cpu", True, "shared_memory"), ("cpu", False, "bytes")])
def test_refit_transport_follows_the_engines_device(device, shared, expected):
    assert refit_transport(device, shared) == expected


def test_refit_transport_refuses_an_unknown_device():
    with pytest.raises(ValueError, match="'xpu'"):
        refit_transport("xpu", True)


def test_sleep_levels_and_wake_tags():
    for level in (1, 2):
        check_sleep_level(level)
    for level in (0, 3):
        with pytest.raises(ValueError, match="sleep level"):
            check_sleep_level(level)
    assert SLEEP_TAGS == ("weights", "kv_cache")  # the trainer's wake order
    for tags in (None, ["weights"], ["kv_cache"], ["weights", "kv_cache"]):
        check_sleep_tags(tags)
    for tags in ([], ["scheduling"], ["weights", "kv"]):
        with pytest.raises(ValueError, match="wake_up tags"):
            check_sleep_tags(tags)


def test_a_sleeping_engine_refuses_to_generate_and_to_take_weights():
    check_awake(frozenset(), "generate")
    check_awake(frozenset({"kv_cache"}), "refit", needs=["weights"])  # weights woken first
    with pytest.raises(RuntimeError, match=r"generate on a sleeping engine \(kv_cache asleep"):
        check_awake(frozenset({"kv_cache"}), "generate")
    with pytest.raises(RuntimeError, match=r"refit .*\(weights asleep\).*wake_up\(\['weights'\]\)"):
        check_awake(frozenset(SLEEP_TAGS), "refit", needs=["weights"])


def test_recipe_sleep_level(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("run: {num_steps: 2}\n")
    assert load_recipe(path).rollout.sleep_level == 1
    assert load_recipe(path, ["rollout.sleep_level=2"]).rollout.sleep_level == 2
    with pytest.raises(ConfigError) as info:
        load_recipe(path, ["rollout.sleep_level=3"])
    assert info.value.key == "rollout.sleep_level"


class _Sleeps:
    """Bookkeeping only (what the step logs for each answer an engine gives); real
    engines: the integration and GPU tests named above."""

    def __init__(self, answer: bool) -> None:
        self.answer, self.calls = answer, []

    def sleep(self, level):
        self.calls.append(("sleep", level))
        return self.answer

    def wake_up(self, tags):
        self.calls.append(("wake_up", tags))
        return self.answer


def test_step_logs_sleep_and_wake_time_only_where_the_engine_slept(monkeypatch):
    ticks = iter(range(100))  # the stage timer's clock: each reading one second later
    monkeypatch.setattr(loop, "time", SimpleNamespace(perf_counter=lambda: next(ticks)))
    for answer in (False, True):
        engine, timer = _Sleeps(answer), Timer(step=3)
        assert sleep_engine(engine, 2, timer) is answer
        assert wake_engine(engine, ["weights"], timer) is answer
        assert wake_engine(engine, ["kv_cache"], timer) is answer
        assert engine.calls == [("sleep", 2), ("wake_up", ["weights"]),
                                ("wake_up", ["kv_cache"])]
        engine_times = {k: v for k, v in timer.times.items() if k.startswith("timing/engine_")}
        # one second each; the two wakes add up
        assert engine_times == ({"timing/engine_sleep": 1, "timing/engine_wake": 2}
                                if answer else {})
    timer = Timer()
    assert not sleep_engine(None, 1, timer) and not wake_engine(None, ["weights"], timer)
    assert timer.times == {}


def test_a_failed_wake_names_its_stage():
    class Dead(_Sleeps):
        def wake_up(self, tags):
            raise RuntimeError("engine process died")

    with pytest.raises(RuntimeError) as info:
        wake_engine(Dead(True), ["weights"], Timer(step=7))
    assert "stage 'engine_wake' of step 7" in "".join(info.value.__notes__)
