"""The bytes each GPU holds in each phase of a MAESTRO step (pure arithmetic: no torch).

Items (bytes per GPU; P = this GPU's parameters, `params.stage_parameters`; y = dtype
bytes, 2 for bf16/fp16, 4 for fp32):

    weights            P y
    gradients          P x 4 (memory.grad_reduce_in_fp32) else P y; megatron's DDP
                       gradient buffer is allocated once and lives in every phase
    optimizer          megatron Adam: fp32 main params + m + v = 12 bytes/param with
                       bf16/fp16 params, 8 with fp32 params (no separate main copy);
                       / (DP x CP) with parallel.use_distributed_optimizer
    fp8 weight cache   FP8 (TE) only: the policy's cached FP8 weight and its transpose,
                       2 bytes per GEMM weight; the reference's 1 byte while it is here
    reference          P y: a second copy of the weights; with memory.offload_reference
                       only in the forwards phase (its forward, and the r_ppl proxy's)
    reward model       2 bytes x its parameters (bf16) on the GPUs that hold it
                       (`roles`); with memory.offload_reward_model only while scoring
    activations        `activations.train_activations` / `forward_activations`
    logits, logits gradient, log-prob fp32 working   `activations.logits_bytes`, last
                       stage only
    reward model scoring  its no-grad forward of rewards.pref.batch_size sequences of
                       up to seq_length tokens (Hugging Face, sdpa): b s 2 (3f + 3h)
                       (MLP halves, product, residual) + b s^2 (the boolean 4-D mask)
                       + its KV cache (transformers builds a DynamicCache when the
                       config's use_cache is true: 2 L g d 2 bytes per token)
    step tensors       the step's token ids (int64) and mask (fp32) on every GPU, the
                       three forwards' log-probs and entropies and the update's old /
                       reference log-probs (fp32) on the last stage
    rollout engine     awake: gpu_memory_utilization x GPU memory + the engine worker's
                       own CUDA context (outside vLLM's budget); asleep
                       (rollout.enable_sleep_mode): the context + its CUDA-graph pool;
                       without sleep mode it stays awake in every phase
    refit buckets      during the refit (rollout phase): 2 x rollout.refit_bucket_mb (a
                       gathered bucket and its staging copy), on every GPU
    CUDA context       a fixed reserve: context, NCCL communicators, allocator slack

Phases: rollout (engine awake, trainer states resident, no activations: the trainer
empties its allocator cache before waking the engine), forwards (policy / reference /
proxy forwards: one micro-batch's no-grad activations + logits), scoring (the reward
model's forward; only with a reward model), train (activations for backward + logits).
The engine's KV cache = budget - its weights / engine TP - a runtime reserve (profile
peak, sampler, CUDA graphs). vLLM refuses to start unless the GPU's free memory when it
starts (the trainer's weights, gradients, optimizer, resident reference and reward
model, context) is at least its budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from maestro_megatron.config.schema import Recipe
from maestro_megatron.errors import UserError
from maestro_megatron.plan.activations import (
    ActivationShape,
    forward_activations,
    inflight_forwards,
    logits_bytes,
    train_activations,
)
from maestro_megatron.plan.params import (
    engine_parameters_per_gpu,
    head_dim,
    kv_heads_per_gpu,
    model_parameters,
    padded_vocab_size,
    stage_parameters,
)
from maestro_megatron.plan.roles import GpuRole, Layout, gpu_roles, num_engines

GB = 10**9
"""Every number here is in decimal GB (an "80 GB" H100 reports 85.0e9 bytes, so
--gpu-memory 80 leaves about 5 GB unplanned for fragmentation)."""

ITEMS = {
    "weights": "weights", "gradients": "gradients", "optimizer": "optimizer state",
    "fp8_weight_cache": "fp8 weight cache", "reference": "reference weights",
    "reward_model": "reward model weights", "activations": "activations",
    "logits": "logits", "logits_grad": "logits gradient",
    "logprob_fp32": "log-prob fp32 working", "reward_model_activations": "reward model scoring",
    "step_tensors": "step tensors", "rollout_engine": "rollout engine",
    "refit_buckets": "refit buckets", "cuda_context": "CUDA context + NCCL",
}
"""Item key -> the label the table prints, in table order."""
PHASES = ("rollout", "forwards", "scoring", "train")


@dataclass(frozen=True)
class Assumptions:
    """The fixed reserves (bytes) the plan cannot derive from the recipe."""

    cuda_context: int = int(2.5 * GB)
    """Trainer process: CUDA context, NCCL communicator buffers, allocator slack."""
    engine_context: int = int(0.5 * GB)
    """Each vLLM worker process's own CUDA context (outside gpu_memory_utilization)."""
    engine_asleep: int = int(0.5 * GB)
    """What a sleeping engine keeps beyond its context (its CUDA-graph pool)."""
    engine_runtime: int = int(1.5 * GB)
    """Inside vLLM's budget, besides weights and KV cache: its profile-run activation
    peak at the default batch-token limit, the sampler, CUDA graphs."""
    refit_buckets: int = 2
    """Refit buckets alive at once on a GPU (gathered + staging)."""


@dataclass(frozen=True)
class RewardModelShape:
    """The preference reward model, as far as memory goes."""

    num_parameters: int
    hidden_size: int
    ffn_hidden_size: int
    kv_bytes_per_token: int
    """Its KV cache per token during scoring (0 when use_cache is off)."""
    max_length: int | None
    source: str
    """Where the numbers came from (config.json path or rewards.pref.num_parameters)."""


@dataclass(frozen=True)
class EnginePlan:
    """One rollout engine's share of a GPU (the same for every engine)."""

    num_engines: int
    tensor_parallel: int
    budget: int
    """gpu_memory_utilization x GPU memory."""
    weights: int
    runtime: int
    kv_cache: int
    kv_bytes_per_token: int
    seq_length: int
    startup_free: int
    """Free memory on the worst engine GPU when the engine starts."""

    @property
    def kv_tokens(self) -> int:
        return max(self.kv_cache, 0) // self.kv_bytes_per_token

    @property
    def max_length_sequences(self) -> int:
        return self.kv_tokens // self.seq_length

    @property
    def startup_ok(self) -> bool:
        return self.startup_free >= self.budget


@dataclass(frozen=True)
class RoleMemory:
    """One GPU role in one phase: bytes per item (ITEMS keys, zeros left out)."""

    role: GpuRole
    num_gpus: int
    items: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.items.values())

    @property
    def largest(self) -> tuple[str, int]:
        return max(self.items.items(), key=lambda kv: kv[1])


@dataclass(frozen=True)
class Plan:
    """Per phase, per GPU role, per item bytes; see `report` for the text."""

    gpu_memory: int
    layout: Layout
    transformer_impl: str
    model_parameters: int
    stage_parameters: dict[int, int]
    """Pipeline rank -> parameters on one of its GPUs."""
    phases: dict[str, list[RoleMemory]]
    engine: EnginePlan | None
    reward_model: RewardModelShape | None
    assumptions: Assumptions = field(default_factory=Assumptions)
    host_per_node: dict[str, int] = field(default_factory=dict)
    """Host memory per node (average over nodes) for what leaves the GPUs: `host_bytes`."""

    def worst(self, phase: str) -> RoleMemory:
        return max(self.phases[phase], key=lambda r: r.total)

    @property
    def peak(self) -> tuple[str, RoleMemory]:
        phase = max(self.phases, key=lambda p: self.worst(p).total)
        return phase, self.worst(phase)

    @property
    def fits(self) -> bool:
        if self.peak[1].total > self.gpu_memory:
            return False
        return self.engine is None or (self.engine.startup_ok
                                       and self.engine.max_length_sequences >= 1)


def dtype_bytes(dtype: str) -> int:
    return 4 if dtype == "fp32" else 2


def adam_bytes_per_param(y: int) -> int:
    """megatron's Adam state per parameter of `y` bytes: m and v in fp32, plus an fp32
    main copy unless the parameters are fp32 themselves."""
    return 12 if y < 4 else 8


def checkpoint_bytes(parameters: int, y: int) -> int:
    """A checkpoint's model plus distributed-optimizer state: `parameters` of `y` bytes
    and their Adam state."""
    return parameters * (y + adam_bytes_per_param(y))


def _train_rows(recipe: Recipe, dp: int) -> tuple[int, int, int]:
    """(rows per DP rank in a step, rows per micro-batch, micro-batches per optimizer
    step); UserError where the batch does not split (trainer/setup.py's rules)."""
    g = recipe.grpo
    if recipe.run.algorithm == "sft":
        rows = recipe.sft.batch_size // dp
        if rows < 1:
            raise UserError(f"sft.batch_size={recipe.sft.batch_size} gives no rows to each "
                            f"of {dp} data-parallel ranks")
        micro = min(g.micro_batch_size, rows)
        return rows, micro, max(rows // micro, 1)
    per_rank = prompts_per_rank(g, dp)
    rows = per_rank * g.group_size // g.num_minibatches
    return per_rank * g.group_size, g.micro_batch_size, rows // g.micro_batch_size


def prompts_per_rank(grpo, dp: int) -> int:
    """Prompts per data-parallel rank (grpo: GRPOConfig); groups never straddle ranks,
    mini-batches divide a rank's prompts and micro-batches a mini-batch's rows, else a
    UserError naming the key. The trainer (trainer/setup.py) applies the same rules."""
    g = grpo
    if g.num_prompts_per_step % dp:
        raise UserError(f"grpo.num_prompts_per_step={g.num_prompts_per_step} does not split "
                        f"over {dp} data-parallel ranks")
    per_rank = g.num_prompts_per_step // dp
    if per_rank % g.num_minibatches:
        raise UserError(f"grpo.num_minibatches={g.num_minibatches} does not divide the "
                        f"{per_rank} prompts of each data-parallel rank")
    rows = per_rank * g.group_size // g.num_minibatches
    if rows % g.micro_batch_size:
        raise UserError(f"grpo.micro_batch_size={g.micro_batch_size} does not divide the "
                        f"{rows} responses of a mini-batch on each data-parallel rank")
    return per_rank


def _activation_shape(recipe: Recipe, micro: int, spec: str) -> ActivationShape:
    m, par = recipe.model, recipe.parallel
    return ActivationShape(
        micro_batch=micro, seq=m.seq_length // par.context_parallel, hidden=m.hidden_size,
        ffn=m.ffn_hidden_size, heads=m.num_attention_heads, groups=m.num_query_groups,
        head_dim=head_dim(m), tp=par.tensor_parallel, sequence_parallel=par.sequence_parallel,
        qk_layernorm=m.qk_layernorm, bytes=dtype_bytes(recipe.precision.dtype), spec=spec)


def engine_plan(recipe: Recipe, gpu_memory: int, trainer_at_start: int, shards: int,
                assume: Assumptions) -> EnginePlan:
    """The engine on a GPU that holds `trainer_at_start` bytes and `shards` engines."""
    m, ro = recipe.model, recipe.rollout
    y = dtype_bytes(recipe.precision.dtype)
    budget = int(ro.gpu_memory_utilization * gpu_memory)
    weights = engine_parameters_per_gpu(m, ro.tensor_parallel) * y
    kv_token = int(2 * m.num_layers * kv_heads_per_gpu(m.num_query_groups, ro.tensor_parallel)
                   * head_dim(m) * y)
    free = gpu_memory - trainer_at_start - shards * assume.engine_context \
        - (shards - 1) * budget
    return EnginePlan(0, ro.tensor_parallel, budget, weights, assume.engine_runtime,
                      budget - weights - assume.engine_runtime, kv_token, m.seq_length, free)


class _Items:
    """The per-item bytes of one GPU role (see the module docstring)."""

    def __init__(self, recipe: Recipe, layout: Layout, role: GpuRole, spec: str,
                 reward: RewardModelShape | None, gpu_memory: int, assume: Assumptions):
        self.recipe, self.layout, self.role, self.assume = recipe, layout, role, assume
        self.reward, self.gpu_memory = reward, gpu_memory
        m, mem = recipe.model, recipe.memory
        self.y = dtype_bytes(recipe.precision.dtype)
        self.params = stage_parameters(m, layout.tp, layout.pp, role.pp_rank)
        self.last = role.pp_rank == layout.pp - 1
        self.sft = recipe.run.algorithm == "sft"
        self.fp8 = recipe.precision.fp8 is not None and spec == "transformer_engine"
        self.rows, micro, self.num_microbatches = _train_rows(recipe, layout.dp)
        self.shape = _activation_shape(recipe, micro, spec)
        self.vocab = padded_vocab_size(m.vocab_size, m.make_vocab_size_divisible_by,
                                       layout.tp)
        self.chunk = mem.logprob_chunk_tokens

    def resident(self, phase: str) -> dict[str, int]:
        p, y, mem = self.params.total, self.y, self.recipe.memory
        shard = self.layout.dp * self.layout.cp \
            if self.recipe.parallel.use_distributed_optimizer else 1
        ref_here = not self.sft and (phase == "forwards" or not mem.offload_reference)
        rm_here = self.role.reward_model and (phase == "scoring" or not mem.offload_reward_model)
        fp8 = (2 + int(ref_here)) * self.params.linear if self.fp8 else 0
        return {"weights": p * y, "gradients": p * (4 if mem.grad_reduce_in_fp32 else y),
                "optimizer": p * adam_bytes_per_param(y) // shard, "fp8_weight_cache": fp8,
                "reference": p * y if ref_here else 0,
                "reward_model": 2 * self.reward.num_parameters if rm_here else 0,
                "cuda_context": self.assume.cuda_context}

    def engine(self, awake: bool) -> int:
        shards = self.role.engines
        if not shards:
            return 0
        ro, a = self.recipe.rollout, self.assume
        if awake or not ro.enable_sleep_mode:
            return shards * (int(ro.gpu_memory_utilization * self.gpu_memory) + a.engine_context)
        return shards * (a.engine_context + a.engine_asleep)

    def step_tensors(self) -> int:
        s = self.recipe.model.seq_length
        return self.rows * s * (12 + (32 if self.last else 0))

    def phase(self, phase: str) -> dict[str, int]:
        items = self.resident(phase)
        items["rollout_engine"] = self.engine(awake=phase == "rollout")
        if phase == "rollout":
            items["refit_buckets"] = self.assume.refit_buckets \
                * self.recipe.rollout.refit_bucket_mb * 2**20
            return items
        items["step_tensors"] = self.step_tensors()
        pipelined, x = self.layout.pp > 1, self.shape
        if phase == "scoring":
            items["reward_model_activations"] = self.reward_activations() \
                if self.role.reward_model else 0
        elif phase == "forwards":
            items["activations"] = forward_activations(x, pipelined=pipelined,
                                                       last_stage=self.last)
        else:
            vpp = self.layout.vpp
            mem = self.recipe.memory
            items["activations"] = train_activations(
                x, recompute=mem.recompute, recompute_num_layers=mem.recompute_num_layers,
                chunk_layers=self.params.num_layers // (vpp or 1),
                inflight=inflight_forwards(self.layout.pp, vpp, self.role.pp_rank,
                                           self.num_microbatches),
                pipelined=pipelined, last_stage=self.last)
        if self.last and phase in ("forwards", "train"):
            items.update(logits_bytes(x, self.vocab, self.chunk, train=phase == "train"))
        return items

    def reward_activations(self) -> int:
        rm, s = self.reward, self.recipe.model.seq_length
        if rm.max_length:
            s = min(s, rm.max_length)
        b = self.recipe.rewards.pref.batch_size
        return b * s * (2 * (3 * rm.ffn_hidden_size + 3 * rm.hidden_size)
                        + rm.kv_bytes_per_token) + b * s * s

    def trainer_at_engine_start(self) -> int:
        """What the trainer holds when setup_run starts the engine (optimizer state as
        on a resumed run; no activations, no FP8 caches yet)."""
        items = self.resident("rollout")
        items.pop("fp8_weight_cache")
        return sum(items.values())


def host_bytes(recipe: Recipe, role: GpuRole, stage_params: int,
               reward_model: RewardModelShape | None) -> dict[str, int]:
    """Host memory one GPU of `role` needs for what is moved off it: the engine's weights
    at rollout.sleep_level 1 (vLLM keeps a host copy; level 2 discards them), the
    reference with memory.offload_reference, the reward model's bf16 weights with
    memory.offload_reward_model."""
    ro, mem, y = recipe.rollout, recipe.memory, dtype_bytes(recipe.precision.dtype)
    sft = recipe.run.algorithm == "sft"
    level1 = ro.enable_sleep_mode and ro.sleep_level == 1 and not sft
    return {"engine_weights": role.engines * engine_parameters_per_gpu(
                recipe.model, ro.tensor_parallel) * y if level1 else 0,
            "reference": stage_params * y if mem.offload_reference and not sft else 0,
            "reward_model": 2 * reward_model.num_parameters
            if role.reward_model and reward_model and mem.offload_reward_model else 0}


def plan_memory(recipe: Recipe, layout: Layout, gpu_memory: int, *, transformer_impl: str,
                reward_model: RewardModelShape | None,
                assumptions: Assumptions | None = None) -> Plan:
    """Every phase's bytes for every GPU role of `recipe` on `layout`.

    transformer_impl: transformer_engine | local (the attention the activations are
    sized for); reward_model: None when no component needs a preference scorer.
    """
    assume = assumptions or Assumptions()
    mem, chunk_layers = recipe.memory, recipe.model.num_layers // (layout.pp * (layout.vpp or 1))
    if mem.recompute == "full" and chunk_layers % mem.recompute_num_layers:
        raise UserError(f"memory.recompute_num_layers={mem.recompute_num_layers} must divide "
                        f"the {chunk_layers} layers of each model chunk")
    roles = gpu_roles(recipe, layout, reward_model is not None)
    sft = recipe.run.algorithm == "sft"
    phases = [p for p in PHASES
              if not (sft and p != "train") and not (p == "scoring" and reward_model is None)]
    out: dict[str, list[RoleMemory]] = {p: [] for p in phases}
    engine, stage_params = None, {}
    host = {"engine_weights": 0, "reference": 0, "reward_model": 0}
    for role, count in sorted(roles.items(), key=lambda kv: (kv[0].pp_rank, -kv[0].engines,
                                                             not kv[0].reward_model)):
        items = _Items(recipe, layout, role, transformer_impl, reward_model, gpu_memory, assume)
        stage_params[role.pp_rank] = items.params.total
        for key, size in host_bytes(recipe, role, items.params.total, reward_model).items():
            host[key] += count * size
        for phase in phases:
            values = {k: v for k, v in items.phase(phase).items() if v}
            out[phase].append(RoleMemory(role, count, {k: values[k] for k in ITEMS
                                                       if k in values}))
        if role.engines:
            candidate = engine_plan(recipe, gpu_memory, items.trainer_at_engine_start(),
                                    role.engines, assume)
            if engine is None or candidate.startup_free < engine.startup_free:
                engine = candidate
    if engine is not None:
        engine = replace(engine, num_engines=num_engines(recipe, layout))
    if recipe.run.async_save:  # megatron's async save copies each rank's state to the host
        host["checkpoint_staging"] = checkpoint_bytes(model_parameters(recipe.model),
                                                      dtype_bytes(recipe.precision.dtype))
    return Plan(gpu_memory, layout, transformer_impl, model_parameters(recipe.model),
                stage_params, out, engine, reward_model, assume,
                {k: v // layout.nodes for k, v in host.items() if v})
