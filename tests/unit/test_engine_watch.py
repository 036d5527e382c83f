"""engine_watch.exit_cause: how a dead engine process ended, also when another thread
(vLLM's own monitor) reaps it at the same moment."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import threading

import pytest

from maestro_megatron.rollout.engine_watch import exit_cause


def _die_by(code: int) -> None:
    if code < 0:
        os.kill(os.getpid(), -code)
    os._exit(code)


@pytest.mark.parametrize("code, cause", [(-signal.SIGKILL, "killed by signal 9"),
                                         (3, "exit code 3")])
def test_exit_cause_names_the_signal_or_the_code(code, cause):
    proc = mp.get_context("spawn").Process(target=_die_by, args=(code,))
    proc.start()
    assert exit_cause(proc) == cause


def test_exit_cause_with_a_second_thread_reaping_the_process():
    """Both threads wait for the same sentinel, then both reap; whichever loses the
    waitpid race still reports the signal (it read None before the fix)."""
    for _ in range(5):
        proc = mp.get_context("spawn").Process(target=_die_by, args=(-signal.SIGKILL,))
        proc.start()
        other = threading.Thread(target=proc.join)
        other.start()
        assert exit_cause(proc) == "killed by signal 9"
        other.join()
