"""A CUDA device with no memory behind it: the GPU code path on a CPU-only torch build.

Used by the fake-GPU step (`maestro_megatron.trainer.fake_step`) to run the trainer's
own step functions at the 8B / 70B recipes' real shapes, in one process per rank role,
with no GPU. Tensors on the "GPU" are ``meta`` tensors: shapes, dtypes and strides, no
storage, so an 8B model costs nothing, and every op megatron-core runs has a meta
kernel. Why not ``FakeTensorMode``: on this CPU build ``.to('cuda')`` raises even under
that mode, and the models are built by megatron-core with ``device=current_device()``.

Three pieces, enabled together by :func:`enable_fake_gpu` (for a dedicated process: not
undone):

1. ``torch.cuda`` answers as ``num_gpus`` GPUs of ``memory_bytes`` each: is_available,
   device_count, current_device 0, get_device_properties, memory_allocated (the live
   bytes below); streams, events and synchronize do nothing; the CUDA RNG (megatron's
   tracker) is the CPU generator, as in `cpu_compat`.
2. :class:`_CudaIsMetaMode` (a TorchFunctionMode): a CUDA device argument, ``.cuda()``
   and ``.to('cuda')`` mean ``meta``; a meta tensor reports ``is_cuda`` and a
   ``torch.cuda.*`` type name; ``pin_memory()`` keeps the host tensor.
3. :class:`DeviceCheck` (a TorchDispatchMode) sees every aten and c10d op:
   - an op whose tensor arguments sit on the host and on the GPU raises
     :class:`DeviceMismatch` (what CUDA raises), except what CUDA allows: 0-dim host
     scalars, host index tensors, and explicit copies between devices;
   - a collective given a host tensor raises (NCCL has no host backend);
   - a host read of GPU data (``.item()``, ``.tolist()``, ``.cpu()``) returns zeros
     (there is no data; a scalar bool reads True, so "all finite" checks pass) and is
     counted by the line that asked: on a GPU each is a device-to-host synchronisation;
   - live GPU bytes are tracked per storage (a storage is counted once, freed when
     its last tensor goes), with a peak per named phase (:meth:`DeviceCheck.phase`).

Two megatron-core fallbacks for a machine without apex / Transformer Engine are
replaced by what a GPU run gets from TE: the gradient norm on the device
(:func:`_device_grad_norm`).

Meta tensors alone would let some mixes pass that CUDA refuses (``F.embedding`` of host
ids with a meta weight computes happily): the dispatch check is what makes a CPU tensor
reaching the model fail here as it fails on a GPU.
"""

from __future__ import annotations

import contextlib
import traceback
import weakref
from collections import Counter
from dataclasses import dataclass

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

META = torch.device("meta")
_CPU = torch.device("cpu")


class DeviceMismatch(RuntimeError):
    """An op mixed host and GPU tensors, or a collective got a host tensor."""


def _is_cuda(device: object) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaIsMetaMode(TorchFunctionMode):
    """CUDA device names -> meta (module docstring, 2)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is torch.Tensor.cuda:
            return args[0].to(META)
        if func is torch.tensor and args and isinstance(args[0], (list, tuple)) and \
                any(isinstance(t, torch.Tensor) and t.device.type == "meta" for t in args[0]):
            # torch.tensor([gpu scalars]) reads each on the host (megatron's grad norm
            # without apex does); meta has no values: the same shape, stacked.
            return torch.stack([torch.as_tensor(t, device=META) for t in args[0]]).to(
                kwargs.get("dtype") or torch.float32)
        if func is torch.Tensor.pin_memory:
            return args[0]
        if getattr(func, "__name__", "") == "__get__" and \
                getattr(func, "__self__", None) is torch._C.TensorBase.is_cuda:
            return args[0].device.type in ("meta", "cuda")
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            name = func(*args)
            return name.replace("torch.meta.", "torch.cuda.", 1)
        if _is_cuda(kwargs.get("device")):
            kwargs = {**kwargs, "device": META}
        if func in (torch.Tensor.to, torch.Tensor.new_empty, torch.Tensor.new_zeros) \
                and len(args) > 1 and _is_cuda(args[1]) and not isinstance(args[1], int):
            args = (args[0], META, *args[2:])
        elif func is torch.Tensor.to and len(args) > 1 and isinstance(args[1], int) \
                and not isinstance(args[1], bool):
            args = (args[0], META, *args[2:])
        return func(*args, **kwargs)


_COPIES = {"_to_copy", "copy_", "_copy_from", "_copy_from_and_resize", "lift_fresh",
           "lift_fresh_copy", "detach", "alias", "set_"}
_HOST_INDEX_OK = {"index", "index_put_", "index_put", "_index_put_impl_", "index_select"}


@dataclass
class PhasePeak:
    """Live GPU bytes when a phase started and their peak inside it."""

    start: int
    peak: int


class DeviceCheck(TorchDispatchMode):
    """Device-mix check, host-read counter and live-bytes tracker (module docstring, 3)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: dict[int, int] = {}
        self.host_reads: Counter[str] = Counter()
        self.collectives: Counter[str] = Counter()
        """c10d ops seen (each had only GPU tensors, or it raised)."""
        self.phases: dict[str, PhasePeak] = {}
        self._trusted = 0

    # -- memory -------------------------------------------------------------------------
    def _track(self, out) -> None:
        for t in tree_flatten(out)[0]:
            if not isinstance(t, torch.Tensor) or t.device.type != "meta":
                continue
            storage = t.untyped_storage()
            key = id(storage)
            if key in self._seen:
                continue
            nbytes = storage.nbytes()
            self._seen[key] = nbytes
            self.live += nbytes
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.live -= self._seen.pop(key, 0)

    @contextlib.contextmanager
    def phase(self, name: str):
        """Record the live bytes at entry and the peak inside ``name``."""
        outer = self.peak
        self.peak = self.live
        record = PhasePeak(self.live, self.live)
        try:
            yield record
        finally:
            record.peak = self.peak
            self.phases[name] = record
            self.peak = max(outer, self.peak)

    # -- checks -------------------------------------------------------------------------
    @staticmethod
    def _caller() -> str:
        for frame in reversed(traceback.extract_stack()[:-3]):
            if "torch/" not in frame.filename and "fake_gpu" not in frame.filename:
                return f"{frame.filename.split('site-packages/')[-1]}:{frame.lineno}"
        return "?"

    @contextlib.contextmanager
    def trusted(self):
        """No device check inside: torch's object collectives pick their device by the
        group's backend themselves (CUDA on NCCL) and need real host data."""
        self._trusted += 1
        try:
            yield
        finally:
            self._trusted -= 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self._trusted:
            return func(*args, **kwargs)
        if _is_cuda(kwargs.get("device")):
            # A factory the function mode did not see: inside backward (activation
            # recomputation re-runs layer forwards there, with that mode off).
            kwargs = {**kwargs, "device": META}
        name = func.__name__.split(".")[0]
        tensors = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        devices = {t.device.type for t in tensors}
        if func.namespace == "c10d":
            self.collectives[name] += 1
        if func.namespace == "c10d" and "cpu" in devices:
            shapes = [tuple(t.shape) for t in tensors if t.device.type == "cpu"]
            raise DeviceMismatch(f"collective {name} got host tensor(s) {shapes} "
                                 f"(NCCL reduces GPU tensors only), at {self._caller()}")
        if "meta" in devices and "cpu" in devices and name not in _COPIES:
            host = [t for t in tensors if t.device.type == "cpu" and t.dim() > 0]
            if name in _HOST_INDEX_OK:
                host = [t for t in host if t.dtype not in (torch.long, torch.int, torch.bool)]
            if host:
                raise DeviceMismatch(
                    f"{func} mixes GPU and host tensors (host: "
                    f"{[(tuple(t.shape), t.dtype) for t in host]}), at {self._caller()}")
        if name == "_local_scalar_dense" and tensors[0].device.type == "meta":
            self.host_reads[self._caller()] += 1
            dtype = tensors[0].dtype
            return True if dtype == torch.bool else 0.0 if dtype.is_floating_point else 0
        if name in ("_to_copy", "copy_") and "meta" in devices:
            out_device = kwargs.get("device")
            dst = args[0] if name == "copy_" else None
            to_host = (dst is not None and dst.device.type == "cpu") or (
                dst is None and out_device is not None and torch.device(out_device).type == "cpu")
            if to_host:
                self.host_reads[self._caller()] += 1
                if dst is not None:
                    return dst.zero_()
                src = args[0]
                dtype = kwargs.get("dtype") or src.dtype
                if src.numel() > 2**20:  # a weight's host copy: zeros without the memory
                    return torch.zeros((), dtype=dtype).expand(src.shape)
                return torch.zeros(src.shape, dtype=dtype)
        if func.namespace == "c10d" and "meta" in devices:
            return _meta_collective(func, args, kwargs)
        out = func(*args, **kwargs)
        self._track(out)
        return out


def _meta_collective(func, args, kwargs):
    """A collective of meta tensors: torch's own meta kernel where it has one; else (the
    coalesced reduce-scatter, ...) the same op on host stand-ins (inputs: one element
    expanded to each shape; outputs: host buffers of their size, a gradient bucket's
    shard at most) through the fake group, whose Work it returns;
    the meta outputs stay as they are (there is no data to move)."""
    try:
        return func(*args, **kwargs)
    except NotImplementedError:
        from torch.utils._pytree import tree_map

        def stand_in(t):  # read-only inputs: one element, expanded
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                return torch.empty(1, dtype=t.dtype).expand(t.shape)
            return t

        def written(t):  # the op's outputs (its first argument): host buffers of a bucket
            if isinstance(t, torch.Tensor) and t.device.type == "meta":
                return torch.empty(t.shape, dtype=t.dtype)
            return t

        result = func(tree_map(written, args[0]), *tree_map(stand_in, args[1:]),
                      **tree_map(stand_in, kwargs))
        if isinstance(result, tuple):  # (tensor(s), Work): the meta outputs, the Work
            return (args[0], *result[1:])
        return result


class _FakeProps:
    def __init__(self, total_memory: int) -> None:
        self.total_memory = total_memory
        self.name = "fake GPU (meta tensors)"
        self.major, self.minor = 9, 0
        self.multi_processor_count = 132


_CHECK: DeviceCheck | None = None


def enable_fake_gpu(num_gpus: int = 8, memory_bytes: int = 80 * 10**9) -> DeviceCheck:
    """Make this process see ``num_gpus`` fake GPUs; returns the active DeviceCheck."""
    global _CHECK
    if _CHECK is not None:
        return _CHECK
    from maestro_megatron.megatron import cpu_compat

    if torch.cuda.is_available():
        raise RuntimeError("enable_fake_gpu: this process has a real GPU")
    check = DeviceCheck()
    cuda = torch.cuda
    cuda.is_available = lambda: True
    cuda._lazy_init = lambda: None  # a "cuda" factory reaches DeviceCheck, which makes it meta
    cuda.device_count = lambda: num_gpus
    cuda.current_device = lambda: 0
    cuda.set_device = lambda device: None
    cuda.get_device_properties = lambda device=None: _FakeProps(memory_bytes)
    cuda.get_device_capability = lambda device=None: (9, 0)
    cuda.get_device_name = lambda device=None: "fake GPU (meta tensors)"
    cuda.memory_allocated = lambda device=None: check.live
    cuda.max_memory_allocated = lambda device=None: check.peak
    cuda.mem_get_info = lambda device=None: (memory_bytes - check.live, memory_bytes)
    cuda.empty_cache = lambda: None
    cuda.synchronize = lambda device=None: None
    cuda.current_stream = lambda device=None: cpu_compat._NullStream()
    cuda.default_stream = lambda device=None: cpu_compat._NullStream()
    cuda.Stream = cpu_compat._NullStream
    cuda.Event = cpu_compat._NullStream
    cuda.stream = cpu_compat._null_stream_context
    cuda.manual_seed = cpu_compat._cpu_manual_seed
    cuda.manual_seed_all = cpu_compat._cpu_manual_seed
    cuda.get_rng_state = cpu_compat._get_cpu_rng_state
    cuda.set_rng_state = cpu_compat._set_cpu_rng_state
    cpu_compat._patch_megatron_rng()
    _trust_object_collectives(check)
    _device_grad_norm()
    _CudaIsMetaMode().__enter__()  # for the life of the process
    check.__enter__()
    _CHECK = check
    return check


def _trust_object_collectives(check: DeviceCheck) -> None:
    import functools

    import torch.distributed as dist

    for name in ("all_gather_object", "broadcast_object_list", "gather_object",
                 "scatter_object_list"):
        fn = getattr(dist, name)

        @functools.wraps(fn)
        def trusted(*args, _fn=fn, **kwargs):
            with check.trusted():
                return _fn(*args, **kwargs)

        setattr(dist, name, trusted)


def _device_l2_norm(chunk_size, noop_flag, tensor_lists, per_tensor, *args):
    """apex's multi_tensor_l2norm as plain torch ops on the device: [1] fp32."""
    norms = torch.stack([t.float().norm() for tl in tensor_lists for t in tl])
    return norms.norm().reshape(1), None


def _device_grad_norm() -> None:
    """Without apex or Transformer Engine, megatron-core's gradient norm falls back to
    `local_multi_tensor_l2_norm`, which reads every tensor's norm on the host
    (torch.tensor of a list of GPU scalars); a GPU run has TE's fused kernel. The fake
    GPU uses the same math on the device instead (no host read, no data on meta)."""
    from megatron.core.optimizer import clip_grads

    clip_grads.l2_norm_impl = _device_l2_norm


def fake_gpu_check() -> DeviceCheck | None:
    """The active DeviceCheck, or None when the fake GPU is off."""
    return _CHECK
