"""A colocated engine's sleep across one step (DESIGN.md section 4: engines are
"colocated and asleep while the trainer runs"):

    generate -> sleep_engine -> forwards, rewards, train -> wake_engine(["weights"])
    -> refit -> wake_engine(["kv_cache"]) -> the next generate

Waking the weights alone first lets the refit write them while the KV cache still sleeps:
the refit's buckets and the KV cache are never resident together (`maestro plan`'s
phases). On an engine without sleep mode (vLLM on CPU, or a recipe without
rollout.enable_sleep_mode) each call is the engine's no-op, which it reports (False),
and the step logs no time for it: the step is exactly the one it was without these.
"""

from __future__ import annotations

from collections.abc import Sequence

SLEEP_KEY = "timing/engine_sleep"
WAKE_KEY = "timing/engine_wake"


def sleep_engine(engine, level: int, timer) -> bool:
    """After the rollout: the engine frees its memory (`RolloutEngine.sleep`, level
    rollout.sleep_level) for the trainer's phases; `timing/engine_sleep` where it slept.
    engine: None on ranks without one; timer: the step's `loop.Timer`."""
    if engine is None:
        return False
    with timer("engine_sleep"):
        slept = engine.sleep(level)
    if not slept:
        del timer.times[SLEEP_KEY]
    return slept


def wake_engine(engine, tags: Sequence[str], timer) -> bool:
    """Re-allocate `tags` of a sleeping engine (`RolloutEngine.wake_up`); the seconds of
    the step's wakes (weights, then KV cache) add up in `timing/engine_wake`."""
    if engine is None:
        return False
    earlier = timer.times.pop(WAKE_KEY, None)
    with timer("engine_wake"):
        woke = engine.wake_up(list(tags))
    seconds = timer.times.pop(WAKE_KEY)
    if woke or earlier is not None:
        timer.times[WAKE_KEY] = (earlier or 0.0) + (seconds if woke else 0.0)
    return woke
