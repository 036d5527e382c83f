"""Two-timescale schedule: the Conductor updates every M policy steps, E epochs each."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from maestro_megatron.conductor.buffer import MetaBuffer
from maestro_megatron.conductor.head import Conductor
from maestro_megatron.conductor.loss import conductor_loss


@dataclass(frozen=True)
class TwoTimescale:
    """update_every: M >= 1; epochs: E >= 1; buffer: clear | window; window_size."""

    update_every: int = 1
    epochs: int = 1
    buffer: str = "clear"
    window_size: int = 4096

    def __post_init__(self) -> None:
        if self.update_every < 1 or self.epochs < 1:
            raise ValueError("update_every and epochs must be >= 1")
        if self.buffer not in ("clear", "window"):
            raise ValueError(f"buffer must be clear or window, got {self.buffer!r}")

    def is_update_step(self, step: int) -> bool:
        """step counts policy steps from 1; True after every M-th step."""
        return step % self.update_every == 0


def conductor_update(conductor: Conductor, optimizer: torch.optim.Optimizer,
                     buffer: MetaBuffer, schedule: TwoTimescale, ent_coef: float,
                     grad_sync: Callable[[torch.nn.Module], None] | None = None
                     ) -> dict[str, float]:
    """E full-buffer REINFORCE steps, then clear or window the buffer.

    grad_sync (plumbing, optional) all-reduces the Conductor's gradients over
    data-parallel ranks before each step, so that replicas stay identical.
    Returns metrics of the last epoch ("conductor/loss", "conductor/entropy").
    """
    h, actions, advantages, _ = buffer.tensors()
    device = conductor.linear.weight.device
    h, actions, advantages = h.to(device), actions.to(device), advantages.to(device)
    metrics: dict[str, float] = {}
    for _ in range(schedule.epochs):
        optimizer.zero_grad(set_to_none=True)
        loss, extra = conductor_loss(conductor, h, actions, advantages, ent_coef)
        loss.backward()
        if grad_sync is not None:
            grad_sync(conductor)
        optimizer.step()
        metrics = {"conductor/loss": float(loss.detach()),
                   "conductor/entropy": float(extra["entropy"])}
    if schedule.buffer == "clear":
        buffer.clear()
    else:
        buffer.keep_last(schedule.window_size)
    metrics["conductor/num_triples"] = float(h.shape[0])
    return metrics
