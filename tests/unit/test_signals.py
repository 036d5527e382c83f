"""exit_on_signals: SIGTERM becomes SystemExit(143) in the main thread, but never while
the main thread is inside `logging` (an exception there can leave logging's lock held
and hang every later log call from another thread, as the engine's shutdown makes)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BUSY_LOGGING = """
import logging, os, signal, threading, time, traceback
from maestro_megatron.trainer.signals import exit_on_signals

class Slow(logging.Handler):
    def emit(self, record):
        time.sleep(0.005)  # the main thread spends about half its time inside logging

log = logging.getLogger("busy")
log.addHandler(Slow())
log.propagate = False
for delay in (0.2, 0.5, 0.9):
    threading.Timer(delay, os.kill, (os.getpid(), signal.SIGTERM)).start()
    try:
        with exit_on_signals():
            while True:
                log.warning("m")
                logging.getLogger("name")  # the module lock, acquired and released
                time.sleep(0.005)
    except SystemExit as exc:
        files = {f.filename for f in traceback.extract_tb(exc.__traceback__)}
        other = threading.Thread(target=lambda: logging.getLogger("after").warning("x"))
        other.start()
        other.join(5)
        print(exc.code, logging.__file__ in files, other.is_alive(), flush=True)
"""


def test_sigterm_is_raised_outside_logging_and_logging_stays_usable():
    proc = subprocess.run([sys.executable, "-c", BUSY_LOGGING], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.split("\n")[:3] == ["143 False False"] * 3, proc.stdout + proc.stderr
