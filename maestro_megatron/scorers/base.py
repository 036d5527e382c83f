"""Scorer registry and the helpers every preference scorer shares.

A scorer is any object with ``score(prompts, responses, references) -> Tensor [B]``
(`maestro_megatron.rewards.batch.PreferenceScorer`); r_pref is its value per response.
New scorers are a class plus ``@register_scorer("name")``; ``build_scorer`` builds one
from the recipe's ``rewards.pref`` section (`PrefConfig`).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from typing import Any

ANSWER_PATTERN = r"<answer>(.*?)</answer>"

SCORERS: dict[str, Callable[..., Any]] = {}
"""name -> scorer class (called as ``cls(model_path=..., batch_size=..., device=...)``)."""


def register_scorer(name: str):
    def deco(cls):
        if name in SCORERS:
            raise ValueError(f"scorer {name!r} is already registered")
        SCORERS[name] = cls
        return cls
    return deco


def build_scorer(pref_cfg, *, device: str | None = None, **kwargs):
    """The scorer named by ``pref_cfg.scorer`` with its ``model_path`` and ``batch_size``."""
    if pref_cfg.scorer not in SCORERS:
        raise ValueError(f"rewards.pref.scorer: {pref_cfg.scorer!r} is not one of "
                         f"{sorted(SCORERS)}")
    return SCORERS[pref_cfg.scorer](model_path=pref_cfg.model_path,
                                    batch_size=pref_cfg.batch_size, device=device, **kwargs)


def extract_answer(response: str, pattern: str = ANSWER_PATTERN) -> str:
    """The first ``<answer>...</answer>`` span (stripped), else the whole response."""
    match = re.search(pattern, response, flags=re.DOTALL)
    return (match.group(1) if match else response).strip()


def offline_hub() -> None:
    """Never reach the model hub: every scorer loads from a local directory."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def default_device(device: str | None) -> str:
    if device is not None:
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def check_lengths(prompts, responses, references) -> int:
    num = len(responses)
    if len(prompts) != num or len(references) != num:
        raise ValueError(f"score: {len(prompts)} prompts, {num} responses, "
                         f"{len(references)} references (must be equal)")
    return num
