"""Reward components, their normalisation and the scalar reward. Imports torch only."""

from maestro_megatron.rewards.batch import PreferenceScorer, RewardBatch
from maestro_megatron.rewards.components import (
    NEEDS_POLICY,
    NEEDS_PROXY,
    NEEDS_SCORER,
    REWARDS,
    RewardError,
    RewardSpec,
    compute_rewards,
    ent_reward,
    fmt_reward,
    has_reference,
    len_reward,
    ppl_reward,
    pref_reward,
    register_reward,
    reward_needs,
    strip_answer,
)
from maestro_megatron.rewards.normalize import normalize_components
from maestro_megatron.rewards.scalarize import scalar_reward

__all__ = ["NEEDS_POLICY", "NEEDS_PROXY", "NEEDS_SCORER", "REWARDS", "PreferenceScorer",
           "RewardBatch", "RewardError",
           "RewardSpec", "compute_rewards", "ent_reward", "fmt_reward", "has_reference",
           "len_reward", "normalize_components", "ppl_reward", "pref_reward", "register_reward",
           "reward_needs", "scalar_reward", "strip_answer"]
