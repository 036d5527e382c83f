"""r_pref for the 8B/70B recipes: a sequence-classification reward model.

Any ``AutoModelForSequenceClassification`` directory with one output (the Skywork-Reward
family: ``Skywork/Skywork-Reward-V2-Llama-3.1-8B``, ``...-Qwen3-8B``, ...), loaded from a
local path only. Each (prompt, response) pair is formatted with the tokenizer's chat
template as a user turn and an assistant turn (a leading BOS the template writes is
removed, because the tokenizer adds its own), or as ``prompt + "\\n\\n" + response``
when the tokenizer has no template; the score is the model's single logit.
"""

from __future__ import annotations

from pathlib import Path

import torch

from maestro_megatron.scorers.base import (
    check_lengths,
    default_device,
    offline_hub,
    register_scorer,
)


@register_scorer("sequence_classifier")
class SequenceClassifierScorer:
    """Reward-model logits for chat-formatted (prompt, response) pairs."""

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 16,
                 device: str | None = None, dtype: torch.dtype | None = None,
                 max_length: int | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if model_path is None:
            raise ValueError("rewards.pref.model_path: the sequence_classifier scorer needs "
                             "a local reward-model directory")
        offline_hub()
        self.model_path = Path(model_path)
        if not (self.model_path / "config.json").is_file():
            raise FileNotFoundError(f"rewards.pref.model_path: no config.json in "
                                    f"{self.model_path}")
        self.batch_size = batch_size
        self.device = default_device(device)
        if dtype is None:
            dtype = torch.bfloat16 if self.device.startswith("cuda") else torch.float32
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self.model = AutoModelForSequenceClassification.from_pretrained(
            self.model_path, local_files_only=True, dtype=dtype).to(self.device).eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"rewards.pref.model_path: {self.model_path} has num_labels="
                             f"{self.model.config.num_labels}; a reward model has 1")
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        limits = [n for n in (max_length, self.tokenizer.model_max_length,
                              getattr(self.model.config, "max_position_embeddings", None))
                  if isinstance(n, int) and n > 0]
        self.max_length = min(limits) if limits else None

    def format(self, prompt: str, response: str) -> str:
        """The text the reward model reads for one pair."""
        tok = self.tokenizer
        if not tok.chat_template:
            return f"{prompt}\n\n{response}"
        text = tok.apply_chat_template([{"role": "user", "content": prompt},
                                        {"role": "assistant", "content": response}],
                                       tokenize=False)
        if tok.bos_token and text.startswith(tok.bos_token):
            text = text[len(tok.bos_token):]
        return text

    @torch.inference_mode()
    def score(self, prompts: list[str], responses: list[str],
              references: list[str | None]) -> torch.Tensor:
        """-> [B] reward logits (fp32). References are not used."""
        check_lengths(prompts, responses, references)
        texts = [self.format(p, r) for p, r in zip(prompts, responses)]
        out = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], padding=True,
                                 truncation=self.max_length is not None,
                                 max_length=self.max_length, return_tensors="pt")
            logits = self.model(**enc.to(self.device)).logits                 # [b, 1]
            out.append(logits[:, 0].float().cpu())
        return torch.cat(out) if out else torch.zeros(0)
