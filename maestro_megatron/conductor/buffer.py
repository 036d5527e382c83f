"""Meta buffer of (h, a, A) triples for the outer loop (MAESTRO, two-timescale update)."""

from __future__ import annotations

import torch


class MetaBuffer:
    """Appends per-response triples; h is stored detached on CPU.

    h: [B, d_model], actions: [B] long, advantages: [B], tasks: [B] long (category ids,
    for per-category metrics; -1 when unknown).
    """

    def __init__(self) -> None:
        self._h: list[torch.Tensor] = []
        self._a: list[torch.Tensor] = []
        self._adv: list[torch.Tensor] = []
        self._task: list[torch.Tensor] = []

    def __len__(self) -> int:
        return sum(a.numel() for a in self._a)

    def append(self, h: torch.Tensor, actions: torch.Tensor, advantages: torch.Tensor,
               tasks: torch.Tensor | None = None) -> None:
        if not (h.shape[0] == actions.shape[0] == advantages.shape[0]):
            raise ValueError(f"batch sizes differ: h {tuple(h.shape)}, actions "
                             f"{tuple(actions.shape)}, advantages {tuple(advantages.shape)}")
        if tasks is None:
            tasks = torch.full((h.shape[0],), -1, dtype=torch.long)
        self._h.append(h.detach().float().cpu())
        self._a.append(actions.detach().long().cpu())
        self._adv.append(advantages.detach().float().cpu())
        self._task.append(tasks.detach().long().cpu())

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """All triples: (h [B, d], actions [B], advantages [B], tasks [B])."""
        if not self._a:
            raise ValueError("meta buffer is empty")
        return (torch.cat(self._h), torch.cat(self._a), torch.cat(self._adv),
                torch.cat(self._task))

    def clear(self) -> None:
        self._h, self._a, self._adv, self._task = [], [], [], []

    def keep_last(self, size: int) -> None:
        """Window: keep only the newest `size` triples."""
        if len(self) <= size:
            return
        h, a, adv, task = (t[-size:] for t in self.tensors())
        self._h, self._a, self._adv, self._task = [h], [a], [adv], [task]

    def state_dict(self) -> dict[str, torch.Tensor]:
        if not self._a:
            return {}
        h, a, adv, task = self.tensors()
        return {"h": h, "actions": a, "advantages": adv, "tasks": task}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.clear()
        if state:
            self.append(state["h"], state["actions"], state["advantages"], state["tasks"])
