"""Frozen weights kept in host memory and copied onto the GPU only while they are used.

The reference model (``memory.offload_reference``) and the preference reward model
(``memory.offload_reward_model``) never change during a run, so their weights need no
second device copy between uses: each parameter keeps one host copy (pinned on a GPU
machine, for asynchronous copies) and an empty (0-element) device tensor in its place;
:func:`resident` gives the module device copies for the length of a block and drops
them after (NeMo-RL swaps its reference the same way). On a CPU run the host is the
device: the block uses the host copies themselves, nothing is copied.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

_HOST = "_maestro_host_copy"


def _tensors(modules) -> list[torch.Tensor]:
    return [t for m in modules for t in (*m.parameters(), *m.buffers())]


def offload(modules: list[torch.nn.Module]) -> None:
    """Move every parameter and buffer of `modules` to the host (once; frozen modules).
    `device` of `resident` must then be the one they were on."""
    for t in _tensors(modules):
        if t.requires_grad:
            raise ValueError("offload: only frozen modules (requires_grad=False) move out")
        host = t.data.to("cpu", copy=True)
        if torch.cuda.is_available():
            host = host.pin_memory()
        setattr(t, _HOST, host)
        t.data = _empty_like(t)


def is_offloaded(modules: list[torch.nn.Module]) -> bool:
    return any(hasattr(t, _HOST) for t in _tensors(modules))


@contextmanager
def resident(modules: list[torch.nn.Module], device: torch.device | str | None):
    """Inside the block the offloaded `modules` live on `device`; after it, on the host
    again (their device copies freed). Modules that were never offloaded: nothing."""
    tensors = [t for t in _tensors(modules) if hasattr(t, _HOST)]
    if not tensors:
        yield
        return
    for t in tensors:
        t.data = getattr(t, _HOST).to(device, non_blocking=True,
                                      memory_format=torch.contiguous_format)
    try:
        yield
    finally:
        for t in tensors:
            t.data = _empty_like(t)


def _empty_like(t: torch.Tensor) -> torch.Tensor:
    """What an offloaded tensor holds outside `resident`: 0 elements on its device, so
    a use outside the block fails at once (a shape error) instead of computing."""
    return torch.empty(0, dtype=t.dtype, device=t.device)
