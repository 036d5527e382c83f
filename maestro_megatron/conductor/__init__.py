"""The Conductor (MAESTRO's meta-policy) and its outer loop. Imports torch only."""

from maestro_megatron.conductor.buffer import MetaBuffer
from maestro_megatron.conductor.factory import conductor_from_config, schedule_from_config
from maestro_megatron.conductor.head import Conductor
from maestro_megatron.conductor.io import load_conductor, save_conductor
from maestro_megatron.conductor.loss import conductor_loss
from maestro_megatron.conductor.schedule import TwoTimescale, conductor_update
from maestro_megatron.conductor.templates import emphasis_templates, validate_templates

__all__ = ["Conductor", "MetaBuffer", "TwoTimescale", "conductor_from_config", "conductor_loss",
           "conductor_update", "emphasis_templates", "load_conductor", "save_conductor",
           "schedule_from_config", "validate_templates"]
