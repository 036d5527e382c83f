"""`maestro plan`: the bytes each GPU holds in each phase of a MAESTRO step, computed
from the recipe alone before anything is built (docs/memory_plan.md).

params.py, activations.py, roles.py, memory.py are pure arithmetic (no torch, no
megatron); build.py reads the reward model's config.json; report.py formats.
"""

from maestro_megatron.plan.build import check_train_memory, plan_recipe, reward_model_shape
from maestro_megatron.plan.memory import GB, ITEMS, Assumptions, Plan, plan_memory
from maestro_megatron.plan.report import failure_message, format_plan, plan_to_dict, verdict

__all__ = ["GB", "ITEMS", "Assumptions", "Plan", "check_train_memory", "failure_message",
           "format_plan", "plan_memory", "plan_recipe", "plan_to_dict", "reward_model_shape",
           "verdict"]
