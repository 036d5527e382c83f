"""The rollout engine contract: prompts in, G sampled responses per prompt out.

The trainer only talks to this interface (DESIGN.md section 2, "rollout engine"); the
vLLM implementation lives in `vllm_engine.py` and new engines join `ENGINES` in
`maestro_megatron.rollout`. Nothing here imports vLLM.
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from maestro_megatron.errors import UserError
from maestro_megatron.rollout.bucket_io import NamedTensor, serialize_bucket

if TYPE_CHECKING:
    from maestro_megatron.config.schema import RolloutConfig

Prompts = Sequence[str] | Sequence[Sequence[int]]

DEFAULT_BUCKET_BYTES = 512 * 1024 * 1024
"""Default size bound of one refit bucket (`rollout.refit.refit_engine`)."""


class EngineFeatureUnsupported(NotImplementedError):
    """The engine (or the platform it runs on) cannot do this; nothing was done."""


class EngineDiedError(UserError):
    """The engine's process died under a call (killed, out of memory, a crashed worker).
    Not a bug in this process and not recoverable within the run: the CLI prints it as
    one line and exits 2 (like a user error); the last complete checkpoint resumes."""


@dataclass(frozen=True)
class SamplingConfig:
    """Sampling settings of one `generate` call (mirrors the recipe's `rollout` section)."""

    temperature: float = 1.0
    """Softmax temperature (> 0)."""
    top_p: float = 1.0
    """Nucleus sampling mass in (0, 1]."""
    max_new_tokens: int = 64
    """Response length cap; a response that hits it is `truncated`."""
    seed: int | None = None
    """Per-call sampling seed; None leaves the engine's own RNG stream (not reproducible)."""

    @classmethod
    def from_rollout(cls, rollout: RolloutConfig, seed: int | None = None) -> SamplingConfig:
        """Build from a recipe's `rollout` section plus a step seed (e.g. run.seed + step)."""
        return cls(temperature=rollout.temperature, top_p=rollout.top_p,
                   max_new_tokens=rollout.max_new_tokens, seed=seed)


@dataclass
class Response:
    """One sampled response.

    token_ids: [T] response tokens (prompt excluded).
    rollout_logprobs: [T] float32, the sampler's logprob of each response token.
    """

    token_ids: list[int]
    text: str
    rollout_logprobs: torch.Tensor
    finish_reason: str
    """"stop" (EOS or stop string) or "length" (hit max_new_tokens)."""

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)


@dataclass
class RolloutGroup:
    """The G responses to one prompt (a GRPO group)."""

    prompt_token_ids: list[int]
    responses: list[Response] = field(default_factory=list)

    @property
    def group_size(self) -> int:
        return len(self.responses)


SLEEP_LEVELS = (1, 2)
"""vLLM's sleep levels that free GPU memory (`RolloutEngine.sleep`)."""
SLEEP_TAGS = ("weights", "kv_cache")
"""What `RolloutEngine.wake_up` re-allocates, in the trainer's order."""


def check_sleep_level(level: int) -> None:
    if level not in SLEEP_LEVELS:
        raise ValueError(f"sleep level must be one of {SLEEP_LEVELS}, got {level!r}")


def check_sleep_tags(tags: Sequence[str] | None) -> None:
    unknown = sorted(set(tags or ()) - set(SLEEP_TAGS))
    if unknown or (tags is not None and not tags):
        raise ValueError(f"wake_up tags must be among {SLEEP_TAGS} (None: all), got {tags!r}")


def check_awake(asleep: frozenset[str], call: str, needs: Sequence[str] = SLEEP_TAGS) -> None:
    """Refuse `call` on an engine whose `needs` (among `SLEEP_TAGS`) are asleep: vLLM
    would read freed or stale memory (generate on a sleeping KV cache, a refit into
    sleeping weights) instead of failing."""
    sleeping = sorted(set(needs) & asleep)
    if sleeping:
        raise RuntimeError(f"{call} on a sleeping engine ({', '.join(sleeping)} asleep): "
                           f"wake_up({sleeping}) first")


class RolloutEngine(abc.ABC):
    """A generation engine that can be refit in place with new policy weights.

    Weight names are Hugging Face names (`model.layers.0.self_attn.q_proj.weight`).
    """

    supports_sleep: bool = False
    """True where `sleep`/`wake_up` really free and restore engine memory."""

    @abc.abstractmethod
    def generate(self, prompts: Prompts, n: int, sampling: SamplingConfig,
                 first_index: int = 0) -> list[RolloutGroup]:
        """Sample `n` responses for each prompt (text, or token ids used as given).

        With `sampling.seed`, prompt i is sampled with a seed of (seed, first_index + i):
        its global index in the step's batch, so responses do not depend on how the
        batch is split over engines. Returns one `RolloutGroup` per prompt, in prompt
        order, each with `n` responses.
        """

    @abc.abstractmethod
    def score_sequences(self, token_ids: Sequence[Sequence[int]],
                        prompt_lens: Sequence[int]) -> list[torch.Tensor]:
        """Logprobs (temperature 1, no top-p) of fixed sequences under the engine's weights.

        token_ids[i]: [L_i] full sequence; prompt_lens[i] = P_i >= 1.
        Returns, per sequence, [L_i - P_i] float32: log p(token_t | tokens_<t) for
        t = P_i .. L_i - 1 (the "response" part; the refit verifier compares these).
        """

    def load_bucket(self, bucket: Sequence[NamedTensor]) -> int:
        """Load one bucket of HF-named tensors in place (what `refit_engine` calls).

        Same contract as `load_serialized_bucket`; this default sends the bucket as
        safetensors bytes through it. Engines with a cheaper transport override this.
        """
        return self.load_serialized_bucket(serialize_bucket(bucket))

    @abc.abstractmethod
    def load_serialized_bucket(self, blob: bytes) -> int:
        """Load one safetensors-serialised bucket of HF-named tensors in place.

        Every fused module (q/k/v, gate/up) must be whole inside one bucket. Returns the
        number of tensors loaded. Call `finish_refit` after the last bucket.
        """

    @abc.abstractmethod
    def finish_refit(self) -> None:
        """Drop state computed with the old weights (e.g. cached prefixes' KV)."""

    def sleep(self, level: int = 1) -> bool:
        """Free engine memory until `wake_up` (the trainer: after each rollout). level 1:
        weights offloaded to host memory, KV cache discarded; 2: both discarded (the
        next refit writes every weight). Returns whether memory was freed: False, and
        nothing done, on an engine without sleep mode (`supports_sleep` False)."""
        check_sleep_level(level)
        return False

    def wake_up(self, tags: Sequence[str] | None = None) -> bool:
        """Re-allocate what `sleep` freed: `tags` among `SLEEP_TAGS` (None: all). The
        trainer wakes "weights" before the refit writes them and "kv_cache" after it;
        the engine serves requests again once both are awake. Returns whether memory
        was restored: False, and nothing done, where nothing of `tags` sleeps (no
        sleep mode, or awake already)."""
        check_sleep_tags(tags)
        return False

    @abc.abstractmethod
    def close(self) -> None:
        """Stop the engine and its processes; idempotent."""

    def __enter__(self) -> RolloutEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
