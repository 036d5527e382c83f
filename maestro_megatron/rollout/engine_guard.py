"""Processes a trainer (or a standalone engine) starts never outlive it, even by SIGKILL.

A process that is SIGKILLed (the OOM killer, `scancel` on a cluster without cgroup
process tracking, a test) runs no `finally`: what it started would keep its memory, and
on a GPU node the GPUs, forever. Found by tests/integration/test_kill_resume.py: the
vLLM engine core and its worker, and megatron-core's checkpoint-writer
`multiprocessing.Manager` server (started at the first save), all left behind.

`start_guard()` starts a guard: a small process with no imports beyond the standard
library that blocks on the owner's pidfd (no polling) and, once the owner has exited,
SIGKILLs every process whose environment carries the owner's mark. Everything the owner
starts afterwards inherits the mark from its first instruction on (vLLM and megatron
start their processes by spawn with the parent's environment, and their children do
the same), so there is no window in which such a process is unguarded.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator

MARK_ENV = "MAESTRO_PROCESS_MARK"

GUARD = """# maestro process guard (maestro_megatron/rollout/engine_guard.py)
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


def guarded() -> bool:
    """Whether this process already runs a guard (a mark inherited from a parent is that
    parent's, not this process's)."""
    return os.environ.get(MARK_ENV, "").startswith(f"{os.getpid()}-")


def start_guard() -> subprocess.Popen | None:
    """From now on every process this one starts carries its mark and is SIGKILLed once
    this process has exited. Returns the guard, or None if this process has one."""
    if guarded():
        return None
    mark = f"{os.getpid()}-{secrets.token_hex(8)}"
    # unmarked (an outer guard must not kill it before it has done its work) and off
    # the owner's stdout / stderr (a reader waiting for their end would wait for it)
    env = {k: v for k, v in os.environ.items() if k != MARK_ENV}
    guard = subprocess.Popen([sys.executable, "-S", "-c", GUARD, str(os.getpid()),
                              f"{MARK_ENV}={mark}"], env=env, stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             close_fds=True)
    os.environ[MARK_ENV] = mark
    return guard


@contextlib.contextmanager
def guard_processes() -> Iterator[subprocess.Popen | None]:
    """`start_guard` for the processes started within the block only (a standalone
    engine); yields the guard (None when this process is guarded already: the trainer)."""
    old = os.environ.get(MARK_ENV)
    guard = start_guard()
    try:
        yield guard
    finally:
        if guard is not None:
            if old is None:
                os.environ.pop(MARK_ENV, None)
            else:
                os.environ[MARK_ENV] = old


def stop_guard(guard: subprocess.Popen | None) -> None:
    """End a guard whose processes were stopped normally."""
    if guard is not None and guard.poll() is None:
        guard.kill()
        guard.wait()
