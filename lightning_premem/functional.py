"""Pure tensor functions of the method: memorization, pre-memorization accuracy, R².

Definitions (Kang et al., arXiv 2411.07681), for training example ``i`` at checkpoint ``t``:

- ``memorized_t(i) = perplexity_t(i) <= p``;
- ``masked_t(i) = accuracy_t(i) * (not memorized_t(i))``;
- ``pre_memorization_t(i) = min(max_{t' <= t} masked_t'(i), accuracy_t(i))``.

Nothing here imports Lightning; the :class:`~lightning_premem.PreMemorizationAccuracy` metric
calls :func:`masked_accuracy` and the same input checks, so the two agree exactly.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from lightning_premem._checks import as_float_tensor, check_history, check_perplexity, check_threshold

__all__ = [
    "loglog_threshold_to_perplexity",
    "masked_accuracy",
    "memorization_mask",
    "pre_memorization_accuracy",
    "r_squared",
]

#: The authors' log-log thresholds tau: "not memorized" iff log(log(perplexity)) >= tau.
AUTHORS_LOGLOG_THRESHOLDS = {"gsm8k": -2.3, "math": -1.7}


def loglog_threshold_to_perplexity(tau: float) -> float:
    """Convert the authors' log-log threshold ``tau`` into a perplexity threshold ``p``.

    The authors' notebooks call an example "not memorized" when
    ``log(log(perplexity)) >= tau``; that is ``perplexity > p`` with ``p = exp(exp(tau))``.

    Example:
        >>> round(loglog_threshold_to_perplexity(-2.3), 4)  # GSM8K
        1.1055
        >>> round(loglog_threshold_to_perplexity(-1.7), 4)  # MATH
        1.2004
    """
    if isinstance(tau, bool) or not isinstance(tau, (int, float)) or not math.isfinite(tau):
        raise ValueError(f"`tau` must be a finite number (e.g. -2.3 for GSM8K), got {tau!r}.")
    return math.exp(math.exp(tau))


def memorization_mask(perplexity: Any, threshold: float) -> Tensor:
    """Return the boolean mask of memorized entries: ``perplexity <= threshold``.

    Args:
        perplexity: perplexities of the target traces, any shape, each finite and ``>= 1``.
        threshold: the perplexity ``p`` at or below which an example counts as memorized.

    Example:
        >>> memorization_mask([1.01, 1.5, 1.1], threshold=1.1)
        tensor([ True, False,  True])
    """
    threshold = check_threshold(threshold)
    perplexity = check_perplexity(as_float_tensor(perplexity, "perplexity"), "perplexity")
    mask: Tensor = perplexity <= threshold
    return mask


def masked_accuracy(accuracy: Tensor, memorized: Tensor) -> Tensor:
    """Accuracy where not memorized, 0 where memorized: ``accuracy * (not memorized)``.

    Example:
        >>> masked_accuracy(torch.tensor([0.4, 1.0]), torch.tensor([False, True]))
        tensor([0.4000, 0.0000])
    """
    return torch.where(memorized, torch.zeros_like(accuracy), accuracy)


def pre_memorization_accuracy(accuracy: Any, perplexity: Any, threshold: float) -> Tensor:
    """Per-example pre-memorization accuracy of a history of checkpoints.

    Args:
        accuracy: ``[T, N]`` fraction of sampled answers that were correct, per checkpoint
            (rows, in time order) and training example (columns), each in ``[0, 1]``.
            A 1-D ``[N]`` input is one checkpoint.
        perplexity: ``[T, N]`` (or ``[N]``) perplexity of each example's target trace.
        threshold: perplexity ``p``; an example is memorized at a checkpoint iff its
            perplexity is ``<= p``. See :func:`loglog_threshold_to_perplexity` for the
            authors' values.

    Returns:
        Float tensor of the input's shape: ``min(max_{t'<=t} masked_t', accuracy_t)``.
        Floating inputs keep their dtype; others become ``float32``.

    Example:
        >>> acc = [[0.4, 1.0], [0.8, 1.0], [1.0, 1.0]]
        >>> ppl = [[1.9, 1.5], [1.3, 1.05], [1.01, 1.01]]
        >>> pre_memorization_accuracy(acc, ppl, threshold=1.1)
        tensor([[0.4000, 1.0000],
                [0.8000, 1.0000],
                [0.8000, 1.0000]])
    """
    accuracy, perplexity = check_history(accuracy, perplexity)
    threshold = check_threshold(threshold)
    masked = masked_accuracy(accuracy, perplexity <= threshold)
    if masked.ndim == 1:
        return masked
    running_max = torch.cummax(masked, dim=0).values
    return torch.minimum(running_max, accuracy)


def r_squared(x: Any, y: Any) -> float:
    """R² of the least-squares linear fit of ``y`` on ``x`` (the squared Pearson correlation).

    Example:
        >>> round(r_squared([0.1, 0.2, 0.3, 0.4], [0.12, 0.18, 0.33, 0.41]), 4)
        0.9742
    """
    xs = torch.as_tensor(x, dtype=torch.float64).flatten()
    ys = torch.as_tensor(y, dtype=torch.float64).flatten()
    if xs.numel() != ys.numel():
        raise ValueError(f"`x` and `y` must have the same length, got {xs.numel()} and {ys.numel()}.")
    if xs.numel() < 2:
        raise ValueError(f"R² needs at least 2 points, got {xs.numel()}.")
    if not (torch.isfinite(xs).all() and torch.isfinite(ys).all()):
        raise ValueError("R² needs finite values; drop the points with NaN or inf first.")
    dx, dy = xs - xs.mean(), ys - ys.mean()
    sxx, syy = float((dx * dx).sum()), float((dy * dy).sum())
    if sxx == 0.0 or syy == 0.0:
        which = "x" if sxx == 0.0 else "y"
        raise ValueError(
            f"R² is undefined: every `{which}` value is the same ({float(xs[0] if which == 'x' else ys[0])})."
        )
    return float((dx * dy).sum()) ** 2 / (sxx * syy)
