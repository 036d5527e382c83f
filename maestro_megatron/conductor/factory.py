"""Build the Conductor and its schedule from the recipe's conductor section."""

from __future__ import annotations

import torch

from maestro_megatron.conductor.head import Conductor
from maestro_megatron.conductor.schedule import TwoTimescale
from maestro_megatron.conductor.templates import emphasis_templates


def conductor_from_config(cfg, d_model: int, num_components: int) -> Conductor:
    """cfg: ConductorConfig. Templates are cfg.templates or K emphasis actions with rho."""
    if cfg.templates is not None:
        templates = torch.tensor(cfg.templates, dtype=torch.float32)
    else:
        templates = emphasis_templates(num_components, cfg.rho)
    if templates.shape[1] != num_components:
        raise ValueError(f"conductor.templates have {templates.shape[1]} columns, "
                         f"rewards.components has {num_components}")
    return Conductor(d_model, templates, tau=cfg.tau, p_min=cfg.p_min)


def schedule_from_config(cfg) -> TwoTimescale:
    return TwoTimescale(update_every=cfg.update_every, epochs=cfg.epochs, buffer=cfg.buffer,
                        window_size=cfg.window_size)
