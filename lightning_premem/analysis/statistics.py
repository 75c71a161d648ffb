"""Statistics of the analysis: rank correlation with ties, its bootstrap interval, R² that may be undefined."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from lightning_premem.functional import r_squared

__all__ = ["r2_or_none", "spearman", "spearman_bootstrap_ci"]


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    order = np.argsort(values, kind="mergesort")
    ordered = values[order]
    group = np.cumsum(np.r_[True, ordered[1:] != ordered[:-1]]) - 1  # tie group of each sorted position
    counts = np.bincount(group)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    ranks = np.empty(values.size, dtype=np.float64)
    ranks[order] = (starts + (counts + 1) / 2.0)[group]  # mean of ranks start+1 .. start+count
    return ranks


def spearman(x: Any, y: Any) -> float:
    """Spearman rank correlation: the Pearson correlation of the average ranks (ties share their mean rank).

    Args:
        x: one value per item (array-like of finite numbers).
        y: one value per item, same length.

    Returns:
        The correlation in ``[-1, 1]``.

    Raises:
        ValueError: on fewer than 2 items, different lengths, non-finite values, or a constant input.

    Example:
        >>> spearman([1, 2, 2, 3], [10, 20, 30, 40])
        0.9486832980505138
        >>> spearman([1, 2, 3], [3, 2, 1])
        -1.0
    """
    xs = np.asarray(x, dtype=np.float64).ravel()
    ys = np.asarray(y, dtype=np.float64).ravel()
    if xs.size != ys.size:
        raise ValueError(f"`x` and `y` must have the same length, got {xs.size} and {ys.size}.")
    if xs.size < 2:
        raise ValueError(f"a rank correlation needs at least 2 items, got {xs.size}.")
    if not (np.isfinite(xs).all() and np.isfinite(ys).all()):
        raise ValueError("a rank correlation needs finite values; drop the items with NaN or inf first.")
    return _pearson(_average_ranks(xs), _average_ranks(ys))


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    da, db = a - a.mean(), b - b.mean()
    saa, sbb = float(da @ da), float(db @ db)
    if saa == 0.0 or sbb == 0.0:
        raise ValueError("the correlation is undefined: one of the inputs is constant.")
    return float(np.clip(float(da @ db) / math.sqrt(saa * sbb), -1.0, 1.0))


def spearman_bootstrap_ci(
    x: np.ndarray, y: np.ndarray, *, num_resamples: int, confidence: float, seed: int
) -> tuple[float | None, float | None]:
    """Percentile bootstrap interval of :func:`spearman` over items (resamples with a constant input skipped)."""
    rng = np.random.default_rng(seed)
    values = []
    for _ in range(num_resamples):
        pick = rng.integers(0, x.size, x.size)
        try:
            values.append(spearman(x[pick], y[pick]))
        except ValueError:
            continue
    if len(values) < max(10, num_resamples // 2):
        return None, None
    alpha = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(np.array(values), [alpha, 1.0 - alpha])
    return float(lo), float(hi)


def r2_or_none(x: Sequence[float], y: Sequence[float]) -> float | None:
    """R² of a linear fit of ``y`` on ``x``, or ``None`` where it is undefined (a constant, too few points)."""
    try:
        return r_squared(x, y)
    except ValueError:
        return None
