"""Recipe schema: one frozen dataclass per component (DESIGN.md section 7).

Defaults live only here. YAML recipes are thin overrides of these values; the loader
(`maestro_megatron.config.loader`) checks keys and types and then calls
`validate_recipe` for the cross-field rules. Every field has a docstring-style comment.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class RopeScalingConfig:
    """RoPE frequency scaling, the keys of config.json's ``rope_scaling`` (Llama 3.1).

    ``llama3`` (the only type applied): with wavelength w_i = 2 pi / f_i of each base
    inverse frequency f_i, L = original_max_position_embeddings, a = low_freq_factor,
    b = high_freq_factor: f_i is kept where w_i < L / b, divided by ``factor`` where
    w_i > L / a, and in between ((1 - s) / factor + s) f_i with s = (L / w_i - a) / (b - a).
    """

    rope_type: str = "llama3"
    """Scaling type; only llama3 is applied by the trainer's model."""
    factor: float = 8.0
    """Divisor of the low frequencies (long wavelengths)."""
    low_freq_factor: float = 1.0
    """Wavelengths above original_max_position_embeddings / this are divided by factor."""
    high_freq_factor: float = 4.0
    """Wavelengths below original_max_position_embeddings / this are unchanged."""
    original_max_position_embeddings: int = 8192
    """Context length of pre-training before the extension."""


@dataclass(frozen=True)
class ModelConfig:
    """Llama/Qwen-style decoder (RMSNorm, SwiGLU, RoPE, GQA)."""

    num_layers: int = 2
    """Number of transformer layers."""
    hidden_size: int = 64
    """Model width d_model (the Conductor's input size)."""
    ffn_hidden_size: int = 128
    """SwiGLU intermediate size (per gate/up half)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int = 2
    """Key/value heads (GQA groups); equal to heads for plain MHA."""
    kv_channels: int | None = None
    """Head dimension; None means hidden_size // num_attention_heads (Qwen3 sets it)."""
    vocab_size: int = 256
    """Tokenizer vocabulary size before padding."""
    make_vocab_size_divisible_by: int = 128
    """Pad the embedding to a multiple of this times TP (Megatron convention)."""
    seq_length: int = 256
    """Maximum prompt+response length in tokens: the trainer's, the prompt check's and the
    rollout engine's (vLLM max_model_len). Kept from the recipe when hf_path is set; must
    not exceed max_position_embeddings."""
    max_position_embeddings: int | None = None
    """Positions the model supports (config.json's max_position_embeddings; taken from
    there when hf_path is set, and written back on export). None: seq_length."""
    rotary_base: float = 10000.0
    """RoPE base (Llama-3: 500000, Qwen: 1000000)."""
    rope_scaling: RopeScalingConfig | None = None
    """RoPE frequency scaling (Llama 3.1: llama3, factor 8); None: unscaled. Taken from
    config.json when hf_path is set."""
    norm_epsilon: float = 1e-6
    """RMSNorm epsilon."""
    add_qkv_bias: bool = False
    """Bias on the fused QKV projection (Qwen2)."""
    qk_layernorm: bool = False
    """RMSNorm on per-head queries and keys (Qwen3)."""
    tie_embeddings: bool = True
    """Share the input embedding and the output layer."""
    init_method_std: float = 0.02
    """Std of the normal init for random weights."""
    architecture: str = "LlamaForCausalLM"
    """HF architecture of the weight mapping (LlamaForCausalLM | Qwen2ForCausalLM |
    Qwen3ForCausalLM); taken from config.json when hf_path is set."""
    hf_path: str | None = None
    """Hugging Face directory to start from (weights, architecture, tokenizer). None:
    random init from these fields and a tokenizer trained on the prompt data."""

    def __post_init__(self):
        # ModelConfig(**json.loads(...)) of a saved asdict(cfg) (converter metadata).
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScalingConfig(**self.rope_scaling))


@dataclass(frozen=True)
class ParallelConfig:
    """Megatron layout. Data-parallel size is world_size / (TP * PP * CP)."""

    tensor_parallel: int = 1
    """Tensor-parallel size (divides heads and query groups)."""
    pipeline_parallel: int = 1
    """Pipeline-parallel size (divides num_layers, or num_layers / VPP)."""
    virtual_pipeline_parallel: int | None = None
    """Interleaved pipeline chunks per stage (None: off)."""
    context_parallel: int = 1
    """Context-parallel size (GPU only)."""
    sequence_parallel: bool = False
    """Megatron sequence parallelism (needs TP > 1 and TE or apex)."""
    use_distributed_optimizer: bool = True
    """Shard optimizer state over data-parallel ranks."""
    timeout_minutes: int = 30
    """Collective timeout: a hung collective (a dead rank or engine) fails after this
    long, its error naming the trainer stage and step, instead of hanging forever."""


@dataclass(frozen=True)
class PrecisionConfig:
    """Numerics. CPU runs use fp32 and the local layer spec."""

    dtype: str = "fp32"
    """Parameter/compute dtype: fp32 | bf16 | fp16."""
    fp8: str | None = None
    """Transformer Engine FP8 recipe format: None | hybrid | e4m3 (GPU + TE only)."""
    transformer_impl: str = "auto"
    """Layer spec: auto (TE when importable on GPU) | local | transformer_engine."""


@dataclass(frozen=True)
class MemoryConfig:
    """What the trainer keeps on each GPU, and what it recomputes or swaps instead
    (`maestro plan` reads the same fields to size every phase)."""

    recompute: str = "none"
    """Activation recomputation (megatron's recompute_granularity): none | selective
    (core attention only) | full (each layer's input kept, the layer recomputed in
    backward)."""
    recompute_num_layers: int = 1
    """For recompute=full: layers per checkpointed chunk (megatron's uniform method)."""
    logprob_chunk_tokens: int = 2048
    """Log-probs and entropy over the vocabulary in chunks of this many tokens: at most
    one chunk's fp32 copy of the logits is alive beyond the logits themselves (0: the
    whole micro-batch at once)."""
    grad_reduce_in_fp32: bool = True
    """Gradient buffers (and their data-parallel reduction) in fp32; false keeps them in
    the parameter dtype (bf16: half the gradient memory)."""
    overlap_grad_reduce: bool = False
    """Start each gradient bucket's data-parallel reduction while backward continues."""
    offload_reference: bool = False
    """Keep the frozen reference's weights in host memory and copy them onto the GPU
    only for the reference (and r_ppl proxy) forward; no second resident copy."""
    offload_reward_model: bool = False
    """Keep the preference reward model in host memory between scoring calls."""


@dataclass(frozen=True)
class GRPOConfig:
    """Inner loop: the clipped GRPO surrogate (DESIGN.md section 3)."""

    num_prompts_per_step: int = 8
    """N: prompts per step (global, over all data-parallel ranks)."""
    group_size: int = 4
    """G: responses per prompt (>= 2)."""
    micro_batch_size: int = 4
    """Sequences per micro-batch in forward/backward."""
    eps_low: float = 0.2
    """Lower clip range of the ratio."""
    eps_high: float = 0.2
    """Upper clip range (clip-higher when > eps_low)."""
    dual_clip: float | None = None
    """Dual-clip constant c > 1 for negative advantages (None: off)."""
    loss_agg: str = "token-mean"
    """token-mean | seq-mean-token-mean | seq-mean-token-sum-norm."""
    kl_coef: float = 0.01
    """beta: weight of the KL penalty."""
    kl_kind: str = "k3"
    """KL estimator: k1 | k2 | k3."""
    kl_in_loss: bool = False
    """Put KL in the loss instead of the scalar reward (MAESTRO: reward)."""
    normalize_std: bool = True
    """Divide advantages by the group std (False: Dr.GRPO)."""
    advantage_estimator: str = "grpo"
    """Advantage registry name: grpo (group-relative) | gdpo (R from group-normalised
    components, then whitened over the whole batch; arXiv 2601.05242) | rloo (R minus
    the mean of the group's other responses; EM-RL)."""
    adv_eps: float = 1e-6
    """Epsilon in the advantage denominator."""
    lr: float = 1e-5
    """Policy learning rate (peak)."""
    min_lr: float = 0.0
    """Final learning rate of the decay."""
    lr_warmup_steps: int = 0
    """Linear warm-up steps."""
    lr_decay_style: str = "constant"
    """constant | linear | cosine."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.999
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clip (0: off)."""
    mask_truncated: bool = False
    """Drop responses cut at max_new_tokens from the policy loss (they still get rewards
    and advantages; counted as train/truncated_masked)."""
    num_minibatches: int = 1
    """PPO mini-batches: optimizer steps per rollout batch and epoch (global prompt p
    goes to mini-batch p % M; M must divide each data-parallel rank's prompts)."""
    ppo_epochs: int = 1
    """Passes over the rollout batch; old log-probs stay those of the rollout policy."""


@dataclass(frozen=True)
class PplConfig:
    """r_ppl: exp(-mean NLL of the reference answer | prompt + response)."""

    answer_pattern: str = r"<answer>(.*?)</answer>"
    """Regex whose first group is stripped from the response before scoring the reference."""
    proxy: str = "reference"
    """Model that scores the reference: reference (frozen, MAESTRO's default) | policy
    (the current policy, as NOVER's synced proxy; ours syncs every step)."""


@dataclass(frozen=True)
class FmtConfig:
    """r_fmt: 1 if the whole response matches the pattern."""

    pattern: str = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"
    """Regex the whole response must match (re.fullmatch, DOTALL)."""


@dataclass(frozen=True)
class EntConfig:
    """r_ent: mean token entropy / log(V)."""

    mode: str = "maximize"
    """maximize | minimize (EM-GRPO) | target."""
    target: float = 0.5
    """Target normalised entropy for mode=target (reward -|H - target|)."""


@dataclass(frozen=True)
class LenConfig:
    """r_len: -max(0, L - L_target) / L_max."""

    target_tokens: int = 64
    """L_target: free length budget."""
    max_tokens: int = 256
    """L_max: normaliser (usually the rollout max_new_tokens)."""


@dataclass(frozen=True)
class PrefConfig:
    """r_pref: a preference or reward model's score."""

    scorer: str = "embedding_similarity"
    """Scorer registry name: embedding_similarity | sequence_classifier."""
    model_path: str | None = None
    """Local model directory (None: the scorer's own default)."""
    batch_size: int = 16
    """Scoring batch size."""
    placement: str = "rank"
    """Where the reward model lives: rank (every last-stage rank loads it and scores its
    rows) | tp_leader (tensor-parallel rank 0 of each last-stage group scores, the scores
    are broadcast to its TP peers: one copy per TP group instead of TP copies)."""
    num_parameters: int | None = None
    """The reward model's parameter count, for `maestro plan` when model_path has no
    readable config.json (None: read it from there)."""


@dataclass(frozen=True)
class NoverConfig:
    """NOVER's reward (arXiv 2505.16022; weights from its released config.yaml)."""

    format_pattern: str = r"\s*<think>.*?</think>\s*<answer>.*?</answer>\s*"
    """R_f: the whole response must match (NOVER: tags in order, whitespace ignored)."""
    w_format: float = 1.0
    """w_f (NOVER config.yaml: 1.0)."""
    w_reasoning: float = 1.0
    """w_r (NOVER config.yaml: 1.0)."""
    w_efficiency: float = 1.0
    """w_e (NOVER config.yaml: 1.0; its Qwen2.5 config: 0.1)."""


@dataclass(frozen=True)
class RewardsConfig:
    """The K reward components and their normalisation."""

    components: tuple[str, ...] = ("ppl", "fmt", "ent", "len", "pref")
    """Active components in order (names from the reward registry)."""
    normalization: str = "group"
    """Per-component normalisation before weighting: group | batch | none."""
    std_eps: float = 0.0
    """Added to the std that normalisation divides by (0: exact std, a component with
    std 0 gives 0; GDPO's code: 1e-4)."""
    on_nonfinite: str = "error"
    """A component that returns NaN/inf for a response (or a scorer that raises):
    error (stop, naming the component and the sample) | skip (that response gets
    advantage 0, counted as reward/nonfinite_skipped)."""
    ppl: PplConfig = field(default_factory=PplConfig)
    fmt: FmtConfig = field(default_factory=FmtConfig)
    ent: EntConfig = field(default_factory=EntConfig)
    len: LenConfig = field(default_factory=LenConfig)
    pref: PrefConfig = field(default_factory=PrefConfig)
    nover: NoverConfig = field(default_factory=NoverConfig)


@dataclass(frozen=True)
class ScalarizerConfig:
    """How the reward vector becomes a scalar: a registry name and its options."""

    name: str = "conductor"
    """A scalarizer registry name: conductor | equal | random | single | dynaopt (or your
    own)."""
    component: str | None = None
    """For name=single: the one component used (e.g. ppl for NOVER)."""
    dirichlet_alpha: float = 1.0
    """For name=random: concentration of the per-response Dirichlet."""
    seed: int = 1234
    """Seed of the per-step global uniform stream the scalarizer draws from (Conductor
    actions, random weights): the same on every rank, whatever the layout."""


@dataclass(frozen=True)
class ConductorConfig:
    """The outer loop: Conductor head and its two-timescale schedule."""

    tau: float = 1.0
    """Softmax temperature (> 0)."""
    p_min: float = 0.0
    """Probability floor per action, 0 <= p_min < 1/J."""
    rho: float = 0.5
    """Emphasis strength of the default templates."""
    templates: tuple[tuple[float, ...], ...] | None = None
    """Explicit [J, K] simplex templates (None: K emphasis templates with rho)."""
    lr: float = 1e-2
    """Adam learning rate of the Conductor."""
    ent_coef: float = 0.01
    """lambda_ent: entropy bonus."""
    update_every: int = 1
    """M: policy steps between Conductor updates."""
    epochs: int = 1
    """E: passes over the meta buffer per update."""
    buffer: str = "clear"
    """After an update: clear | window."""
    window_size: int = 4096
    """For buffer=window: keep the newest this many triples."""


@dataclass(frozen=True)
class DynaoptConfig:
    """DYNAOPT's stage-level Exp3 bandit (arXiv 2403.13578; scalarizer.name: dynaopt)."""

    stage_steps: int = 10
    """S: policy steps per stage; the weights move once per stage (DYNAOPT's
    rl_validation_step: 10)."""
    gamma: float = 0.07
    """Exp3's exploration mix and learning rate, in (0, 1] (DYNAOPT's Exp3 default)."""
    step_size: float = 0.07
    """eta: the "raise weight k" arm adds eta to log w_k, then renormalises (0.07: the
    size of DYNAOPT's first raise from equal weights)."""
    initial_weights: tuple[float, ...] | None = None
    """w_0 over rewards.components: positive, summing to 1 (None: 1/K each)."""


@dataclass(frozen=True)
class RolloutConfig:
    """Rollout engine settings."""

    engine: str = "vllm"
    """Engine registry name."""
    temperature: float = 1.0
    """Sampling temperature."""
    top_p: float = 1.0
    """Nucleus sampling."""
    max_new_tokens: int = 64
    """Response length cap."""
    gpu_memory_utilization: float = 0.5
    """vLLM memory fraction (GPU)."""
    enable_sleep_mode: bool = False
    """Free engine memory during training (GPU vLLM only): the engine sleeps after each
    rollout and wakes before the refit (weights) and after it (KV cache)."""
    sleep_level: int = 1
    """With enable_sleep_mode, vLLM's sleep level: 1: weights offloaded to host memory,
    KV cache discarded (host memory holds a copy of the engine's weights); 2: weights
    and KV cache discarded, the refit writes every weight into the re-allocated
    memory (no host copy)."""
    refit_bucket_mb: int = 512
    """Size bound of one refit bucket (MiB)."""
    tensor_parallel: int = 1
    """Engine tensor parallelism: GPUs per engine, all on one node (GPU)."""
    placement: str = "leader"
    """leader: one engine on global rank 0 generates every group (one machine) |
    replica: one engine per data-parallel replica, on the replica's first rank, each
    generating and refitting only its own groups (multi-node). An engine wider than a
    replica's GPUs on a node serves the consecutive replicas it covers
    (maestro_megatron/plan/placement.py)."""
    engines_per_replica: int = 1
    """placement replica: engines that split one replica's groups, each on its own
    rollout.tensor_parallel GPUs, spread over the replica's nodes first (Llama-70B at
    DP 1: one per node, each generating a quarter of the batch)."""


@dataclass(frozen=True)
class DataConfig:
    """Prompt source."""

    path: str | None = None
    """JSONL or CSV prompt file (None: the built-in prompt set)."""
    prompt_key: str = "prompt"
    """Column with the prompt."""
    reference_key: str = "reference"
    """Column with the reference answer (may be empty)."""
    task_key: str = "task"
    """Column with the task category."""
    prompt_format: str = "plain"
    """plain (prompt text + newline) | chat (the tokenizer's chat template, as a user
    turn, with the generation prompt)."""
    system_prompt: str | None = None
    """For prompt_format=chat: a system turn before the user prompt (None: none)."""
    chat_template_kwargs: dict[str, bool | int | float | str] = field(default_factory=dict)
    """For prompt_format=chat: extra variables of the chat template (Qwen3:
    {enable_thinking: false})."""
    split: str | None = "train"
    """Rows whose `split_key` column equals this are used (train / validation / test);
    None, or a file without that column: every row."""
    split_key: str = "split"
    """Column naming each row's split."""
    tokenizer_vocab_size: int = 512
    """Without model.hf_path: size of the tokenizer trained on the prompt data."""


@dataclass(frozen=True)
class WarmupConfig:
    """Supervised warm-up before GRPO (the tiny recipe learns the answer format)."""

    num_steps: int = 0
    """Optimizer steps of supervised fine-tuning (0: none)."""
    lr: float = 3e-3
    """Warm-up learning rate (constant)."""
    batch_size: int = 16
    """Sequences per warm-up step (global)."""
    path: str | None = None
    """JSONL with prompt and response columns (None: the built-in set's responses)."""


@dataclass(frozen=True)
class SftConfig:
    """The SFT baseline (run.algorithm: sft): supervised fine-tuning on the data's train
    split, run.num_steps optimizer steps (maestro_megatron/trainer/sft.py)."""

    lr: float = 1e-5
    """Learning rate (constant)."""
    batch_size: int = 16
    """Sequences per optimizer step (global; splits over data-parallel ranks)."""
    response_key: str = "response"
    """Column with a row's target response; a row without one is trained on its
    reference wrapped in answer_template."""
    answer_template: str = "<think></think><answer>{reference}</answer>"
    """Target of a row without a response: the reference in the answer format the
    rewards expect (rewards.fmt.pattern)."""


@dataclass(frozen=True)
class RunConfig:
    """Run-level settings."""

    algorithm: str = "grpo"
    """grpo (MAESTRO and the RL baselines) | sft (the SFT baseline: supervised
    fine-tuning on the train split's targets, no rollouts or rewards; see `sft:`)."""
    seed: int = 1234
    """Global seed."""
    num_steps: int = 10
    """MAESTRO steps."""
    output_dir: str = "runs/maestro"
    """Run directory."""
    save_every: int = 0
    """Checkpoint every this many steps (0: only at the end)."""
    log_rollouts: bool = False
    """Append every response of every step to rollouts.jsonl (prompt index, task, response,
    reference, raw reward components, weights used, action, advantage, sequence KL): the
    data `tools/diagnose_run.py` reads. About 1 KB per response."""
    overwrite: bool = False
    """Start afresh in a run directory that holds an earlier run's metrics but no
    checkpoint to resume (default: refuse, so two runs never mix in one metrics.jsonl)."""
    resume_fallback: bool = False
    """When the newest checkpoint fails verification, resume from the previous complete
    one instead of refusing."""
    verbose: bool = False
    """Show all library output (also MAESTRO_VERBOSE=1): vLLM's INFO logs, the known-harmless
    warnings and progress bars the default console hides (maestro_megatron/logs.py)."""
    keep_checkpoints: int = 2
    """Newest checkpoints kept (older ones are deleted)."""
    async_save: bool = False
    """Write checkpoints in the background (megatron-core's asynchronous torch_dist save):
    the step goes on while a forked writer saves the state as it was at the save; the
    checkpoint is hashed, named and made `latest` when the write has finished (checked at
    each step's start; waited for before the next save, a stop and the end of the run).
    Until then the previous checkpoint is the one a resume takes."""
    progress: bool = True
    """Progress bar with ETA on the logging rank."""


@dataclass(frozen=True)
class Recipe:
    """A whole recipe."""

    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    memory: MemoryConfig = field(default_factory=MemoryConfig)
    grpo: GRPOConfig = field(default_factory=GRPOConfig)
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    scalarizer: ScalarizerConfig = field(default_factory=ScalarizerConfig)
    conductor: ConductorConfig = field(default_factory=ConductorConfig)
    dynaopt: DynaoptConfig = field(default_factory=DynaoptConfig)
    rollout: RolloutConfig = field(default_factory=RolloutConfig)
    warmup: WarmupConfig = field(default_factory=WarmupConfig)
    sft: SftConfig = field(default_factory=SftConfig)
    data: DataConfig = field(default_factory=DataConfig)
    run: RunConfig = field(default_factory=RunConfig)
