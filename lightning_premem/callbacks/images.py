"""The per-example dynamics image the callback logs to TensorBoard (``premem/per_example_dynamics``)."""

from __future__ import annotations

import numpy as np
from torch import Tensor

__all__ = ["dynamics_image"]


def dynamics_image(accuracy: Tensor, perplexity: Tensor, threshold: float, max_rows: int = 200) -> np.ndarray:
    """``[3, H, W]`` uint8: examples (rows, sorted by final accuracy) x probe rounds (columns), two panels.

    Left, accuracy (black 0 → green 1). Right, perplexity: memorized cells (``<= threshold``) red, others blue,
    brighter for higher perplexity (log scale up to 4x the threshold).
    """
    acc = accuracy.double().numpy().T  # [N, T]
    ppl = perplexity.double().numpy().T
    if acc.shape[0] > max_rows:
        rows = np.linspace(0, acc.shape[0] - 1, max_rows).round().astype(int)
        acc, ppl = acc[rows], ppl[rows]
    order = np.lexsort((ppl[:, -1], acc[:, -1]))
    acc, ppl = acc[order], ppl[order]
    cell_h, cell_w = (2 if acc.shape[0] > 50 else 6), 12
    n, t = acc.shape
    left = np.zeros((3, n, t))
    left[1] = acc
    right = np.zeros((3, n, t))
    memorized = ppl <= threshold
    level = np.clip(np.log(ppl / threshold) / np.log(4.0), 0, 1)
    right[0] = np.where(memorized, 0.9, 0.0)
    right[2] = np.where(memorized, 0.0, 0.35 + 0.65 * level)
    gap = np.ones((3, n, 1))
    panel = np.concatenate([left, gap, right], axis=2)
    image = np.repeat(np.repeat(panel, cell_h, axis=1), cell_w, axis=2)
    return np.asarray((image * 255).round(), dtype=np.uint8)
