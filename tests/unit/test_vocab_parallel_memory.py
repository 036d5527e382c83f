"""Vocab-parallel log-probs in token blocks (memory.logprob_chunk_tokens), one process.

What the chunking must keep: the numbers (every chunking gives bitwise the same
logprobs, entropy and gradient; all match an fp64 ``log_softmax``), and what it must
remove: fp32 [B, T, V] tensors saved for backward, and fp32 [B, T, V] allocations in
forward (the peak of new storages stays within one block's fp32 temporaries).
"""

from __future__ import annotations

import weakref

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from maestro_megatron.megatron.vocab_parallel import (
    token_blocks,
    vocab_parallel_logprobs_and_entropy,
)

B, T, V, REAL = 4, 64, 1024, 1000  # V = padded shard (TP=1), REAL = vocabulary size
CHUNK = 16


def _inputs(dtype: torch.dtype, seed: int = 0):
    """A leaf [B, T + 1, V] and its non-contiguous view [:, :-1] (as forward.py passes
    the model's logits), targets [B, T], weights [B, T]."""
    gen = torch.Generator().manual_seed(seed)
    leaf = (3 * torch.randn(B, T + 1, V, generator=gen)).to(dtype).requires_grad_(True)
    target = torch.randint(0, REAL, (B, T), generator=gen)
    weights = torch.randn(B, T, generator=gen)
    return leaf, target, weights


@pytest.mark.parametrize(("batch", "length", "chunk"),
                         [(4, 64, 16), (4, 7, 16), (3, 7, 5), (2, 5, 0), (2, 5, 100), (5, 3, 1)])
def test_token_blocks_partition_the_grid_within_the_chunk(batch, length, chunk):
    seen = torch.zeros(batch, length, dtype=torch.int64)
    for rows, cols in token_blocks(batch, length, chunk):
        block = seen[rows, cols]
        assert chunk == 0 or block.numel() <= chunk
        seen[rows, cols] += 1
    assert torch.all(seen == 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_every_chunking_gives_the_same_numbers(dtype):
    results = []
    for chunk in (0, 1, 7, CHUNK, 100, 2048):
        leaf, target, weights = _inputs(dtype)
        logprobs, entropy = vocab_parallel_logprobs_and_entropy(
            leaf[:, :-1], target, None, vocab_size=REAL, chunk_tokens=chunk)
        (logprobs * weights).sum().backward()
        assert leaf.grad.dtype == dtype and not entropy.requires_grad
        results.append((logprobs.detach(), entropy, leaf.grad))
    for got in results[1:]:
        for a, b in zip(got, results[0]):
            assert torch.equal(a, b)

    leaf, target, weights = _inputs(dtype)
    full = leaf.detach()[:, :-1].double().requires_grad_(True)
    logp = torch.log_softmax(full[..., :REAL], dim=-1)
    ref_lp = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    (ref_lp * weights.double()).sum().backward()
    logprobs, entropy, grad = results[0]
    tol = dict(atol=1e-5, rtol=1e-5)  # fp32 math on exactly representable inputs
    torch.testing.assert_close(logprobs.double(), ref_lp.detach(), **tol)
    torch.testing.assert_close(entropy.double(), -(logp.exp() * logp).sum(-1).detach(), **tol)
    grad_tol = tol if dtype == torch.float32 else dict(atol=1e-2, rtol=1e-2)  # bf16 output
    torch.testing.assert_close(grad[:, :-1].double(), full.grad, **grad_tol)
    assert torch.all(grad[:, :-1, REAL:] == 0) and torch.all(grad[:, -1] == 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_backward_keeps_only_the_input_logits_and_per_token_tensors(dtype):
    """The old code saved the fp32 softmax [B, T, V] (4 B T V bytes beyond the input)."""
    leaf, target, _ = _inputs(dtype)
    logits = leaf[:, :-1]
    saved: list[torch.Tensor] = []

    def pack(tensor):
        saved.append(tensor)
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logprobs, _ = vocab_parallel_logprobs_and_entropy(logits, target, None,
                                                          vocab_size=REAL, chunk_tokens=CHUNK)
    input_storage = leaf.untyped_storage().data_ptr()
    big = [t for t in saved if t.numel() > B * T]
    assert big and all(t.untyped_storage().data_ptr() == input_storage and t.dtype == dtype
                       for t in big), [(tuple(t.shape), t.dtype) for t in big]
    extra = sum(t.numel() * t.element_size() for t in saved if t.numel() <= B * T)
    assert extra <= 32 * B * T  # M, S (fp32), target column (int64), in-shard flag
    logprobs.sum().backward()  # what was saved suffices


class LiveStorages(TorchDispatchMode):
    """Peak bytes of the storages that ops allocate while the mode is active.

    Every op output whose storage is not one of the op's inputs' (a view or an in-place
    result is not an allocation) is a new storage; it stays live while any tensor seen
    with it is alive (weak references: a tensor autograd or a local still holds keeps
    its storage counted). Storages made before the mode (the input logits) never count.
    """

    def __init__(self) -> None:
        super().__init__()
        self.live = self.peak = 0
        self._tensors: dict[int, set[int]] = {}  # storage address -> ids of its tensors
        self._bytes: dict[int, int] = {}
        self._refs: dict[int, weakref.ref] = {}

    def _release(self, tensor_id: int, key: int) -> None:
        self._refs.pop(tensor_id, None)
        ids = self._tensors.get(key)
        if ids is not None:
            ids.discard(tensor_id)
            if not ids:
                del self._tensors[key]
                self.live -= self._bytes.pop(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_flatten((args, kwargs))[0]
                  if isinstance(a, torch.Tensor)}
        for tensor in tree_flatten(out)[0]:
            if not isinstance(tensor, torch.Tensor) or id(tensor) in self._refs:
                continue
            storage = tensor.untyped_storage()
            key = storage.data_ptr()
            if key == 0 or (key not in self._tensors and key in inputs):
                continue
            if key not in self._tensors:
                self._tensors[key], self._bytes[key] = set(), storage.nbytes()
                self.live += storage.nbytes()
                self.peak = max(self.peak, self.live)
            self._tensors[key].add(id(tensor))
            self._refs[id(tensor)] = weakref.ref(
                tensor, lambda _, tid=id(tensor), k=key: self._release(tid, k))
        return out


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_forward_allocates_about_one_block_not_the_whole_vocabulary(dtype):
    """Old code: about 6 fp32 [B, T, V] copies (6.5 MB here) at the forward's peak."""
    leaf, target, _ = _inputs(dtype)
    block = CHUNK * V * 4  # one block's fp32 [chunk, V] (64 KiB)
    mode = LiveStorages()
    with mode:
        vocab_parallel_logprobs_and_entropy(leaf[:, :-1], target, None, vocab_size=REAL,
                                            chunk_tokens=CHUNK)
    # fp32 input: z and exp(z); bf16: also the block's fp32 copy. Plus [B, T] results.
    assert 0 < mode.peak <= 3 * block + 64 * B * T, mode.peak
    assert mode.peak < B * T * V * 4 / 4  # a quarter of one full fp32 copy

    whole = LiveStorages()  # chunk_tokens=0: one block, the whole micro-batch
    with whole:
        vocab_parallel_logprobs_and_entropy(leaf[:, :-1], target, None, vocab_size=REAL,
                                            chunk_tokens=0)
    assert whole.peak > B * T * REAL * 4  # the tracker does see fp32 [B, T, V] tensors
