"""Console output of `maestro train`: quiet by default, everything with `run.verbose=true`
(or MAESTRO_VERBOSE=1).

Quiet silences, at their source, messages known to be harmless here: Python warnings
of megatron-core / torch / vLLM (precise message filters below, each with its reason),
the progress bars of transformers and huggingface_hub, and vLLM's engine processes
(`maestro_megatron.rollout.vllm_logging`). Errors and unknown warnings still show.
"""

from __future__ import annotations

import os
import warnings

VERBOSE_ENV = "MAESTRO_VERBOSE"

HARMLESS_WARNINGS: tuple[tuple[str, type[Warning], str], ...] = (
    # (message regex, category, module regex)
    # megatron-core falls back to its torch implementations (the ones the CPU path is
    # built on) when Transformer Engine / Apex are absent, as on CPU.
    (r"(Transformer Engine and )?Apex (is|are) not installed", UserWarning,
     r"megatron\.core\."),
    # megatron-core 0.16.1 calls the old names of these collectives (same operation).
    (r"`torch\.distributed\.(reduce_scatter_tensor|all_gather_into_tensor)` is deprecated",
     FutureWarning, r"torch\.distributed\.c10d_logger"),
    # vLLM's Triton dispatcher scans module attributes and touches this deprecated alias.
    (r"`torch\.distributed\.reduce_op` is deprecated", FutureWarning,
     r"vllm\.triton_utils\."),
    # megatron's distributed optimizer zero_grad reads .grad of its fp32 shard views
    # (its own comment: "throws grad-access warning"); the read returns None (on CPU
    # `cpu_compat` handles this where the read happens).
    (r"The \.grad attribute of a Tensor that is not a leaf Tensor", UserWarning,
     r"megatron\.core\.optimizer\."),
)

CHILD_WARNINGS = (
    # The multiprocessing resource tracker reports the shared memory of vLLM's
    # force-killed engine core as "leaked" while it unlinks it, i.e. cleans it up.
    "ignore:resource_tracker:UserWarning",
    # vLLM's engine processes: the Triton dispatcher's scan (see HARMLESS_WARNINGS).
    "ignore:`torch.distributed.reduce_op` is deprecated:FutureWarning",
)
"""PYTHONWARNINGS entries for the processes started from here (spawned processes do not
inherit this process's filters): a message is a literal prefix and holds no ':'."""


def is_verbose(verbose: bool = False) -> bool:
    """`verbose`, or MAESTRO_VERBOSE=1 in the environment."""
    return verbose or os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def configure_quiet(verbose: bool = False) -> bool:
    """Silence known-harmless output in this process and the ones it starts (call before
    megatron / vLLM are imported). Does nothing when verbose; returns whether it acted."""
    if is_verbose(verbose):
        return False
    for message, category, module in HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category, module=module)
    current = [w for w in os.environ.get("PYTHONWARNINGS", "").split(",") if w]
    os.environ["PYTHONWARNINGS"] = ",".join(
        current + [w for w in CHILD_WARNINGS if w not in current])
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # and huggingface_hub's: load / save bars
    from maestro_megatron.rollout.vllm_logging import quiet_vllm_logs

    quiet_vllm_logs()
    return True


def quiet_spawned_process() -> None:
    """In a vLLM engine process of a quiet run: filter vLLM's import-time messages.

    vLLM's CPU engine processes are spawned, and a spawned process imports the parent's
    main module (here `maestro_megatron.cli`) before anything else, so the CLI calls this
    at import; it only acts where the parent set up quiet vLLM logging.
    """
    if "VLLM_LOGGING_CONFIG_PATH" not in os.environ:
        return  # not a quiet engine process: nothing to import
    from maestro_megatron.rollout import vllm_logging

    if vllm_logging.uses_quiet_config():
        vllm_logging.filter_import_time_messages()
