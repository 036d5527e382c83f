"""How long before a job's time limit the trainer must be asked to stop (SLURM's
`--signal=B:USR1@SECONDS`): the step in progress finishes, then the checkpoint is
written and hashed (trainer/checkpoint.py), with a margin. Pure arithmetic.

    lead = step_s + bytes / (nodes x write_bw) + bytes / (ranks x hash_bw) + margin_s

The checkpoint holds every parameter once in the training dtype plus the distributed
optimizer's fp32 state (Adam's two moments, and a main fp32 copy when the parameters
are not fp32): 14 bytes per parameter in bf16, 12 in fp32. The Conductor and the RNG
states are kilobytes. The step time is the caller's figure (a run's `timing/step`):
nothing before a run knows it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from maestro_megatron.plan.memory import checkpoint_bytes

GB = 10**9
ASSUMED_STEP_S = 600.0
"""The step time `maestro plan` assumes without --step-seconds."""


@dataclass(frozen=True)
class StopLead:
    checkpoint_bytes: int
    write_s: float
    hash_s: float
    step_s: float
    margin_s: float

    @property
    def seconds(self) -> int:
        """The lead, rounded up to whole seconds."""
        return math.ceil(self.step_s + self.write_s + self.hash_s + self.margin_s)


def stop_lead(parameters: int, dtype_bytes: int, *, nodes: int, ranks: int, step_s: float,
              write_gb_per_s_per_node: float = 1.0, hash_gb_per_s_per_rank: float = 0.5,
              margin_s: float = 60.0) -> StopLead:
    """The lead time of one save at the given rates (defaults: 1 GB/s written per node to
    a shared filesystem, sha256 at 0.5 GB/s per rank; both assumptions, stated)."""
    if min(nodes, ranks) < 1 or step_s < 0:
        raise ValueError(f"nodes {nodes}, ranks {ranks}, step_s {step_s}")
    size = checkpoint_bytes(parameters, dtype_bytes)
    return StopLead(size, size / (nodes * write_gb_per_s_per_node * GB),
                    size / (ranks * hash_gb_per_s_per_rank * GB), step_s, margin_s)


def format_stop_lead(lead: StopLead, step_given: bool) -> str:
    step = (f"one step {lead.step_s:.0f} s" + ("" if step_given else
            " (assumed: --step-seconds from a run's timing/step)"))
    return (f"stop lead time: {lead.seconds} s = {step} + checkpoint "
            f"{lead.checkpoint_bytes / GB:.1f} GB (write {lead.write_s:.0f} s, hash "
            f"{lead.hash_s:.0f} s) + margin {lead.margin_s:.0f} s: "
            f"sbatch --signal=B:USR1@{lead.seconds}")
