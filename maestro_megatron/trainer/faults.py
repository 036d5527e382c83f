"""Fault injection, a testing hook: `MAESTRO_FAULT=POINT@STEP` makes the trainer die by a
real SIGKILL (nothing runs after it: no `finally`, no flush, no atexit) when it reaches
POINT during step STEP. tests/integration/test_kill_resume.py kills a run at every point
in turn and checks that each resume ends bit-identical to an uninterrupted run.

Points (in the order a step passes them):

- ``rollout``: the engine has generated this step's responses, before they are shared;
- ``train``: after the first PPO optimizer step of the update (weights half-updated);
- ``refit``: the update is done, the engine not yet refit, nothing saved;
- ``checkpoint_write``: the step's torch_dist shards are written under the temporary
  name, the RNG / scalarizer files, meta and manifest are not, nothing renamed;
- ``after_latest``: the checkpoint is renamed and ``latest`` names it;
- ``engine``: not a trainer death: the rollout engine's processes (the vLLM engine core
  and its workers) are SIGKILLed at the start of the step's rollout, so the trainer
  meets a dead engine.

Unset (the default) every hook is a no-op. A recipe never sets this; it is not a
feature for users.
"""

from __future__ import annotations

import os
import signal

ENV = "MAESTRO_FAULT"
POINTS = ("rollout", "train", "refit", "checkpoint_write", "after_latest", "engine")

_current_step = 0


def armed() -> tuple[str, int] | None:
    """(point, step) from MAESTRO_FAULT, or None; a malformed value is an error (a test
    that meant to kill must not silently run through)."""
    value = os.environ.get(ENV, "").strip()
    if not value:
        return None
    point, sep, step = value.partition("@")
    if not sep or point not in POINTS or not step.isdigit():
        raise ValueError(f"{ENV}={value!r}: expected POINT@STEP with POINT one of "
                         f"{', '.join(POINTS)}")
    return point, int(step)


def enter_step(step: int) -> None:
    """Called by the loop at the start of each step: the step `fault_point` compares."""
    global _current_step
    _current_step = step


def fault_point(point: str, step: int | None = None) -> None:
    """SIGKILL this process if MAESTRO_FAULT names `point` at `step` (default: the step
    the loop is in)."""
    target = armed()
    if target is None or target != (point, _current_step if step is None else step):
        return
    if point == "engine":
        _kill_engine_processes()
        return
    os.kill(os.getpid(), signal.SIGKILL)


def _kill_engine_processes() -> None:
    """SIGKILL the vLLM processes this process started (the engine core and its workers,
    titled "VLLM::..."; other helpers, e.g. megatron's checkpoint writer, are not the
    engine)."""
    import psutil

    for child in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if " ".join(child.cmdline()).startswith("VLLM::"):
                child.kill()
        except psutil.NoSuchProcess:
            pass
