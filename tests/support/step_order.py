"""Child process of tests/integration/test_step_order.py: the order of a real training
step's engine calls and trainer stages.

    python -m tests.support.step_order RUN_DIR OUT_JSON [override ...]

`setup_run` on the tiny CPU recipe (one process: real megatron-core, real vLLM on CPU,
the real MiniLM scorer), then the trainer's own `run_step` for every step of the run.
The real engine is wrapped in `RecordingEngine` (each call goes to it unchanged and is
logged with its arguments and result when it returns) and the loop's stage functions
(`forward_step`, `train_step`, `refit_policy`) in loggers that log when the stage
starts and then run the real one. Writes {"calls": [...], "engine": {...}} to OUT_JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from maestro_megatron.config import load_recipe  # noqa: E402
from maestro_megatron.trainer import loop  # noqa: E402
from maestro_megatron.trainer.setup import setup_run  # noqa: E402
from maestro_megatron.trainer.signals import child_pids, stop_children  # noqa: E402

RECIPE = Path(__file__).resolve().parents[2] / "recipes" / "tiny_cpu.yaml"


def _plain(value):
    """A JSON-able record of an argument or result (containers by length)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
        return list(value)
    return f"<{type(value).__name__}>"


class RecordingEngine:
    """The real engine: every attribute is its own; each method call is forwarded
    unchanged and logged as {"call", "args", "result"} when it returns."""

    def __init__(self, engine, log: list) -> None:
        self._engine, self._log = engine, log

    def __getattr__(self, name: str):
        attr = getattr(self._engine, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            result = attr(*args, **kwargs)
            self._log.append({"call": f"engine.{name}", "args": [_plain(a) for a in args],
                              "result": _plain(result)})
            return result
        return call


def _stage(name: str, fn, log: list):
    def run(*args, **kwargs):
        log.append({"call": name})
        return fn(*args, **kwargs)
    return run


def main(run_dir: str, out: str, overrides: list[str]) -> None:
    recipe = load_recipe(RECIPE, [f"run.output_dir={run_dir}", *overrides])
    log: list = []
    for name in ("forward_step", "train_step", "refit_policy"):
        setattr(loop, name, _stage(name, getattr(loop, name), log))
    before, state, engine = child_pids(), None, None
    try:
        state = setup_run(recipe)
        engine = state.engine
        state.engine = RecordingEngine(engine, log)
        for step in range(1, recipe.run.num_steps + 1):
            log.append({"call": f"step {step}"})
            loop.run_step(state, step)
        info = {"supports_sleep": engine.supports_sleep, "is_cpu": engine.is_cpu,
                "refit_transport": engine.refit_transport}
    finally:
        if state is not None:
            state.writer.close()
        if engine is not None:
            engine.close()  # the real one: not a call of the recorded steps
        stop_children(keep=before)
    Path(out).write_text(json.dumps({"calls": log, "engine": info}, indent=1))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
