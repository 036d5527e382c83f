"""torchrun worker: checkpoints are verified before anything is read from them.

``--phase save``: train a GRPO + Conductor run (TP=1, DP=2, distributed optimizer: every
rank writes its own shards) and checkpoint after steps 1 and 2; every rank writes its
policy after each step to ``<out>/policy<step>_rank<r>.pt``.
``--phase load ROOT...`` (a fresh process group): for each checkpoint root the test
prepared (some of them damaged), resume as `setup_run` does (``resume_checkpoint``, then
``load_checkpoint``) and record, per rank, the CheckpointError or the step and policy
resumed; roots named ``*fallback*`` resume with ``fallback=True``; ``--unverified ROOT``
loads ROOT once with ``verify=False`` (what every load did before manifests).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from checkpoint_worker import State, train_step

from maestro_megatron.errors import CheckpointError
from maestro_megatron.megatron.model import unwrap_model
from maestro_megatron.trainer import checkpoint as ckpt_mod

LAYOUT = ("1,1", "dp_reshardable")


def policy(st: State) -> torch.Tensor:
    return torch.cat([p.detach().flatten() for c in st.policy
                      for p in unwrap_model(c).parameters()])


def save(st: State, root: Path, out: Path) -> None:
    for step in (1, 2):
        train_step(st, step)
        ckpt_mod.save_checkpoint(root, step, extra={"cursor": st.cursor},
                                 generators={"rewards": st.gen}, sharding_type=LAYOUT[1],
                                 **st.kwargs())
        torch.save(policy(st), out / f"policy{step}_rank{st.groups.rank}.pt")


def load(st: State, roots: list[Path], unverified: Path | None, out: Path) -> None:
    results = {}
    for root in roots:
        try:
            path = ckpt_mod.resume_checkpoint(root, fallback="fallback" in root.name)
            info = ckpt_mod.load_checkpoint(path, generators={"rewards": st.gen},
                                            verify=False, **st.kwargs())
        except CheckpointError as exc:
            results[root.name] = {"error": type(exc).__name__, "message": str(exc)}
            continue
        results[root.name] = {"step": info["step"], "path": str(info["path"])}
        torch.save(policy(st), out / f"{root.name}_rank{st.groups.rank}.pt")
    if unverified is not None:
        info = ckpt_mod.load_checkpoint(unverified, generators={"rewards": st.gen},
                                        verify=False, **st.kwargs())
        results["unverified"] = {"step": info["step"], "path": str(info["path"])}
    (out / f"results_rank{st.groups.rank}.json").write_text(json.dumps(results, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--phase", choices=["save", "load"], required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("roots", type=Path, nargs="+",
                        help="save: the checkpoint root; load: the roots to resume from")
    parser.add_argument("--unverified", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(1)
    st = State(*LAYOUT)
    args.out.mkdir(parents=True, exist_ok=True)
    if args.phase == "save":
        save(st, args.roots[0], args.out)
    else:
        load(st, args.roots, args.unverified, args.out)
    torch.distributed.barrier()
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
