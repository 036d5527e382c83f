"""Process-group setup: layout validation, torch.distributed + megatron initialisation.

Everything downstream receives a :class:`ParallelGroups` and passes its groups to the
math explicitly; only this module reads ``megatron.core.parallel_state``.
"""

from __future__ import annotations

import os
import random
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from maestro_megatron.config.schema import ModelConfig, ParallelConfig
from maestro_megatron.config.validate import check_layout
from maestro_megatron.megatron.cpu_compat import enable_cpu_compat


@dataclass(frozen=True)
class ParallelGroups:
    """The process groups and coordinates of this rank in the Megatron layout."""

    tp: dist.ProcessGroup
    """Tensor-parallel group (vocab-parallel log-softmax reduces over it)."""
    pp: dist.ProcessGroup
    """Pipeline-parallel group."""
    dp: dist.ProcessGroup
    """Data-parallel group without context parallelism."""
    dp_cp: dist.ProcessGroup
    """Data x context parallel group (gradient all-reduce, token counts)."""
    cp: dist.ProcessGroup
    """Context-parallel group."""
    mp: dist.ProcessGroup
    """Model-parallel group (TP x PP): gradient-norm reductions."""
    rank: int
    world_size: int
    tp_rank: int
    tp_size: int
    pp_rank: int
    pp_size: int
    dp_rank: int
    dp_size: int
    cp_rank: int
    cp_size: int
    vpp_size: int | None

    @property
    def is_first_stage(self) -> bool:
        """This rank holds the embedding (first pipeline stage)."""
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        """This rank holds the output layer, logprobs and h (last pipeline stage)."""
        return self.pp_rank == self.pp_size - 1


def validate_layout(model_cfg: ModelConfig, parallel_cfg: ParallelConfig, world_size: int) -> None:
    """Raise ValueError ("key: message") for a layout Megatron cannot build.

    The rules live in `config.validate.check_layout` (the recipe loader applies them
    without a world size); here they run again with the launcher's world size.
    """
    check_layout(model_cfg, parallel_cfg, world_size)


def _launcher_env() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun, else SLURM (srun), else one process."""
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        local = int(os.environ.get("LOCAL_RANK", rank))
    elif "SLURM_PROCID" in os.environ and "SLURM_NTASKS" in os.environ:
        rank, world = int(os.environ["SLURM_PROCID"]), int(os.environ["SLURM_NTASKS"])
        local = int(os.environ.get("SLURM_LOCALID", 0))
        # (rank and world size go to init_process_group explicitly: the environment of
        # the process is left as it is.)
    else:
        rank, world, local = 0, 1, 0
    return rank, world, local


def _init_torch_distributed(timeout_minutes: int) -> None:
    if dist.is_initialized():
        return
    rank, world, local = _launcher_env()
    on_gpu = torch.cuda.is_available()
    if on_gpu:
        torch.cuda.set_device(local % torch.cuda.device_count())
    backend = "nccl" if on_gpu else "gloo"
    timeout = timedelta(minutes=timeout_minutes)
    if world == 1 and "MASTER_ADDR" not in os.environ:
        # A single process needs no rendezvous (and so no free port).
        store = dist.HashStore()
        dist.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
        return
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29500")
    dist.init_process_group(backend, rank=rank, world_size=world, timeout=timeout)


def _seed_all(seed: int, pp_rank: int) -> None:
    from megatron.core.tensor_parallel import model_parallel_cuda_manual_seed

    # Megatron convention: pipeline stages draw different random streams; TP peers get
    # distinct model-parallel streams from the RNG tracker (seed + 2718 + tp_rank).
    stage_seed = seed + 100 * pp_rank
    random.seed(stage_seed)
    torch.manual_seed(stage_seed)
    model_parallel_cuda_manual_seed(stage_seed)


def init_distributed(
    parallel_cfg: ParallelConfig,
    model_cfg: ModelConfig,
    *,
    seed: int = 1234,
    timeout_minutes: int = 30,
) -> ParallelGroups:
    """Initialise torch.distributed (gloo on CPU, nccl on GPU) and Megatron's groups.

    Reads RANK/WORLD_SIZE/LOCAL_RANK/MASTER_ADDR/MASTER_PORT (torchrun) or
    SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID (srun). Validates the layout before any
    model exists, then seeds the Megatron RNG tracker.
    """
    from megatron.core import parallel_state as ps

    enable_cpu_compat()
    world = dist.get_world_size() if dist.is_initialized() else _launcher_env()[1]
    validate_layout(model_cfg, parallel_cfg, world)
    _init_torch_distributed(timeout_minutes)
    if not ps.model_parallel_is_initialized():
        ps.initialize_model_parallel(
            tensor_model_parallel_size=parallel_cfg.tensor_parallel,
            pipeline_model_parallel_size=parallel_cfg.pipeline_parallel,
            virtual_pipeline_model_parallel_size=parallel_cfg.virtual_pipeline_parallel,
            context_parallel_size=parallel_cfg.context_parallel,
            distributed_timeout_minutes=timeout_minutes,
        )
    groups = current_groups(parallel_cfg.virtual_pipeline_parallel)
    _seed_all(seed, groups.pp_rank)
    return groups


def collective_device() -> torch.device:
    """Where a tensor handed to this job's collectives lives: the current GPU under NCCL
    (which reduces GPU tensors only), the host under gloo (CPU runs)."""
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def current_groups(vpp_size: int | None = None) -> ParallelGroups:
    """Snapshot Megatron's initialised parallel state as a :class:`ParallelGroups`."""
    from megatron.core import parallel_state as ps

    return ParallelGroups(
        tp=ps.get_tensor_model_parallel_group(),
        pp=ps.get_pipeline_model_parallel_group(),
        dp=ps.get_data_parallel_group(),
        dp_cp=ps.get_data_parallel_group(with_context_parallel=True),
        cp=ps.get_context_parallel_group(),
        mp=ps.get_model_parallel_group(),
        rank=dist.get_rank(),
        world_size=dist.get_world_size(),
        tp_rank=ps.get_tensor_model_parallel_rank(),
        tp_size=ps.get_tensor_model_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(),
        pp_size=ps.get_pipeline_model_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(),
        dp_size=ps.get_data_parallel_world_size(),
        cp_rank=ps.get_context_parallel_rank(),
        cp_size=ps.get_context_parallel_world_size(),
        vpp_size=vpp_size,
    )


def destroy_distributed() -> None:
    """Tear down Megatron's groups and the default process group (tests, tools)."""
    from megatron.core import parallel_state as ps

    ps.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
