"""Device checks that need a process of their own: the fake GPU stays on for the life
of a process (maestro_megatron/megatron/fake_gpu.py). `python fake_gpu_checks.py NAME`
prints one JSON line with what the check saw; tests/unit/test_fake_gpu.py runs them."""

from __future__ import annotations

import json
import sys


def _fake_world(world: int, rank: int = 0, tp: int = 1, pp: int = 1):
    import torch.distributed as dist
    from torch.testing._internal.distributed.fake_pg import FakeStore

    from maestro_megatron.config import load_recipe
    from maestro_megatron.megatron.fake_gpu import enable_fake_gpu
    from maestro_megatron.megatron.parallel import init_distributed
    from maestro_megatron.trainer.fake_step import LOCAL_SPEC, _host_groups_are_fake

    check = enable_fake_gpu(world)
    dist.init_process_group("cpu:fake,cuda:fake,meta:fake", store=FakeStore(), rank=rank,
                            world_size=world)
    _host_groups_are_fake()
    recipe = load_recipe("recipes/tiny_cpu.yaml", [*LOCAL_SPEC, f"parallel.tensor_parallel={tp}",
                                                   f"parallel.pipeline_parallel={pp}"])
    return check, init_distributed(recipe.parallel, recipe.model), recipe


def mix() -> dict:
    """Host ids into a GPU embedding (meta alone computes it; CUDA refuses)."""
    import torch

    from maestro_megatron.megatron.fake_gpu import DeviceMismatch, enable_fake_gpu

    enable_fake_gpu(1)
    weight = torch.randn(10, 4, device="cuda")
    out = {"weight_device": weight.device.type, "is_cuda": weight.is_cuda}
    try:
        torch.nn.functional.embedding(torch.tensor([1, 2]), weight)
        out["raised"] = None
    except DeviceMismatch as exc:
        out["raised"] = str(exc)
    out["moved_ok"] = torch.nn.functional.embedding(
        torch.tensor([1, 2]).to("cuda"), weight).device.type
    out["host_scalar_ok"] = (weight * torch.tensor(2.0)).device.type  # 0-dim host scalar
    return out


class _Unit:
    hf_names = ("model.norm.weight",)

    def param_name(self):
        return "decoder.final_layernorm.weight"


def collectives() -> dict:
    """The step's control collectives over a 2-rank world: the stop flag, the DP token
    counts, the metric sums, the pipeline owner flag of refit/export."""
    import torch

    from maestro_megatron.megatron.train_step import global_counts, reduce_metrics
    from maestro_megatron.trainer.signals import StopRequest
    from maestro_megatron.weights import gather

    check, groups, _ = _fake_world(4, pp=2)  # DP 2 x PP 2
    mask = torch.ones(4, 8, device="cuda")
    results = {}
    for name, fn in {
        "stop_poll": lambda: StopRequest().poll(),
        "global_counts": lambda: global_counts(mask, groups),
        "reduce_metrics": lambda: reduce_metrics(
            [{"num_tokens": mask.sum(), "loss": mask.sum()}], groups, "train"),
        "pp_owner": lambda: gather._owner_stage(torch.zeros(1, device="cuda"), groups,
                                                 _Unit(), gather.collective_device()),
    }.items():
        before = sum(check.collectives.values())
        try:
            fn()
            results[name] = "ok"
        except Exception as exc:  # noqa: BLE001 - reported to the test
            results[name] = f"{type(exc).__name__}: {exc}"
        results[name + "_collectives"] = sum(check.collectives.values()) - before
    return results


def fake_step_tiny() -> dict:
    """The whole learn_step of the tiny recipe on a fake 2-GPU node (DP 2)."""
    from maestro_megatron.config import load_recipe
    from maestro_megatron.trainer.fake_step import LOCAL_SPEC, run_fake_step

    recipe = load_recipe("recipes/tiny_cpu.yaml", LOCAL_SPEC)
    report = run_fake_step(recipe, role="last", nodes=1, gpus_per_node=2, gpu_memory_gb=80)
    return {"phases": sorted(report["phases"]), "peak": report["peak"],
            "host_reads": report["host_reads"], "dp": report["layout"]["dp"]}


if __name__ == "__main__":
    print("RESULT " + json.dumps(globals()[sys.argv[1]]()), flush=True)
