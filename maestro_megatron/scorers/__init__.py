"""Preference scorers for r_pref: ``score(prompts, responses, references) -> Tensor [B]``.

``SCORERS`` maps recipe names to classes; ``build_scorer(recipe.rewards.pref)`` builds
one. Heavy imports (transformers, model weights) happen when a scorer is constructed.
"""

from maestro_megatron.scorers.base import (
    SCORERS,
    build_scorer,
    extract_answer,
    register_scorer,
)
from maestro_megatron.scorers.classifier import SequenceClassifierScorer
from maestro_megatron.scorers.embedding import EmbeddingSimilarityScorer

__all__ = ["SCORERS", "EmbeddingSimilarityScorer", "SequenceClassifierScorer",
           "build_scorer", "extract_answer", "register_scorer"]
