"""Clean shutdown: SIGTERM (a scheduler's stop, `kill`) ends the run like Ctrl-C does,
through every `finally`, so the rollout engine and the processes it started are
stopped on every rank instead of outliving the trainer (on a GPU node they would hold
the GPUs)."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

RETRY_S = 0.05
"""A signal that arrives inside the logging module is sent again after this delay ..."""
MAX_DEFERRALS = 100
"""... at most this many times (5 s)."""


def _inside_logging(frame) -> bool:
    """Is the main thread, at `frame`, inside the `logging` module? A SystemExit raised
    between its lock's acquire and release (e.g. in `_releaseLock`) leaves the lock held,
    and every later log call from another thread (vLLM's, during the engine's shutdown in
    the `finally` blocks) then waits forever: the run hangs instead of exiting."""
    while frame is not None:
        if frame.f_code.co_filename == logging.__file__:
            return True
        frame = frame.f_back
    return False


@contextmanager
def exit_on_signals(signals: tuple[int, ...] = (signal.SIGTERM,)) -> Iterator[None]:
    """Within the block, each of `signals` raises SystemExit(128 + signum) in the main
    thread (Python's default for SIGTERM is to die without running `finally`); if it
    arrives while the main thread is inside `logging`, it is raised a moment later."""

    deferred = 0

    def handler(signum, frame):
        # raising inside logging can leave its lock held: try again a moment later
        # (at most MAX_DEFERRALS times, then exit all the same)
        nonlocal deferred
        if _inside_logging(frame) and deferred < MAX_DEFERRALS:
            deferred += 1
            threading.Timer(RETRY_S, os.kill, (os.getpid(), signum)).start()
            return
        raise SystemExit(128 + signum)

    previous = {s: signal.signal(s, handler) for s in signals}
    try:
        yield
    finally:
        for s, old in previous.items():
            signal.signal(s, old)


def child_pids() -> set[int]:
    """The pids of this process's descendants now."""
    import psutil

    return {c.pid for c in psutil.Process(os.getpid()).children(recursive=True)}


def stop_children(grace_s: float = 10.0, keep: set[int] = frozenset()) -> list[int]:
    """Terminate every descendant of this process except `keep` (those that existed
    before the run), then kill what is still alive after `grace_s`. Returns the pids
    that had to be killed."""
    import psutil

    children = [c for c in psutil.Process(os.getpid()).children(recursive=True)
                if c.pid not in keep]
    for child in children:
        try:
            child.terminate()
        except psutil.NoSuchProcess:
            pass
    _, alive = psutil.wait_procs(children, timeout=grace_s)
    for child in alive:
        try:
            child.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(alive, timeout=grace_s)
    return [c.pid for c in alive]


class StopRequest:
    """A graceful stop asked from outside (a scheduler's advance warning before a time
    limit or preemption): SIGUSR1 to a trainer process, or the file named by
    MAESTRO_STOP_FILE appearing (the sbatch script creates it when SLURM signals the
    batch shell, which torchrun would not forward). `poll` is collective: the flag is
    all-reduced (MAX) over the world at the end of a step, so every rank stops after
    the same step and they save the checkpoint together (Megatron-LM's
    --exit-signal-handler does the same)."""

    def __init__(self) -> None:
        self.flag = False
        self.path = os.environ.get("MAESTRO_STOP_FILE")
        self._previous = signal.signal(signal.SIGUSR1, self._handler)

    def _handler(self, signum, frame) -> None:
        self.flag = True

    def poll(self, group=None) -> bool:
        import torch
        import torch.distributed as dist

        from maestro_megatron.megatron.parallel import collective_device

        local = self.flag or (self.path is not None and os.path.exists(self.path))
        value = torch.tensor([1.0 if local else 0.0], device=collective_device())
        if dist.is_initialized() and dist.get_world_size(group) > 1:
            dist.all_reduce(value, op=dist.ReduceOp.MAX, group=group)
        return bool(value.item() > 0)

    def close(self) -> None:
        signal.signal(signal.SIGUSR1, self._previous)
