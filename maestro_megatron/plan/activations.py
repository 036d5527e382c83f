"""Activation and logits bytes of one GPU, derived for this decoder (pure arithmetic).

Symbols, per GPU and micro-batch: b micro-batch size, s tokens of one sequence on this
GPU (seq_length / CP), h hidden, f ffn, a heads, g query groups, d head dim, q = a d,
kv = g d, t TP, p = t with sequence parallelism else 1, y activation bytes (2 for
bf16/fp16; FP8 is sized as bf16, an upper bound: TE's FP8 GEMM inputs replace some bf16
copies), V_t = padded vocab / t. Tokens N = b s. Dropout is 0, biases none.

What one layer saves for backward, per token (`layer_terms`, in bytes):

    MLP (both specs)   fc1 output 2f/t (gate, up; silu keeps gate, a view); silu(gate)
                       f/t; up + glu_linear_offset f/t (megatron's glu adds the offset,
                       a new tensor); their product f/t (fc2's input): 5f/t x y
    RoPE               megatron's unfused `_apply_rotary_pos_emb_bshd` multiplies by
                       cos/sin that need no gradient, so it keeps only those ([s, d],
                       negligible); its output is kept by attention
    Transformer Engine (GPU): fused RMSNorm+linear keeps input and normalised output,
                       2h/p per norm (4h/p); flash attention keeps q and k (RoPE outputs,
                       (q + kv)/t), v (a view: the whole QKV output (q + 2kv)/t stays)
                       and its output q/t (also linear_proj's input), no s^2 term;
                       Qwen3's q/k norms (TE RMSNorm: input + rsigma) add the query's
                       reshaped copy q/t (the key is a view of the QKV output); all x y
    local spec (CPU; a GPU without TE): torch's composite RMSNorm keeps its input in
                       fp32 (a copy unless y = 4) and x rsqrt (fp32), the next linear its
                       output: h (8 + y) per norm; DotProductAttention repeats k and v to
                       a heads (q/t each, kept) and keeps the RoPE'd q, the context q/t
                       (x y) and the [b a/t, s, s] softmax in fp32 plus its cast to y
                       when y = 2: s (a/t) sigma per token, sigma = 4 (fp32) or 6; q/k
                       norms keep fp32 inputs and x rsqrt, 8 (q + kv)/t (at fp32 the
                       key's input is a view: the whole QKV output stays instead)

fp32 per-row statistics (rsqrt / rsigma, flash attention's log-sum-exp) and the RoPE
tables are left out (< 0.5 % at 8B widths). The local spec's terms match what autograd's
saved-tensor hooks see on CPU (megatron-core 0.16.1, fp32 and bf16, GQA and MHA, with
and without q/k norms) within 2.5 % at toy widths, the rest being those statistics;
TE's are derived from its modules' save_for_backward lists.

Recompute (memory.recompute):
- none: the terms above;
- selective (megatron's core_attn checkpoint): it keeps the attention inputs q, k, v
  (views already kept) and drops what attention saves inside; the output is kept by
  linear_proj anyway, so with flash attention selective = none, and the local spec
  drops the repeated k, v and the s^2 softmax (keeping the RoPE'd k, kv/t, and the QKV
  output under v);
- full (uniform, R = recompute_num_layers): the input of every group of R layers,
  y h/p per token, plus during backward one group's recomputed activations (R layers,
  as with none).

In-flight micro-batches (megatron's schedules): 1F1B keeps min(P - rank, n) micro-
batches of the whole stage on pipeline rank `rank` (the first stage: P); interleaved
(VPP = v) keeps min(2 (P - rank - 1) + (v - 1) P + 1, n v) chunk forwards of L/(P v)
layers each, which on the first stage is L (1 + (P - 1)/(P v)) layer-micro-batches,
megatron's interleaving penalty. With P > 1 each in-flight forward's output [s/p, b, h]
is kept too (megatron's deallocate_pipeline_outputs defaults to False).

The last stage also keeps the final norm's terms and, with sequence parallelism, the
Conductor's h capture (the norm output gathered over the sequence, h).
"""

from __future__ import annotations

from dataclasses import dataclass

_SCORE_BYTES_TRAIN = {2: 6, 4: 4}  # local spec: saved softmax (fp32) [+ its bf16 cast]
_SCORE_BYTES_FORWARD = {2: 12, 4: 8}  # scores, [fp32 copy,] softmax, [bf16 cast]
LOGPROB_FP32_BYTES = {2: 12, 4: 8}
"""fp32 bytes per logit element of one block of vocab_parallel.py's math: forward keeps
x = block.float() (bf16 input only), z = x - max and exp(z) at once (12 / 8 bytes);
backward recomputes z and its softmax in place (8 / 4)."""


@dataclass(frozen=True)
class ActivationShape:
    """What the activation formulas read (per GPU, per micro-batch)."""

    micro_batch: int
    seq: int
    """s: tokens of one sequence on this GPU (seq_length / CP)."""
    hidden: int
    ffn: int
    heads: int
    groups: int
    head_dim: int
    tp: int
    sequence_parallel: bool
    qk_layernorm: bool
    bytes: int
    """y: 2 (bf16, fp16, FP8 sized as bf16) or 4 (fp32)."""
    spec: str
    """transformer_engine (flash attention) | local (full score matrix)."""

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq

    @property
    def sp(self) -> int:
        return self.tp if self.sequence_parallel else 1


def layer_terms(x: ActivationShape, recompute: str = "none") -> dict[str, float]:
    """BYTES one layer keeps per token, by what keeps them, for recompute none |
    selective (module docstring)."""
    t, y, h = x.tp, x.bytes, x.hidden
    q, kv = x.heads * x.head_dim / t, x.groups * x.head_dim / t
    terms = {"mlp": y * 5 * x.ffn / t}
    if x.spec != "local":
        terms.update(norms=y * 4 * h / x.sp, qkv_output=y * (q + 2 * kv),
                     rope_qk=y * (q + kv), attention_output=y * q)
        if x.qk_layernorm:
            terms["query_copy"] = y * q
        return terms
    terms["norms"] = 2 * h * (8 + y)  # fp32 input (a copy unless y = 4), x rsqrt; output
    buffer_kept = False
    if x.qk_layernorm:  # fp32 inputs: the query copy, the key (a view of the QKV output)
        terms["qk_norm"] = 8 * q + 4 * kv + (4 * (q + 2 * kv) if y == 4 else 4 * kv)
        buffer_kept = y == 4
    terms.update(rope_q=y * q, context=y * q)
    if recompute == "selective" or x.heads == x.groups:  # k, v are attention's inputs
        terms["rope_k"] = y * kv
        if not buffer_kept:
            terms["qkv_output"] = y * (q + 2 * kv)  # under the view v
    else:  # GQA: k and v repeated to a heads
        terms["kv_repeated"] = y * 2 * q
    if recompute != "selective":
        terms["scores"] = x.seq * x.heads / t * _SCORE_BYTES_TRAIN[y]
    return terms


def layer_bytes_per_token(x: ActivationShape, recompute: str) -> float:
    """Bytes one layer keeps per token for recompute none | selective."""
    return sum(layer_terms(x, recompute).values())


def inflight_forwards(pp: int, vpp: int | None, pp_rank: int, num_microbatches: int) -> int:
    """Chunk forwards whose activations pipeline rank `pp_rank` holds at once."""
    if vpp is None:
        return min(pp - pp_rank, num_microbatches)
    return min(2 * (pp - pp_rank - 1) + (vpp - 1) * pp + 1, num_microbatches * vpp)


def head_bytes(x: ActivationShape) -> int:
    """Last stage: the final norm's bytes (TE 2h/p y; local h (8 + y), as a layer's
    norm) and, with sequence parallelism, the gathered h capture (h y; without it the
    capture is the norm output itself)."""
    norm = x.hidden * (8 + x.bytes) if x.spec == "local" else 2 * x.hidden / x.sp * x.bytes
    capture = x.hidden * x.bytes if x.sp > 1 else 0
    return int((norm + capture) * x.tokens)


def train_activations(x: ActivationShape, *, recompute: str, recompute_num_layers: int,
                      chunk_layers: int, inflight: int, pipelined: bool,
                      last_stage: bool) -> int:
    """Bytes of activations kept for backward on one GPU at its busiest moment.

    chunk_layers: layers of one model chunk (L / P, or L / (P v) interleaved);
    inflight: `inflight_forwards`; pipelined: P > 1 (outputs kept per forward).
    """
    tokens, hidden_bytes = x.tokens, x.bytes * x.hidden / x.sp
    if recompute == "full":
        per_group = min(recompute_num_layers, chunk_layers)
        groups = -(-chunk_layers // recompute_num_layers)
        kept = inflight * groups * hidden_bytes * tokens \
            + per_group * layer_bytes_per_token(x, "none") * tokens
    else:
        kept = inflight * chunk_layers * layer_bytes_per_token(x, recompute) * tokens
    outputs = (inflight - int(last_stage)) * hidden_bytes * tokens if pipelined else 0
    return int(kept + outputs + (head_bytes(x) if last_stage else 0))


def forward_activations(x: ActivationShape, *, pipelined: bool, last_stage: bool) -> int:
    """Bytes of a no-grad forward of one micro-batch: the working set of one layer, an
    upper bound (every tensor that may be alive together at its largest op):

        MLP        h/p (residual) + h (normalised input, gathered) + 5f/t
        attention  h/p + h + (q + 2kv)/t + 3 (q + kv)/t + q/t   [local: + 2q/t and the
                   s^2 scores: s a/t x 12 bytes (bf16) or 8 (fp32)]

    plus the pipeline's received input and sent output (2 y h/p) and the last stage's
    norm and h capture (`head_bytes`).
    """
    t, q, kv = x.tp, x.heads * x.head_dim, x.groups * x.head_dim
    stream = x.hidden / x.sp + x.hidden
    mlp = stream + 5 * x.ffn / t
    attention = stream + (q + 2 * kv) / t + 3 * (q + kv) / t + q / t
    scores = 0.0
    if x.spec == "local":
        attention += 2 * q / t
        scores = x.seq * x.heads / t * _SCORE_BYTES_FORWARD[x.bytes]
    work = max(x.bytes * mlp, x.bytes * attention + scores) * x.tokens
    buffers = 2 * x.bytes * x.hidden / x.sp * x.tokens if pipelined else 0
    return int(work + buffers + (head_bytes(x) if last_stage else 0))


def logits_bytes(x: ActivationShape, vocab_padded: int, chunk_tokens: int,
                 train: bool) -> dict[str, int]:
    """The output layer's logits on the last stage, for one micro-batch.

    logits: N V_t y (the [b, s, V/t] shard, kept for backward by the log-prob function);
    logits_grad (train): 2 N V_t y (the function's gradient and autograd's zero-padded
    copy for forward.py's `logits[:, :-1]` slice); logprob_fp32: one block of
    min(chunk, N) tokens (chunk 0: all N) x V_t x `LOGPROB_FP32_BYTES`. Summed, an upper
    bound: the forward block, the backward block and the two gradients never all
    coexist.
    """
    shard = vocab_padded // x.tp
    tokens = x.tokens
    block = tokens if chunk_tokens <= 0 else min(chunk_tokens, tokens)
    return {"logits": tokens * shard * x.bytes,
            "logits_grad": 2 * tokens * shard * x.bytes if train else 0,
            "logprob_fp32": block * shard * LOGPROB_FP32_BYTES[x.bytes]}
