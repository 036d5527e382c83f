"""vLLM's console output in every engine process: WARNING and up, minus known-harmless notes.

vLLM reads ``VLLM_LOGGING_CONFIG_PATH`` (a `logging.config.dictConfig` JSON file) when
`vllm.LLM` is built and hands it to the engine-core and worker processes it spawns
(`vllm.config.logging.LoggingConfig`), so one file configures them all. That file,
`vllm_logging.json` next to this module, logs the ``vllm`` logger at WARNING through
:class:`HarmlessFilter`, which those processes import by its dotted name (the package is
installed).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

CONFIG_FILE = Path(__file__).with_name("vllm_logging.json")
CONFIG_ENV = "VLLM_LOGGING_CONFIG_PATH"
LEVEL_ENV = "VLLM_LOGGING_LEVEL"
IMPORT_TIME_LOGGERS = ("vllm.triton_utils.importing",)
"""Loggers that speak while vllm is imported, before any config applies: their records
reach Python's last-resort stderr handler, so the filter sits on the logger itself."""


class HarmlessFilter(logging.Filter):
    """Drops vLLM messages that are known to be harmless for this project.

    - "RotaryEmbedding: Failed to load weights": the rotary layer has no loadable weights
      (its cos/sin cache is computed), so a refit never sends it a tensor.
    - "ParallelLMHead: Failed to load weights": our models tie the head to the embedding,
      so the refit sends no separate lm_head tensor. The trainer checks every step that
      the engine samples from exactly its weights (rollout/logprob_gap_max < 1e-3 in
      tests/integration/test_train_tiny.py).
    - Triton / triton-cpu, libtcmalloc / libiomp in LD_PRELOAD, "Enforce eager set",
      "Inductor compilation was disabled", "Model Runner V2 requires Triton": advice for
      a faster CPU set-up; the engine runs correctly without it (eager is our choice on
      CPU: no torch.compile start-up).
    - "Reset SSM cache type to float32": vLLM's CPU platform note about the state cache
      of Mamba-style layers; the project's models have none.
    - Warnings tagged "[shutdown]" (workers still running after the grace period, force
      killing ...): vLLM's normal teardown of its engine core and worker processes after
      `VLLMEngine.close()`; errors still show.
    """

    DROPPED = (
        "RotaryEmbedding: Failed to load weights",
        "ParallelLMHead: Failed to load weights",
        "Triton is installed, but doesn't include CPU backend",
        "Triton is not installed. triton-cpu is expected",
        "Model Runner V2 requires Triton",
        "is not found in LD_PRELOAD",
        "Enforce eager set",
        "Inductor compilation was disabled",
        "Reset SSM cache type to float32",
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if record.levelno < logging.ERROR and message.startswith("[shutdown]"):
            return False
        return not any(text in message for text in self.DROPPED)


def uses_quiet_config() -> bool:
    """Whether this process (and the engine processes it starts) uses `CONFIG_FILE`."""
    return os.environ.get(CONFIG_ENV) == str(CONFIG_FILE)


def filter_import_time_messages() -> None:
    """Put `HarmlessFilter` on the loggers vLLM uses at import time (idempotent)."""
    for name in IMPORT_TIME_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, HarmlessFilter) for f in logger.filters):
            logger.addFilter(HarmlessFilter())


def quiet_vllm_logs() -> None:
    """Use `CONFIG_FILE` here and in every engine process started from here, unless the
    user configured vLLM's logging (VLLM_LOGGING_CONFIG_PATH or VLLM_LOGGING_LEVEL)."""
    if CONFIG_ENV in os.environ or LEVEL_ENV in os.environ:
        return
    os.environ[CONFIG_ENV] = str(CONFIG_FILE)
    # An already imported vllm was configured with its defaults; new records follow this.
    logging.getLogger("vllm").setLevel(logging.WARNING)
    filter_import_time_messages()

