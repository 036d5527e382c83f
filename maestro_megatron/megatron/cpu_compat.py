"""Make megatron-core 0.16.1 run on CPU (gloo) when no CUDA device exists.

megatron-core assumes a GPU in a handful of places that sit on every code path we
use (model construction, the pipeline schedules, p2p communication, the DDP grad
buffers, the RNG tracker). None of them needs a GPU for its *meaning*; they just name
the device. This module redirects exactly those names to the CPU, and nothing else:

1. ``torch.cuda.current_device()`` -> ``torch.device("cpu")``: megatron allocates
   weights, p2p receive buffers and grad buffers with ``device=torch.cuda.current_device()``.
2. ``torch.cuda.synchronize`` / ``current_stream`` / ``default_stream`` / ``stream`` /
   ``Event`` -> no-ops: the schedules and DDP synchronise or wait on streams; on CPU
   every op is already synchronous.
3. The CUDA RNG: ``tensor_parallel.random`` keeps per-parallel-region RNG states
   (``get_cuda_rng_tracker().fork()`` around weight init and dropout) by reading and
   writing the CUDA generator. We point its get/set helpers and
   ``torch.cuda.{get_rng_state,set_rng_state,manual_seed}`` at the CPU generator, so the
   tracker swaps CPU generator states with the same semantics.
4. Literal ``device="cuda"`` allocations (e.g. ``total_num_tokens`` in every schedule),
   ``Tensor.cuda()`` (tied-embedding sync across pipeline stages) and
   ``Tensor.type() == "torch.cuda.FloatTensor"`` checks (optimizers, grad clipping): a
   ``TorchFunctionMode``, pushed once, rewrites a CUDA device argument to CPU, makes
   ``.cuda()`` a no-op and names CPU tensor types by their CUDA names.
5. Pipeline p2p over gloo: :func:`config_overrides` turns off batched p2p (see there).
6. Warnings raised inside a torch call name this module (the mode's frame); the one
   known-harmless one, megatron's optimizer reading unset ``.grad`` of its fp32 views,
   is silenced where it happens (:func:`_optimizer_view_grad`).
7. Code that runs inside backward runs without the mode: torch routes
   ``torch.autograd.backward`` through function modes and pops a mode while its
   handler runs. Activation recomputation (``memory.recompute``) re-runs layer forwards
   there; their one literal CUDA allocation, the default causal mask of the local
   spec's softmax, is pointed at the CPU where softmax looks it up
   (:func:`_patch_megatron_masks`).

Activate with :func:`enable_cpu_compat` before building anything; it is a no-op when
CUDA is available, and idempotent.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import warnings

import torch
from torch.overrides import TorchFunctionMode

_ENABLED = False
_MODE: TorchFunctionMode | None = None
_CPU = torch.device("cpu")


def _is_cuda_device(device: object) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return False


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device arguments of torch calls to CPU (see module docstring, 4)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            # On CPU the tensor is already where the caller wants it.
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            # The (distributed) optimizer and grad clipping dispatch on
            # ``param.type() == "torch.cuda.FloatTensor"``; report CPU tensors by the CUDA
            # name so fp32/bf16 params are recognised.
            name = func(*args)
            return name.replace("torch.", "torch.cuda.", 1) if ".cuda." not in name else name
        if _is_cuda_device(kwargs.get("device")):
            kwargs = {**kwargs, "device": _CPU}
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], _CPU, *args[2:])
        if _is_grad_read(func) and not (args[0].is_leaf or args[0].retains_grad) \
                and sys._getframe(1).f_globals.get("__name__", "").startswith(_OPTIMIZER):
            return _optimizer_view_grad(args[0])
        return func(*args, **kwargs)


_GRAD = torch._C.TensorBase.grad
_OPTIMIZER = "megatron.core.optimizer"
_UNSET_GRAD_OF_VIEW = r"The \.grad attribute of a Tensor that is not a leaf Tensor"


def _is_grad_read(func) -> bool:
    # A property reaches the mode as its descriptor's bound __get__ (or __set__).
    return getattr(func, "__self__", None) is _GRAD and func.__name__ == "__get__"


def _optimizer_view_grad(tensor: torch.Tensor):
    """``tensor.grad`` of a non-leaf, read by megatron's optimizer, without torch's
    warning for an unset one.

    megatron's distributed optimizer keeps fp32 shards as views of the parameters; its
    ``zero_grad`` reads their ``.grad`` (which ``step`` sets), and while it is unset the
    read returns None and torch warns (megatron's own comment: "throws grad-access
    warning"). Every torch call passes through this mode, so the warning would name this
    module; only this read is silenced, a non-leaf ``.grad`` read elsewhere still warns.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", _UNSET_GRAD_OF_VIEW, UserWarning)
        return tensor.grad


class _NullStream:
    """Stands in for a torch.cuda.Stream / Event: every wait/sync is already done on CPU."""

    def __init__(self, *args, **kwargs) -> None:
        pass

    def __getattr__(self, name):
        return lambda *args, **kwargs: None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> bool:
        return False


def _null_stream_context(stream=None):
    return contextlib.nullcontext()


def _cpu_manual_seed(seed: int) -> None:
    # Not torch.manual_seed: that calls torch.cuda.manual_seed_all, i.e. back here.
    torch.default_generator.manual_seed(int(seed))


def _get_cpu_rng_state(device=None, clone: bool = False, graph_safe: bool = False):
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state: torch.Tensor, device=None, graph_safe: bool = False) -> None:
    torch.set_rng_state(new_state)


def _patch_torch_cuda() -> None:
    cuda = torch.cuda
    cuda.current_device = lambda: _CPU
    cuda.synchronize = lambda device=None: None
    cuda.current_stream = lambda device=None: _NullStream()
    cuda.default_stream = lambda device=None: _NullStream()
    cuda.Stream = _NullStream
    cuda.Event = _NullStream
    cuda.stream = _null_stream_context
    cuda.manual_seed = _cpu_manual_seed
    cuda.get_rng_state = _get_cpu_rng_state
    cuda.set_rng_state = _set_cpu_rng_state


class _DropSharedGeneratorWarning(logging.Filter):
    """The tracker warns when the CPU RNG changes inside ``fork()``; here the "CUDA" RNG
    *is* the CPU RNG, so it always changes, by design."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "CPU RNG state changed within GPU RNG context" not in record.getMessage()


def _patch_megatron_rng() -> None:
    # random.py binds these helpers at module level and calls them directly (they index
    # torch.cuda.default_generators), so they are replaced in that module.
    from megatron.core.tensor_parallel import random as mrandom

    mrandom._get_cuda_rng_state = _get_cpu_rng_state
    mrandom._set_cuda_rng_state = _set_cpu_rng_state
    logging.getLogger(mrandom.__name__).addFilter(_DropSharedGeneratorWarning())


def _cpu_causal_mask(sq: int) -> torch.Tensor:
    # megatron's get_default_causal_mask (True above the diagonal = masked), on the CPU.
    return torch.triu(torch.ones(sq, sq, device=_CPU), diagonal=1).bool()


def _patch_megatron_masks() -> None:
    # fused_softmax binds the helper at import; its lookup is the one to replace.
    from megatron.core.fusions import fused_softmax

    fused_softmax.get_default_causal_mask = _cpu_causal_mask


def enable_cpu_compat() -> bool:
    """Redirect megatron-core's CUDA-only calls to CPU. Returns True when active.

    No-op (returns False) when CUDA is available. Safe to call more than once.
    """
    global _ENABLED, _MODE
    if torch.cuda.is_available():
        return False
    if _ENABLED:
        return True
    _patch_torch_cuda()
    _patch_megatron_rng()
    _patch_megatron_masks()
    _MODE = _CudaToCpuMode()
    _MODE.__enter__()  # stays pushed for the life of the process
    _ENABLED = True
    return True


def config_overrides() -> dict:
    """TransformerConfig fields the CPU (gloo) path needs; {} on GPU.

    ``batch_p2p_comm=False``: batched p2p posts ``send_prev, recv_prev, send_next,
    recv_next`` in one batch. With PP=2 and interleaving, prev and next are the same peer,
    and gloo matches same-tag messages between a pair in posting order, so an activation
    lands in the gradient buffer (silently: same shape). The unbatched path orders sends
    and receives by rank parity and uses separate groups per direction.
    """
    return {} if torch.cuda.is_available() else {"batch_p2p_comm": False}


def cpu_compat_enabled() -> bool:
    """Whether :func:`enable_cpu_compat` is active in this process."""
    return _ENABLED
