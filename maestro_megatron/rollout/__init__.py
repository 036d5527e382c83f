"""Rollout engines: G sampled responses per prompt, refit in place (DESIGN.md sections 2, 5).

`ENGINES` maps a recipe's `rollout.engine` name to its class; engine classes import
their backend (vLLM) only when constructed.
"""

from __future__ import annotations

from maestro_megatron.rollout.base import (
    DEFAULT_BUCKET_BYTES,
    EngineDiedError,
    EngineFeatureUnsupported,
    Response,
    RolloutEngine,
    RolloutGroup,
    SamplingConfig,
)
from maestro_megatron.rollout.refit import (
    RefitStats,
    iter_buckets,
    refit_engine,
    refit_policy,
    serialize_bucket,
    verify_refit,
)
from maestro_megatron.rollout.registry import ENGINES
from maestro_megatron.rollout.vllm_engine import VLLMEngine


def build_engine(name: str, model: str, **kwargs) -> RolloutEngine:
    """Construct the engine registered as `name` for the HF model directory `model`."""
    if name not in ENGINES:
        raise KeyError(f"unknown rollout engine {name!r}; registered: {sorted(ENGINES)}")
    return ENGINES[name](model, **kwargs)


__all__ = [
    "DEFAULT_BUCKET_BYTES", "ENGINES", "EngineDiedError", "EngineFeatureUnsupported",
    "RefitStats", "Response", "RolloutEngine", "RolloutGroup", "SamplingConfig", "VLLMEngine",
    "build_engine",
    "iter_buckets", "refit_engine", "refit_policy", "serialize_bucket", "verify_refit",
]
