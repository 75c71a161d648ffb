"""Figures (matplotlib, an optional extra: ``pip install 'lightning-premem[plot]'``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

__all__ = ["plot_replay"]


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise ImportError(
            "plotting needs matplotlib: pip install 'lightning-premem[plot]' (or pip install matplotlib)."
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
