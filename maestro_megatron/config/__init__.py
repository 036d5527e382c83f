"""Recipe configuration: frozen dataclasses, YAML loading, validation."""

from maestro_megatron.config.loader import (
    ConfigError,
    apply_overrides,
    load_recipe,
    recipe_from_dict,
    recipe_to_dict,
)
from maestro_megatron.config.schema import (
    ConductorConfig,
    DataConfig,
    GRPOConfig,
    ModelConfig,
    ParallelConfig,
    PrecisionConfig,
    Recipe,
    RewardsConfig,
    RolloutConfig,
    RunConfig,
    ScalarizerConfig,
)
from maestro_megatron.config.validate import check_layout

__all__ = [
    "ConductorConfig", "ConfigError", "DataConfig", "GRPOConfig", "ModelConfig",
    "ParallelConfig", "PrecisionConfig", "Recipe", "RewardsConfig", "RolloutConfig",
    "RunConfig", "ScalarizerConfig", "apply_overrides", "check_layout", "load_recipe",
    "recipe_from_dict", "recipe_to_dict",
]
