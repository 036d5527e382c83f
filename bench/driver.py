"""The trainer's own step under a benchmark's control, in one process.

`open_run` builds a run exactly as `maestro train` does (`setup_run`) from the tiny
recipe started at the warmed base model (no tokenizer training, no warm-up: seconds
instead of a minute), and `run_steps` calls the trainer's `run_step`, capturing the
metrics it logs (its `timing/*` keys are the stage timings the benchmarks read).
Because setup happens once, a benchmark can interleave variants (a scalarizer, G, N,
the response cap) step by step in the same process and against the same engine.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path

from bench.common import REPO, WORK, base_model

STEP_KEY = "timing/step"


def bench_recipe(name: str, overrides: list[str] = (), kind: str = "warmup"):
    """The tiny recipe from the warmed (or random-init) base, writing under WORK/name.
    run.num_steps is large so that no step is the last (the last one checkpoints)."""
    from maestro_megatron.config import load_recipe

    base = [f"model.hf_path={base_model(kind)}", "warmup.num_steps=0",
            f"run.output_dir={WORK / name}", "run.overwrite=true", "run.progress=false",
            "run.num_steps=100000", "run.save_every=0"]
    return load_recipe(REPO / "recipes" / "tiny_cpu.yaml", base + list(overrides))


class CapturingWriter:
    """Forwards to the run's writer and keeps every metrics row it is given."""

    def __init__(self, inner):
        self.inner, self.rows = inner, []

    def log(self, step, metrics):
        self.rows.append({"step": step, **metrics})
        return self.inner.log(step, metrics)

    def __getattr__(self, name):
        return getattr(self.inner, name)


@contextmanager
def open_run(recipe):
    """A RunState for `recipe` (one process, no torchrun needed); on exit the engine and
    every process it started are stopped and the process groups torn down."""
    from maestro_megatron.logs import configure_quiet

    configure_quiet(recipe.run.verbose)
    from maestro_megatron.megatron.parallel import destroy_distributed
    from maestro_megatron.trainer.setup import setup_run
    from maestro_megatron.trainer.signals import child_pids, exit_on_signals, stop_children

    before, state = child_pids(), None
    with exit_on_signals():
        try:
            state = setup_run(recipe)
            state.writer = CapturingWriter(state.writer)
            yield state
        finally:
            if state is not None:
                state.writer.close()
                if state.engine is not None:
                    state.engine.close()
            stop_children(keep=before)
            destroy_distributed()


def run_steps(state, first: int, count: int) -> list[dict]:
    """`count` trainer steps from step `first`; their logged metrics rows."""
    from maestro_megatron.trainer.loop import run_step

    start = len(state.writer.rows)
    for step in range(first, first + count):
        run_step(state, step)
    return state.writer.rows[start:]


def swap_recipe(state, **sections) -> None:
    """Change recipe sections between steps (e.g. grpo=replace(g, group_size=8)) and
    rebuild what was derived from them: prompts per rank, the prompt stream, the
    scalarizer (the Conductor's meta buffer holds rows of the old batch shape)."""
    from maestro_megatron.data.prompts import PromptStream, load_data_config
    from maestro_megatron.scalarizers import build_scalarizer
    from maestro_megatron.trainer.setup import prompts_per_rank

    state.recipe = replace(state.recipe, **sections)
    state.prompts_per_rank = prompts_per_rank(state.recipe, state.groups)
    records = load_data_config(state.recipe.data)
    state.stream = PromptStream(records, state.recipe.grpo.num_prompts_per_step,
                                seed=state.recipe.run.seed)
    state.scalarizer = build_scalarizer(state.recipe, d_model=state.models.cfg.hidden_size,
                                        device=state.device)


def run_dir(name: str) -> Path:
    return WORK / name
