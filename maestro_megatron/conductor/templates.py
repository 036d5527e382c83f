"""Action -> reward-weight templates (DESIGN.md section 3: "Actions -> weights")."""

from __future__ import annotations

import torch

SIMPLEX_TOL = 1e-6


def emphasis_templates(num_components: int, rho: float = 0.5) -> torch.Tensor:
    """K emphasis actions: w(a) = (1 - rho) / K * 1 + rho * onehot(a); -> [J=K, K]."""
    if num_components < 1:
        raise ValueError(f"num_components must be >= 1, got {num_components}")
    if not 0.0 <= rho <= 1.0:
        raise ValueError(f"rho must be in [0, 1], got {rho}")
    uniform = torch.full((num_components, num_components), (1.0 - rho) / num_components)
    return uniform + rho * torch.eye(num_components)


def simplex_violation(row) -> str | None:
    """Why a template row is not on the simplex (negative weight, sum != 1), or None."""
    values = [float(x) for x in row]
    if min(values) < 0.0:
        return f"{values} has a negative weight (not on the simplex)"
    if abs(sum(values) - 1.0) > SIMPLEX_TOL:
        return f"{values} sums to {sum(values):.6g}, not 1 (not on the simplex)"
    return None


def validate_templates(templates: torch.Tensor) -> torch.Tensor:
    """Check a [J, K] template matrix lies on the simplex row by row; returns it as float."""
    templates = torch.as_tensor(templates, dtype=torch.float32)
    if templates.dim() != 2 or templates.shape[0] < 1 or templates.shape[1] < 1:
        raise ValueError("templates must be a non-empty [J, K] matrix, "
                         f"got {tuple(templates.shape)}")
    for j, row in enumerate(templates):
        problem = simplex_violation(row.tolist())
        if problem is not None:
            raise ValueError(f"templates[{j}] = {problem}")
    return templates
