"""On CPU, an idle vLLM worker parks instead of spinning (runs in the engine's workers).

After each message it reads, a vLLM worker keeps polling its shared-memory queue with
`sched_yield` for one second (`SpinCondition.busy_loop_s` = 1 s in vllm 0.32, no
setting for it) before it parks on a socket. On a GPU node that is a spare core spent
on latency. On a CPU node the engine and the trainer share the cores, and the second
after each rollout is exactly when the trainer's forwards and rewards run: the idle
worker burnt ~0.4-1 CPU-second there on 2 cores (docs/performance.md). With the loop
at 0 the reader parks at once; the writer notifies on every message, so nothing waits
longer than a socket wake-up, and what is computed is unchanged (scheduling only).
"""

from __future__ import annotations

BUSY_LOOP_S: float | None = None
"""The busy-loop seconds readers in this process use; None leaves vLLM's own."""


def set_busy_loop(seconds: float | None) -> None:
    global BUSY_LOOP_S
    BUSY_LOOP_S = seconds


def park_idle_readers() -> bool:
    """Patch vLLM's SpinCondition in this process to use BUSY_LOOP_S (0 on CPU);
    False when vLLM has no such class (another version) or this is not a CPU engine."""
    try:
        from vllm.distributed.device_communicators import shm_broadcast
        from vllm.platforms import current_platform
    except ImportError:
        return False
    cond = getattr(shm_broadcast, "SpinCondition", None)
    if cond is None or not hasattr(cond, "wait") or getattr(cond, "_maestro_patched", False):
        return False
    if current_platform.is_cpu():
        set_busy_loop(0.0)
    original = cond.wait

    def wait(self, *args, **kwargs):
        if BUSY_LOOP_S is not None and getattr(self, "is_reader", False):
            self.busy_loop_s = BUSY_LOOP_S
        return original(self, *args, **kwargs)

    cond.wait = wait
    cond._maestro_patched = True
    return True
