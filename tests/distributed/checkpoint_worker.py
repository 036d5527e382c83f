"""torchrun worker: save / resume of a GRPO + Conductor run reproduces the uninterrupted run.

``--phase full``: per layout, train steps 1-2, checkpoint, train steps 3-4 (between them
a save that raises inside must leave ``latest`` and the checkpoint names untouched), and
record steps 3-4. ``--phase resume`` (a fresh process group): load the checkpoint and
train steps 3-4 again. Each step uses the global torch RNG, python's random and a
caller-owned generator (synthetic rewards), megatron's distributed Adam with an LR
schedule (warm-up + cosine), per-response Conductor actions, the meta buffer (window)
and a Conductor Adam update every 2 steps, so every piece of saved state matters.
Every rank writes ``<tp>_<pp>_rank<r>.pt``.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import torch
from grpo_worker import GROUP, MODEL, NUM_PROMPTS, SEQ, K, make_batch

from maestro_megatron.conductor import Conductor, TwoTimescale, emphasis_templates
from maestro_megatron.config.schema import GRPOConfig, ParallelConfig, PrecisionConfig
from maestro_megatron.data.packing import SequenceBatch
from maestro_megatron.megatron.conductor_replica import average_gradients, check_replicas
from maestro_megatron.megatron.forward import forward_logprobs
from maestro_megatron.megatron.model import build_model, unwrap_model
from maestro_megatron.megatron.parallel import init_distributed
from maestro_megatron.megatron.train_step import build_optimizer, grpo_train_step
from maestro_megatron.scalarizers import (
    ConductorScalarizer,
    ReplicaSync,
    scalarize_step,
    step_uniforms,
)
from maestro_megatron.trainer import checkpoint as ckpt_mod

GRPO = GRPOConfig(num_prompts_per_step=NUM_PROMPTS, group_size=GROUP, micro_batch_size=4,
                  lr=1e-2, min_lr=1e-3, lr_warmup_steps=2, lr_decay_style="cosine",
                  eps_low=0.2, eps_high=0.28, clip_grad=1.0)
NUM_STEPS, SAVE_AT = 4, 2
SCHEDULE = TwoTimescale(update_every=2, epochs=2, buffer="window", window_size=12)


class State:
    """Everything one layout trains: policy, optimizer, scheduler, Conductor, buffer."""

    def __init__(self, spec: str, sharding: str):
        from megatron.core import parallel_state as ps

        tp, pp = (int(x) for x in spec.split(","))
        self.parallel = ParallelConfig(tensor_parallel=tp, pipeline_parallel=pp,
                                       use_distributed_optimizer=sharding != "local")
        if ps.model_parallel_is_initialized():
            ps.destroy_model_parallel()
        self.groups = init_distributed(self.parallel, MODEL, seed=1234)
        self.policy = build_model(MODEL, self.parallel, PrecisionConfig(),
                                  pp_rank=self.groups.pp_rank, pp_size=self.groups.pp_size,
                                  wrap_ddp=True)
        self.optimizer, self.scheduler = build_optimizer(GRPO, self.parallel, PrecisionConfig(),
                                                         self.policy, NUM_STEPS)
        self.scalarizer = None
        if self.groups.is_last_stage:  # the Conductor lives on last-stage ranks only
            self.scalarizer = ConductorScalarizer(
                Conductor(MODEL.hidden_size, emphasis_templates(K, 0.5), tau=0.5), lr=0.05,
                ent_coef=0.01, schedule=SCHEDULE)
        self.sync = ReplicaSync(average_gradients=lambda m: average_gradients(m, self.groups.dp),
                                check_replicas=lambda m: check_replicas(m, self.groups.tp))
        self.gen = torch.Generator().manual_seed(7)
        self.cursor = 0

    def kwargs(self) -> dict:
        return dict(model_chunks=self.policy, optimizer=self.optimizer,
                    scheduler=self.scheduler, groups=self.groups, scalarizer=self.scalarizer)


def train_step(st: State, step: int) -> dict:
    groups = st.groups
    full = make_batch(100 + st.cursor, st.cursor)
    st.cursor += 1
    rows = full.batch_size // groups.dp_size
    offset = groups.dp_rank * rows
    batch = full.slice(offset, offset + rows)
    kw = dict(micro_batch_size=GRPO.micro_batch_size, vocab_size=MODEL.vocab_size)
    old = forward_logprobs(st.policy, batch, groups, **kw)
    # Synthetic rewards from three RNG streams (all global-batch sized, then sliced).
    noise = (torch.randn(full.batch_size, K) + torch.rand(full.batch_size, K, generator=st.gen)
             + random.random())[offset:offset + rows]
    metrics: dict = {}
    sc = None
    if groups.is_last_stage:  # the trainer's chain; R = w . noise (no KL: ref = policy)
        sc = scalarize_step(st.scalarizer, noise, logprobs=old.logprobs,
                            ref_logprobs=old.logprobs, response_mask=batch.response_mask,
                            h=old.h, step=step, grpo=GRPO, normalization="none",
                            uniforms=step_uniforms(5, step, full.batch_size, offset, rows))
        advantages = sc.advantages
    else:
        advantages = torch.zeros(rows)
    extras = {"advantages": advantages,
              "old_logprobs": old.logprobs if old is not None else torch.zeros(rows, SEQ)}
    metrics.update(grpo_train_step(st.policy, st.optimizer, st.scheduler,
                                   SequenceBatch(batch.tokens, batch.response_mask, extras=extras),
                                   GRPO, groups, vocab_size=MODEL.vocab_size))
    if sc is not None:
        st.scalarizer.observe(sc.context, sc.used, sc.advantages)
        metrics.update(st.scalarizer.update(step, st.sync))
    return metrics


def snapshot(st: State, metrics: list[dict]) -> dict:
    out = {
        "metrics": metrics,
        "policy": torch.cat([p.detach().flatten() for c in st.policy
                             for p in unwrap_model(c).parameters()]),
        "lr": st.scheduler.get_lr(st.optimizer.param_groups[0]),
        "cursor": st.cursor,
    }
    if st.scalarizer is not None:
        conductor = st.scalarizer.conductor
        adam = st.scalarizer.optimizer.state_dict()["state"]
        out["conductor"] = torch.cat([p.detach().flatten() for p in conductor.parameters()])
        out["conductor_adam"] = torch.cat([adam[i][k].flatten().float() for i in sorted(adam)
                                           for k in ("exp_avg", "exp_avg_sq", "step")])
        out["buffer"] = st.scalarizer.buffer.state_dict()
    return out


def failing_save(st: State, root: Path) -> bool:
    """A save that raises after megatron wrote its shards must change nothing visible."""
    real = ckpt_mod._rng_state

    def boom(generators):
        raise RuntimeError("simulated crash during save")

    ckpt_mod._rng_state = boom
    try:
        ckpt_mod.save_checkpoint(root, SAVE_AT + 1, extra={"cursor": st.cursor}, **st.kwargs())
    except RuntimeError:
        return True
    finally:
        ckpt_mod._rng_state = real
    return False


def run(layout: str, phase: str, root: Path, out: Path) -> None:
    spec, sharding = layout.split("/")
    st = State(spec, sharding)
    ckpt_root = root / spec.replace(",", "_")
    if phase == "full":
        for step in range(1, SAVE_AT + 1):
            train_step(st, step)
        saved = ckpt_mod.save_checkpoint(ckpt_root, SAVE_AT, extra={"cursor": st.cursor},
                                         generators={"rewards": st.gen},
                                         sharding_type=sharding if sharding != "local"
                                         else ckpt_mod.DEFAULT_SHARDING, **st.kwargs())
        assert ckpt_mod.latest_checkpoint(ckpt_root) == saved, saved
        raised = failing_save(st, ckpt_root)
        names = sorted(p.name for p in ckpt_root.iterdir())
        assert raised and ckpt_mod.latest_checkpoint(ckpt_root) == saved, names
        first = SAVE_AT + 1
    else:
        info = ckpt_mod.load_checkpoint(ckpt_root, generators={"rewards": st.gen},
                                        **st.kwargs())
        assert info["step"] == SAVE_AT, info
        st.cursor = info["extra"]["cursor"]
        first = info["step"] + 1
        names = sorted(p.name for p in ckpt_root.iterdir())
    metrics = [train_step(st, step) for step in range(first, NUM_STEPS + 1)]
    out.mkdir(parents=True, exist_ok=True)
    torch.save({**snapshot(st, metrics), "names": names},
               out / f"{spec.replace(',', '_')}_rank{st.groups.rank}.pt")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=["full", "resume"], required=True)
    parser.add_argument("--root", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layouts", nargs="+", required=True,
                        help="tp,pp/SHARDING: the distributed optimizer's sharding type, "
                             "or 'local' for megatron's non-distributed optimizer")
    args = parser.parse_args()
    torch.set_num_threads(1)
    for layout in args.layouts:
        run(layout, args.phase, args.root, args.out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
