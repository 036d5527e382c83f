"""Refit: push HF-named policy tensors into a running rollout engine, in place.

Tensors are packed into size-bounded buckets and each bucket is handed to the engine
(`RolloutEngine.load_bucket`); nothing touches the disk (DESIGN.md section 5, "refit").
How a bucket travels is chosen from the engine's device (`bucket_io.refit_transport`):
a colocated GPU engine (vLLM on GPU) maps the gathered bucket on the trainer's GPU by
CUDA IPC, no host copy (`cuda_ipc.py`); a CPU engine gets each bucket copied once into
memory that its processes map (`bucket_io.SharedBucketBuffer`); otherwise safetensors
bytes (`serialize_bucket`, `RolloutEngine.load_serialized_bucket`).

A bucket never splits a decoder layer: an engine that fuses q/k/v or gate/up into one
parameter (vLLM) reloads a fused parameter only when all its parts arrive in the same
load call; a part left out is not kept from the old weights. So the packing unit is a
"group" (all tensors of one `*.layers.<i>.` prefix, or one top-level tensor), and a
group larger than `bucket_bytes` goes alone into an oversized bucket.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from maestro_megatron.rollout.bucket_io import (  # noqa: F401  (re-exported)
    NamedTensor,
    deserialize_bucket,
    serialize_bucket,
)

if TYPE_CHECKING:
    from maestro_megatron.rollout.base import RolloutEngine

_LAYER_RE = re.compile(r"^(.*?\.layers\.\d+)\.")


@dataclass(frozen=True)
class RefitStats:
    """What one refit moved."""

    num_tensors: int
    num_buckets: int
    num_bytes: int
    """Sum of tensor payload bytes (safetensors headers excluded)."""
    max_bucket_bytes: int
    seconds: float

    def metrics(self) -> dict[str, float]:
        return {"refit/num_tensors": self.num_tensors, "refit/num_buckets": self.num_buckets,
                "refit/bytes": self.num_bytes, "timing/refit": self.seconds}


def group_key(name: str) -> str:
    """Packing unit of an HF tensor name: its decoder-layer prefix, else the name itself."""
    m = _LAYER_RE.match(name)
    return m.group(1) if m else name


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _groups(named_tensors: Iterable[NamedTensor]) -> Iterator[list[NamedTensor]]:
    """Consecutive runs of tensors with the same `group_key`; a key may not come back."""
    seen: set[str] = set()
    current: list[NamedTensor] = []
    key = None
    for name, tensor in named_tensors:
        k = group_key(name)
        if k != key:
            if current:
                yield current
            if k in seen:
                raise ValueError(f"tensors of '{k}' arrived non-contiguously (again at {name}); "
                                 "a refit stream must give each decoder layer in one run")
            seen.add(k)
            key, current = k, []
        current.append((name, tensor))
    if current:
        yield current


def iter_buckets(named_tensors: Iterable[NamedTensor],
                 bucket_bytes: int) -> Iterator[list[NamedTensor]]:
    """Pack a tensor stream into buckets of at most `bucket_bytes` payload bytes.

    Whole groups only (see module docstring); a single group above the limit becomes
    its own bucket. Streaming: at most one bucket plus one group is held at a time.
    """
    if bucket_bytes <= 0:
        raise ValueError(f"bucket_bytes must be > 0, got {bucket_bytes}")
    bucket: list[NamedTensor] = []
    size = 0
    for group in _groups(named_tensors):
        gsize = sum(_nbytes(t) for _, t in group)
        if bucket and size + gsize > bucket_bytes:
            yield bucket
            bucket, size = [], 0
        bucket.extend(group)
        size += gsize
    if bucket:
        yield bucket


def refit_engine(engine: RolloutEngine, named_tensor_iter: Iterable[NamedTensor],
                 bucket_bytes: int) -> RefitStats:
    """Load new weights into `engine` in place, bucket by bucket; return what moved."""
    start = time.perf_counter()
    num_tensors = num_buckets = num_bytes = max_bucket = 0
    for bucket in iter_buckets(named_tensor_iter, bucket_bytes):
        payload = sum(_nbytes(t) for _, t in bucket)
        loaded = engine.load_bucket(bucket)
        if loaded != len(bucket):
            raise RuntimeError(f"engine loaded {loaded} of {len(bucket)} tensors of a bucket")
        num_tensors += len(bucket)
        num_buckets += 1
        num_bytes += payload
        max_bucket = max(max_bucket, payload)
    engine.finish_refit()
    return RefitStats(num_tensors, num_buckets, num_bytes, max_bucket,
                      time.perf_counter() - start)


def refit_policy(engine: RolloutEngine | None, model_chunks, cfg, groups,
                 bucket_bytes: int, all_replicas: bool = False) -> dict[str, float]:
    """THE refit entry point of training: gather this replica's policy shards into
    HF-named tensors (collective: every rank of the model-parallel group runs it) and
    load them into `engine` (on the rank hosting it; None elsewhere).

    model_chunks: the policy's (DDP-wrapped) chunks; cfg: ModelConfig; groups:
    ParallelGroups; all_replicas: every data-parallel replica refits its own engine
    (rollout.placement: replica). Every rank driving an engine receives the tensors
    (several engines may serve one replica). Returns the refit metrics ({} without an
    engine).
    """
    from maestro_megatron.weights.gather import iter_hf_weights
    from maestro_megatron.weights.registry import get_mapping

    weights = iter_hf_weights(model_chunks, get_mapping(cfg.architecture), cfg, groups,
                              all_replicas, leader=engine is not None)
    try:
        if engine is None:
            return {}
        return refit_engine(engine, weights, bucket_bytes).metrics()
    finally:
        for _ in weights:  # keep the other ranks' collectives matched (and on an error)
            pass


TrainerLogprobFn = Callable[[Sequence[Sequence[int]], Sequence[int]], Sequence[torch.Tensor]]


def verify_refit(engine: RolloutEngine, trainer_logprob_fn: TrainerLogprobFn,
                 token_ids: Sequence[Sequence[int]], prompt_lens: Sequence[int]) -> float:
    """max |rollout_logprobs - trainer_logprobs| over the response tokens of fixed sequences.

    trainer_logprob_fn(token_ids, prompt_lens) follows `RolloutEngine.score_sequences`:
    per sequence a [L_i - P_i] tensor of log p(token_t | tokens_<t) at temperature 1.
    """
    rollout = engine.score_sequences(token_ids, prompt_lens)
    trainer = trainer_logprob_fn(token_ids, prompt_lens)
    if len(rollout) != len(trainer):
        raise ValueError(f"{len(rollout)} engine vs {len(trainer)} trainer sequences")
    worst = 0.0
    for i, (r, t) in enumerate(zip(rollout, trainer)):
        r, t = r.float().cpu(), t.detach().float().cpu()
        if r.shape != t.shape:
            raise ValueError(f"sequence {i}: engine {tuple(r.shape)} vs trainer {tuple(t.shape)}")
        if r.numel():
            worst = max(worst, (r - t).abs().max().item())
    return worst
