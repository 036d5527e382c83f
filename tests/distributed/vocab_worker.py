"""torchrun worker (2 ranks): vocab-parallel logprobs/entropy == full-vocabulary torch.

Every rank draws the same full logits [B, T, V_padded], keeps its TP shard, and checks
the vocab-parallel result and the gradient of its shard against ``log_softmax`` of the
full (unpadded) logits, for several ``chunk_tokens`` (the fp32 block size: one block,
one token, part of a row, whole rows); the chunkings must also agree with each other
bitwise (only the blocking differs, not the per-token arithmetic). The shard is passed
as a non-contiguous view (``[:, :-1]`` of a longer one, as forward.py passes the
model's logits). Raises on mismatch, so torchrun exits non-zero.
"""

from __future__ import annotations

import torch
import torch.distributed as dist

from maestro_megatron.megatron.vocab_parallel import vocab_parallel_logprobs_and_entropy

TOL = dict(atol=1e-5, rtol=1e-5)
CHUNKS = (0, 1, 5, 14, 2048)
"""chunk_tokens: one block; one token; rows cut (T = 7 > 5); two whole rows; the default."""


def reference(full: torch.Tensor, target: torch.Tensor, vocab_size: int):
    logp = torch.log_softmax(full[..., :vocab_size].double(), dim=-1)
    logprobs = logp.gather(-1, target.unsqueeze(-1)).squeeze(-1)
    entropy = -(logp.exp() * logp).sum(-1)
    return logprobs, entropy


def check(vocab_size: int, padded: int, dtype: torch.dtype, seed: int) -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    gen = torch.Generator().manual_seed(seed)
    full = (3 * torch.randn(3, 8, padded, generator=gen)).to(dtype)
    target = torch.randint(0, vocab_size, (3, 7), generator=gen)
    weights = torch.randn(3, 7, generator=gen)
    shard_size = padded // world
    own = slice(rank * shard_size, (rank + 1) * shard_size)

    ref_full = full[:, :-1].detach().double().requires_grad_(True)
    ref_lp, ref_ent = reference(ref_full, target, vocab_size)
    (ref_lp * weights.double()).sum().backward()
    ref_grad = ref_full.grad[..., own]

    tol = TOL if dtype == torch.float32 else dict(atol=2e-2, rtol=2e-2)
    results = []
    for chunk_tokens in CHUNKS:
        leaf = full[..., own].clone().requires_grad_(True)  # [3, 8, V/TP]
        logprobs, entropy = vocab_parallel_logprobs_and_entropy(
            leaf[:, :-1], target, dist.group.WORLD, vocab_size=vocab_size,
            chunk_tokens=chunk_tokens,
        )
        (logprobs * weights).sum().backward()
        grad = leaf.grad[:, :-1]
        torch.testing.assert_close(logprobs.double(), ref_lp.detach(), **tol)
        torch.testing.assert_close(entropy.double(), ref_ent.detach(), **tol)
        assert not entropy.requires_grad
        assert leaf.grad.dtype == dtype
        torch.testing.assert_close(grad.double(), ref_grad, **tol)
        assert torch.all(grad[..., max(0, vocab_size - rank * shard_size):] == 0)
        results.append((logprobs.detach(), entropy, grad))
    for chunk_tokens, got in zip(CHUNKS[1:], results[1:]):
        for name, a, b in zip(("logprobs", "entropy", "grad"), got, results[0]):
            assert torch.equal(a, b), (chunk_tokens, name, (a - b).abs().max())


def main() -> None:
    dist.init_process_group("gloo")
    torch.set_num_threads(1)
    check(vocab_size=256, padded=256, dtype=torch.float32, seed=0)  # no padding
    check(vocab_size=250, padded=256, dtype=torch.float32, seed=1)  # padding in shard 1
    check(vocab_size=100, padded=256, dtype=torch.float32, seed=2)  # shard 1 all padding
    check(vocab_size=250, padded=256, dtype=torch.bfloat16, seed=3)
    dist.barrier()
    if dist.get_rank() == 0:
        print("VOCAB_PARALLEL_OK")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
