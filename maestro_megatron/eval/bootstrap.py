"""Bootstrap intervals for accuracies and for differences between runs (numpy only).

Percentile bootstrap (Efron & Tibshirani 1993, ch. 13): resample the n per-sample
scores x (0/1 for accuracy) with replacement B times,
    theta*_b = mean(x[idx_b]),   idx_b ~ Uniform{0..n-1}^n,
and report the (alpha/2, 1 - alpha/2) quantiles of theta*_b (numpy's default linear
interpolation). The paired bootstrap of two runs on the SAME samples resamples the
pairs together, theta*_b = mean(y[idx_b] - x[idx_b]), so what both runs find hard
cancels out of the interval. The generator is seeded: one seed, one interval.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

DEFAULT_RESAMPLES = 2000


@dataclass(frozen=True)
class Interval:
    """A statistic and its bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "low": self.low, "high": self.high}


def _resampled_means(values: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """[B] means of `values` [n] over B index draws."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(resamples, len(values)))
    return values[idx].mean(axis=1)


def bootstrap_mean(values, *, confidence: float = 0.95, resamples: int = DEFAULT_RESAMPLES,
                   seed: int = 0) -> Interval | None:
    """Mean of `values` [n] with its percentile interval; None when n = 0."""
    x = np.asarray(values, dtype=np.float64)
    if x.size == 0:
        return None
    means = _resampled_means(x, resamples, seed)
    alpha = 1.0 - confidence
    low, high = np.quantile(means, [alpha / 2, 1 - alpha / 2])
    return Interval(float(x.mean()), float(low), float(high))


def paired_difference(base, other, *, confidence: float = 0.95,
                      resamples: int = DEFAULT_RESAMPLES, seed: int = 0) -> Interval | None:
    """mean(other - base) over paired samples (base[i], other[i] score the same sample)
    and its paired percentile interval; None when there is no pair."""
    x = np.asarray(base, dtype=np.float64)
    y = np.asarray(other, dtype=np.float64)
    if x.shape != y.shape:
        raise ValueError(f"paired bootstrap needs equal lengths, got {x.shape} and {y.shape}")
    return bootstrap_mean(y - x, confidence=confidence, resamples=resamples, seed=seed)
