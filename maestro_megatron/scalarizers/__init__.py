"""Scalarizers: reward vector -> weights, per response (torch only).

`SCALARIZERS` maps `scalarizer.name` to a class; the Conductor is one entry, the
baselines are the others. Importing this package registers the built-in ones.
"""

from maestro_megatron.scalarizers.base import (
    SCALARIZERS,
    ReplicaSync,
    Scalarization,
    Scalarizer,
    ScalarizerContext,
    build_scalarizer,
    register_scalarizer,
    step_uniforms,
)
from maestro_megatron.scalarizers.conductor import ConductorScalarizer
from maestro_megatron.scalarizers.dynaopt import DynaoptScalarizer
from maestro_megatron.scalarizers.fixed import EqualScalarizer, RandomScalarizer, SingleScalarizer
from maestro_megatron.scalarizers.step import Scalarized, scalarize_step, sequence_kl

__all__ = ["SCALARIZERS", "ConductorScalarizer", "DynaoptScalarizer", "EqualScalarizer",
           "RandomScalarizer",
           "ReplicaSync", "Scalarization", "Scalarized", "Scalarizer", "ScalarizerContext",
           "SingleScalarizer", "build_scalarizer", "register_scalarizer", "scalarize_step",
           "sequence_kl", "step_uniforms"]
