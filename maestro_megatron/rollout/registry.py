"""`ENGINES`: a recipe's `rollout.engine` name -> engine class. Engine modules import
their backend (vLLM) only when an engine is constructed, so this is cheap to import
(the recipe validator checks names against it)."""

from __future__ import annotations

from maestro_megatron.rollout.base import RolloutEngine
from maestro_megatron.rollout.vllm_engine import VLLMEngine

ENGINES: dict[str, type[RolloutEngine]] = {"vllm": VLLMEngine}
