"""GRPO math: advantages, KL estimators, the policy loss. Imports torch only."""

from maestro_megatron.algorithms.advantages import (
    ADVANTAGE_ESTIMATORS,
    batch_whitened,
    group_advantages,
)
from maestro_megatron.algorithms.kl import KL_ESTIMATORS, kl_estimate, masked_seq_mean
from maestro_megatron.algorithms.policy_loss import LOSS_AGGREGATIONS, policy_loss

__all__ = ["ADVANTAGE_ESTIMATORS", "KL_ESTIMATORS", "LOSS_AGGREGATIONS", "batch_whitened",
           "group_advantages", "kl_estimate",
           "masked_seq_mean", "policy_loss"]
