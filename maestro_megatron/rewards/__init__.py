"""Reward components, their normalisation and the scalarizers. Imports torch only."""

from maestro_megatron.rewards.batch import PreferenceScorer, RewardBatch
from maestro_megatron.rewards.components import (
    REWARDS,
    compute_rewards,
    ent_reward,
    fmt_reward,
    len_reward,
    ppl_reward,
    pref_reward,
    register_reward,
    strip_answer,
)
from maestro_megatron.rewards.normalize import normalize_components
from maestro_megatron.rewards.scalarize import (
    SCALARIZERS,
    build_scalarizer,
    register_scalarizer,
    scalar_reward,
)

__all__ = ["REWARDS", "SCALARIZERS", "PreferenceScorer", "RewardBatch", "build_scalarizer",
           "compute_rewards", "ent_reward", "fmt_reward", "len_reward", "normalize_components",
           "ppl_reward", "pref_reward", "register_reward", "register_scalarizer",
           "scalar_reward", "strip_answer"]
