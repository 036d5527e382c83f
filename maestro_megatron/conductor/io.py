"""The Conductor on disk: its weights beside its config (templates, tau, p_min,
d_model), never in the HF weight name space (DESIGN.md section 5)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from maestro_megatron.conductor.head import Conductor


def conductor_config(conductor: Conductor) -> dict[str, Any]:
    """What it takes to rebuild the head: d_model, tau, p_min, templates [J, K]."""
    return {"d_model": conductor.d_model, "tau": conductor.tau, "p_min": conductor.p_min,
            "templates": conductor.templates.detach().cpu().clone()}


def check_conductor_config(saved: dict[str, Any], conductor: Conductor) -> None:
    """Raise ValueError naming the first `conductor.<key>` that differs from `saved`."""
    mine = conductor_config(conductor)
    for key in ("d_model", "tau", "p_min"):
        if saved[key] != mine[key]:
            raise ValueError(f"conductor.{key}: checkpoint has {saved[key]}, run has {mine[key]}")
    if not torch.equal(saved["templates"], mine["templates"]):
        raise ValueError("conductor.templates: checkpoint templates differ from the run's")


def save_conductor(path: Path, conductor: Conductor, components: tuple[str, ...]) -> None:
    """Write weights + config + component names atomically (temp file, then rename)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({**conductor_config(conductor), "state_dict": conductor.state_dict(),
                "components": list(components)}, tmp)
    tmp.replace(path)


def load_conductor(path: Path) -> tuple[Conductor, list[str]]:
    """-> (the Conductor on CPU, its component names)."""
    blob = torch.load(path, map_location="cpu")
    conductor = Conductor(blob["d_model"], blob["templates"], tau=blob["tau"],
                          p_min=blob["p_min"])
    conductor.load_state_dict(blob["state_dict"])
    return conductor, blob["components"]
