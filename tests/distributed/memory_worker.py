"""torchrun worker: the `memory:` options change memory, never the numbers (CPU, gloo).

``recompute`` (1 rank): the same weights and micro-batches, one forward+backward (two
micro-batches) with memory.recompute = none | selective | full (groups of 1 and of 2
layers). Checks that the loss, the logprobs and every parameter's gradient (the DDP
grad buffer) are bitwise those of recompute=none, and that recomputation ran: forward
hooks count each layer's calls (full: twice per micro-batch, the forward and its
re-run in backward) and each core attention's (selective: twice; full: twice too).

``overlap`` (2 ranks, DP=2): three optimizer steps with memory.overlap_grad_reduce
false / true, with and without the distributed optimizer. Checks the losses and the
parameters after each step are bitwise equal, the grad buffers' dtype follows
memory.grad_reduce_in_fp32 (fp32 parameters on CPU: fp32 either way), and that with
overlap every bucket's reduction was already in flight when `finalize_model_grads`
ran (from the second step on; the first records the buckets' gradient counts), i.e.
the backward hooks, not finalize, started it.

Raises on any mismatch, so torchrun exits non-zero; rank 0 prints MEMORY_<mode>_OK.
"""

from __future__ import annotations

import sys

import torch
import torch.distributed as dist
from layout_worker import MODEL, make_batch

from maestro_megatron.config.schema import (
    GRPOConfig,
    MemoryConfig,
    ParallelConfig,
    PrecisionConfig,
)
from maestro_megatron.megatron.forward import run_forward_backward
from maestro_megatron.megatron.model import build_model, unwrap_model
from maestro_megatron.megatron.parallel import destroy_distributed, init_distributed
from maestro_megatron.megatron.train_step import build_optimizer, optimizer_step

MICRO_BATCH = 2


def loss_fn(num_global_tokens: float):
    """Global token-mean of -logprob plus a little entropy-weighted logprob (so the
    gradient is not just the log-likelihood's)."""
    def fn(logprobs, entropy, h, micro_batch):
        mask = micro_batch.response_mask
        loss = -(logprobs * mask * (1.0 + 0.1 * entropy)).sum() / num_global_tokens
        return loss, {"loss": loss.detach()}
    return fn


def _build(parallel: ParallelConfig, memory: MemoryConfig, init_state: dict | None):
    chunks = build_model(MODEL, parallel, PrecisionConfig(), pp_rank=0, pp_size=1,
                         wrap_ddp=True, memory_cfg=memory)
    if init_state is not None:
        unwrap_model(chunks[0]).load_state_dict(init_state)
    return chunks


class CallCounter:
    """Forward-hook counts per module name."""

    def __init__(self, modules: dict[str, torch.nn.Module]) -> None:
        self.counts = dict.fromkeys(modules, 0)
        self._handles = [m.register_forward_hook(self._hook(name))
                         for name, m in modules.items()]

    def _hook(self, name):
        def hook(module, args, output):
            self.counts[name] += 1
        return hook

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def run_recompute() -> None:
    parallel = ParallelConfig()
    groups = init_distributed(parallel, MODEL, seed=1234)
    batch = make_batch()
    num_micro = batch.batch_size // MICRO_BATCH
    num_tokens = float(batch.response_mask.sum())
    settings = {"none": MemoryConfig(), "selective": MemoryConfig(recompute="selective"),
                "full": MemoryConfig(recompute="full"),
                "full2": MemoryConfig(recompute="full", recompute_num_layers=2)}
    # layer forwards and core-attention forwards per micro-batch, each setting
    expected = {"none": (1, 1), "selective": (1, 2), "full": (2, 2), "full2": (2, 2)}
    init_state, results = None, {}
    for name, memory in settings.items():
        chunks = _build(parallel, memory, init_state)
        model = unwrap_model(chunks[0])
        if init_state is None:
            init_state = _copy(model.state_dict())
        cfg = model.config
        want_granularity = None if name == "none" else name.rstrip("2")
        assert cfg.recompute_granularity == want_granularity, (name, cfg.recompute_granularity)
        if name.startswith("full"):
            assert cfg.recompute_method == "uniform"
            assert cfg.recompute_num_layers == memory.recompute_num_layers
        layers = {f"layer{i}": layer for i, layer in enumerate(model.decoder.layers)}
        attention = {f"attn{i}": layer.self_attention.core_attention
                     for i, layer in enumerate(model.decoder.layers)}
        counter = CallCounter({**layers, **attention})
        chunks[0].zero_grad_buffer()
        out = run_forward_backward(chunks, batch, groups, micro_batch_size=MICRO_BATCH,
                                   vocab_size=MODEL.vocab_size, loss_fn=loss_fn(num_tokens))
        counter.remove()
        per_layer, per_attention = expected[name]
        for key, count in counter.counts.items():
            want = (per_layer if key.startswith("layer") else per_attention) * num_micro
            assert count == want, (name, key, count, want)
        grads = {n: p.main_grad.clone() for n, p in model.named_parameters()}
        assert all(g.abs().sum() > 0 for g in grads.values()), name
        results[name] = (sum(float(m["loss"]) for m in out.metrics), out.logprobs, grads)
    loss0, logprobs0, grads0 = results["none"]
    for name, (loss, logprobs, grads) in results.items():
        worst = max((grads[k] - grads0[k]).abs().max().item() for k in grads0)
        print(f"recompute={name}: loss {loss!r} (none {loss0!r}), max |grad - none| {worst}")
        assert loss == loss0, name
        assert torch.equal(logprobs, logprobs0), name
        for key in grads0:
            assert torch.equal(grads[key], grads0[key]), (name, key)


def run_overlap() -> None:
    grpo = GRPOConfig(lr=0.5, adam_eps=1.0, clip_grad=1.0)
    full = make_batch()
    num_tokens = float(full.response_mask.sum())
    init_state, init_params, results = None, None, {}
    for distributed_opt in (True, False):
        parallel = ParallelConfig(use_distributed_optimizer=distributed_opt)
        groups = init_distributed(parallel, MODEL, seed=1234)
        assert groups.dp_size == 2
        rows = full.batch_size // groups.dp_size
        batch = full.slice(groups.dp_rank * rows, (groups.dp_rank + 1) * rows)
        for overlap, fp32 in ((False, True), (True, True), (True, False)):
            memory = MemoryConfig(overlap_grad_reduce=overlap, grad_reduce_in_fp32=fp32)
            chunks = _build(parallel, memory, init_state)
            model = unwrap_model(chunks[0])
            if init_state is None:
                init_state = _copy(model.state_dict())
                init_params = _flat(model)
            ddp = chunks[0]
            assert ddp.ddp_config.overlap_grad_reduce == overlap
            assert ddp.ddp_config.grad_reduce_in_fp32 == fp32
            assert all(b.grad_dtype == torch.float32 for b in ddp.buffers)  # fp32 params
            assert (model.config.no_sync_func is not None) == overlap
            in_flight = _watch_finalize(model.config, ddp)
            optimizer, scheduler = build_optimizer(grpo, parallel, PrecisionConfig(), chunks,
                                                   10)
            steps = []
            for _ in range(3):
                out, info = optimizer_step(chunks, optimizer, scheduler, batch, groups,
                                           loss_fn=loss_fn(num_tokens),
                                           micro_batch_size=MICRO_BATCH,
                                           vocab_size=MODEL.vocab_size)
                params = _flat(model)
                steps.append((sum(float(m["loss"]) for m in out.metrics),
                              info["grad_norm"], params))
            assert in_flight == [False, overlap, overlap], (overlap, in_flight)
            results[(distributed_opt, overlap, fp32)] = steps
        destroy_model_parallel()
    for (distributed_opt, overlap, _fp32), steps in results.items():
        base = results[(distributed_opt, False, True)]
        for step, ((loss, norm, params), (loss0, norm0, params0)) in enumerate(zip(steps, base)):
            assert loss == loss0 and norm == norm0, (distributed_opt, overlap, step)
            assert torch.equal(params, params0), (distributed_opt, overlap, step)
        moved = (steps[-1][2] - init_params).abs().max().item()
        assert moved > 1e-3, moved  # the steps did change the weights
    if dist.get_rank() == 0:
        print("losses per step:", [s[0] for s in results[(True, True, True)]])


def _copy(state: dict) -> dict:
    return {k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in state.items()}


def _flat(model: torch.nn.Module) -> torch.Tensor:
    """The parameters, flattened in `model.parameters()` order."""
    return torch.cat([p.detach().flatten() for p in model.parameters()])


def _watch_finalize(config, ddp) -> list[bool]:
    """Record, at each `finalize_model_grads`, whether every bucket group's reduction
    had already been issued (a pending handle) before finalize itself ran."""
    seen: list[bool] = []
    finalize = config.finalize_model_grads_func

    def watched(*args, **kwargs):
        seen.append(all(g.grad_reduce_handle is not None for g in ddp.bucket_groups))
        return finalize(*args, **kwargs)

    config.finalize_model_grads_func = watched
    return seen


def destroy_model_parallel() -> None:
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()


def main() -> None:
    torch.set_num_threads(1)
    mode = sys.argv[1]
    {"recompute": run_recompute, "overlap": run_overlap}[mode]()
    if dist.get_rank() == 0:
        print(f"MEMORY_{mode.upper()}_OK")
    destroy_distributed()


if __name__ == "__main__":
    main()
