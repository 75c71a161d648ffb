"""Figures (matplotlib): the replay figure, accuracy curves, per-example dynamics."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["plot_accuracy_curves", "plot_dynamics", "plot_replay"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "plotting needs matplotlib, a dependency of lightning-premem: pip install matplotlib."
        ) from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_replay(result: dict[str, Any], path: str | Path) -> Path:
    """Draw the paper's figure: pre-memorization vs test accuracy, one line per run, y = x for reference.

    Args:
        result: the mapping returned by :func:`lightning_premem.replay.replay`.
        path: where to write the image (its suffix picks the format, e.g. ``.png``).

    Returns:
        The path written.
    """
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(8.5, 5.5))
    lo, hi = 1.0, 0.0
    colors = plt.get_cmap("tab20").colors
    for index, run in enumerate(result["runs"]):
        points = [c for c in run["checkpoints"] if c["test_accuracy"] is not None]
        if not points:
            continue
        x = [c["pre_memorization_accuracy"] for c in points]
        y = [c["test_accuracy"] for c in points]
        ax.plot(x, y, marker="o", markersize=4, linewidth=1.2, color=colors[index % len(colors)], label=run["name"])
        lo, hi = min(lo, *x, *y), max(hi, *x, *y)
    if hi < lo:
        plt.close(fig)
        raise ValueError("nothing to plot: no checkpoint in these runs has a test accuracy.")
    pad = 0.05 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], linestyle="--", color="0.5", linewidth=1, label="y = x")
    r2 = result["r2"]
    title = f"threshold p = {result['threshold']:.4g}"
    for key, label in (("pre_memorization_accuracy", "pre-mem"), ("train_accuracy", "train acc")):
        if r2.get(key) is not None:
            title += f", R² {label} = {r2[key]:.3f}"
    ax.set_title(title)
    ax.set_xlabel("pre-memorization train accuracy")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=False)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_accuracy_curves(
    epochs: Sequence[int],
    curves: dict[str, Sequence[float]],
    path: str | Path,
    *,
    title: str = "",
) -> Path:
    """Plot accuracies per epoch (e.g. train, pre-memorization and test accuracy, memorized fraction).

    Args:
        epochs: the x values.
        curves: label -> one value per epoch; a label containing "memorized" is drawn dashed.
        path: where to write the image.
        title: the figure's title.

    Returns:
        The path written.
    """
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for label, values in curves.items():
        style = "--" if "memorized" in label else "-"
        ax.plot(list(epochs), list(values), style, marker="o", markersize=3, linewidth=1.6, label=label)
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy / fraction")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    if title:
        ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_dynamics(
    accuracy: Any,
    perplexity: Any,
    threshold: float,
    path: str | Path,
    *,
    epochs: Sequence[int] | None = None,
    max_examples: int = 120,
) -> Path:
    """Per-example learning dynamics, like the paper's Figure 3: examples x probe rounds.

    Left, the sampled accuracy; right, the target perplexity (log scale) with memorized cells
    (perplexity <= ``threshold``) outlined. Rows are sorted by the final pre-memorization
    accuracy, then by final accuracy; at most ``max_examples`` evenly spaced rows are drawn.

    Args:
        accuracy: ``[T, N]`` per-example accuracy.
        perplexity: ``[T, N]`` per-example target perplexity.
        threshold: the memorization threshold ``p``.
        path: where to write the image.
        epochs: labels of the T columns (default 0..T-1).
        max_examples: most rows drawn.

    Returns:
        The path written.
    """
    import numpy as np
    from matplotlib.colors import LogNorm

    from lightning_premem.functional import pre_memorization_accuracy

    plt = _pyplot()
    acc = np.asarray(accuracy, dtype=np.float64)
    ppl = np.asarray(perplexity, dtype=np.float64)
    premem = pre_memorization_accuracy(acc, ppl, threshold).numpy()
    order = np.lexsort((acc[-1], premem[-1]))
    if order.size > max_examples:
        order = order[np.linspace(0, order.size - 1, max_examples).round().astype(int)]
    acc, ppl = acc[:, order].T, ppl[:, order].T
    labels = list(range(acc.shape[1])) if epochs is None else list(epochs)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 5.5), sharey=True)
    shown = left.imshow(acc, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(shown, ax=left, label="sampled accuracy")
    upper = max(float(ppl.max()), threshold * 1.01)
    shown = right.imshow(
        ppl, aspect="auto", cmap="magma_r", norm=LogNorm(vmin=1.0, vmax=upper), interpolation="nearest"
    )
    fig.colorbar(shown, ax=right, label="target perplexity")
    right.contour(ppl <= threshold, levels=[0.5], colors="cyan", linewidths=0.8)
    for ax, name in ((left, "accuracy"), (right, f"perplexity (cyan: <= {threshold:.3g}, memorized)")):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ticks = np.arange(len(labels)) if len(labels) <= 12 else np.linspace(0, len(labels) - 1, 8).round().astype(int)
        ax.set_xticks(ticks, [str(labels[i]) for i in ticks])
    left.set_ylabel("training examples (sorted by final pre-memorization accuracy)")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path
