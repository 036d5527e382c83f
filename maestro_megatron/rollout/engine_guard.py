"""The vLLM engine's processes never outlive the process that started them.

A trainer that is SIGKILLed (the OOM killer, `scancel` on a cluster without cgroup
process tracking, a test) runs no `finally`: its engine core and worker processes would
keep their memory, and on a GPU node the GPUs, forever (seen on the local SLURM
cluster: an engine core still starting when its trainer was killed, left behind).

`guard_engine_processes()` starts a guard: a small process with no imports beyond the
standard library that blocks on the owner's pidfd (no polling) and, once the owner has
exited, SIGKILLs every process whose environment carries this engine's mark. The
engine's processes inherit the mark from the environment they are started in (vLLM
starts them by spawn, and they start their workers the same way), from their first
instruction on, so there is no window in which a started engine process is unguarded.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

MARK_ENV = "MAESTRO_ENGINE_MARK"

GUARD = """# maestro engine guard (maestro_megatron/rollout/engine_guard.py)
import os, select, signal, sys
signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the owner; it cleans up
owner, mark = int(sys.argv[1]), sys.argv[2].encode()
try:
    select.select([os.pidfd_open(owner)], [], [])  # readable once the owner exited
except ProcessLookupError:
    pass
for pid in [int(p) for p in os.listdir("/proc") if p.isdigit()]:
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            if mark in f.read().split(b"\\0"):
                os.kill(pid, signal.SIGKILL)
    except OSError:
        pass
"""


@contextlib.contextmanager
def guard_engine_processes() -> Iterator[subprocess.Popen]:
    """Within the block, processes started (the engine's) carry a fresh mark in their
    environment; yields the guard process, which SIGKILLs them once this process has
    exited. Stop the guard (`stop_guard`) after closing the engine normally."""
    mark = f"{os.getpid()}-{secrets.token_hex(8)}"
    guard = subprocess.Popen([sys.executable, "-S", "-c", GUARD, str(os.getpid()),
                              f"{MARK_ENV}={mark}"], stdin=subprocess.DEVNULL,
                             close_fds=True)
    old = os.environ.get(MARK_ENV)
    os.environ[MARK_ENV] = mark
    try:
        yield guard
    finally:
        if old is None:
            os.environ.pop(MARK_ENV, None)
        else:
            os.environ[MARK_ENV] = old


def stop_guard(guard: subprocess.Popen | None) -> None:
    """End the guard of an engine that was closed normally."""
    if guard is not None and guard.poll() is None:
        guard.kill()
        guard.wait()
