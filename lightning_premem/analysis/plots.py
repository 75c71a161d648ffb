"""Figures (matplotlib): the replay figure, accuracy curves, per-example dynamics, and the report's figures."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "plot_accuracy_curves",
    "plot_calibration",
    "plot_dynamics",
    "plot_predictors",
    "plot_r2_table",
    "plot_replay",
    "plot_robustness",
]


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


def _save(fig: Any, plt: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_replay(result: dict[str, Any], path: str | Path) -> Path:
    """Draw the paper's figure: pre-memorization vs test accuracy, one line per run, y = x for reference.

    Args:
        result: the mapping returned by :func:`lightning_premem.analysis.replay.replay`.
        path: where to write the image (its suffix picks the format, e.g. ``.png``).

    Returns:
        The path written.
    """
    plt = _pyplot()
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
    return _save(fig, plt, path)


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
    return _save(fig, plt, path)


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
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 5.5), sharey=True)
    shown = left.imshow(acc, aspect="auto", cmap="viridis", vmin=0, vmax=1, interpolation="nearest")
    fig.colorbar(shown, ax=left, label="sampled accuracy")
    upper = max(float(ppl.max()), threshold * 1.01)
    shown = right.imshow(
        ppl, aspect="auto", cmap="magma_r", norm=LogNorm(vmin=1.0, vmax=upper), interpolation="nearest"
    )
    fig.colorbar(shown, ax=right, label="target perplexity")
    if ppl.shape[1] > 1 and ppl.shape[0] > 1:  # a contour needs a 2-D grid
        right.contour(ppl <= threshold, levels=[0.5], colors="cyan", linewidths=0.8)
    for ax, name in ((left, "accuracy"), (right, f"perplexity (cyan: <= {threshold:.3g}, memorized)")):
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ticks = np.arange(len(labels)) if len(labels) <= 12 else np.linspace(0, len(labels) - 1, 8).round().astype(int)
        ax.set_xticks(ticks, [str(labels[i]) for i in ticks])
    left.set_ylabel("training examples (sorted by final pre-memorization accuracy)")
    return _save(fig, plt, path)


def plot_r2_table(r2: dict[str, float | None], path: str | Path) -> Path:
    """Bar chart of the R² of test accuracy on each predictor (predictors without a value are marked n/a).

    Args:
        r2: predictor name -> R² or ``None`` (the ``"r2"`` mapping of :func:`lightning_premem.analysis.build_report`).
        path: where to write the image.

    Returns:
        The path written.
    """
    plt = _pyplot()
    names = list(r2)
    values = [0.0 if r2[n] is None else float(r2[n]) for n in names]  # type: ignore[arg-type]
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(names) + 1.2))
    bars = ax.barh(range(len(names)), values, color=["C0" if n == "pre_memorization_accuracy" else "C7" for n in names])
    for bar, name in zip(bars, names, strict=True):
        text = "n/a" if r2[name] is None else f"{r2[name]:.3f}"
        ax.text(bar.get_width() + 0.01, bar.get_y() + bar.get_height() / 2, text, va="center", fontsize=8)
    ax.set_yticks(range(len(names)), [n.replace("_", " ") for n in names])
    ax.invert_yaxis()
    ax.set_xlim(0, 1.1)
    ax.set_xlabel("R² of test accuracy (linear fit over checkpoints)")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, plt, path)


def plot_predictors(report: dict[str, Any], path: str | Path) -> Path:
    """Test accuracy against each available predictor, one panel per predictor, one colour per run.

    Args:
        report: the mapping of :func:`lightning_premem.analysis.build_report`.
        path: where to write the image.

    Returns:
        The path written.
    """
    plt = _pyplot()
    names = [n for n, count in report["num_points"].items() if count > 0]
    if not names:
        raise ValueError("nothing to plot: no checkpoint has both a predictor and a test accuracy.")
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, name in zip(axes.ravel(), names, strict=False):
        for index, run in enumerate(report["runs"]):
            points = [c for c in run["checkpoints"] if c[name] is not None and c["test_accuracy"] is not None]
            if points:
                ax.plot(
                    [c[name] for c in points],
                    [c["test_accuracy"] for c in points],
                    marker="o",
                    markersize=3,
                    linewidth=0.8,
                    color=colors[index % len(colors)],
                )
        value = report["r2"].get(name)
        ax.set_title(f"{name.replace('_', ' ')}: R² " + ("n/a" if value is None else f"{value:.3f}"), fontsize=9)
        ax.set_xlabel(name.replace("_", " "), fontsize=8)
        ax.set_ylabel("test accuracy", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in axes.ravel()[len(names) :]:
        ax.axis("off")
    return _save(fig, plt, path)


def plot_calibration(calibration: dict[str, Any], path: str | Path) -> Path:
    """Draw the calibration's sensitivity curve: R² against the threshold ``p`` (log of ``p - 1`` on x).

    Draws the fit runs' R² (what chooses ``p``), the held-out runs' R² when there are any and the
    test-accuracy R² of a validation-split calibration (both for evaluation only), and marks the
    chosen ``p`` and the report's reference threshold.

    Args:
        calibration: ``build_report(...)["calibration"]`` (or :meth:`Calibration.as_dict`).
        path: where to write the image.

    Returns:
        The path written.
    """
    plt = _pyplot()
    curve = calibration["curve"]
    xs = [p - 1.0 for p in curve["threshold"]]
    fig, ax = plt.subplots(figsize=(7, 4.2))

    def draw(values: list[float | None] | None, label: str, style: str) -> None:
        if values:
            pts = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None and x > 0]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, linewidth=1.6, label=label)

    draw(curve["fit_r2"], f"fit: {calibration['target']} ({len(calibration['fit_runs'])} run(s))", "-")
    draw(curve.get("held_out_r2"), f"held out ({len(calibration.get('held_out_runs') or [])} run(s))", "--")
    draw(curve.get("test_r2"), "test accuracy, same runs (evaluation only)", ":")
    ax.axvline(
        calibration["threshold"] - 1.0, color="C3", linewidth=1, label=f"chosen p = {calibration['threshold']:.4f}"
    )
    reference = calibration.get("reference_threshold")
    if reference is not None and reference > 1:
        ax.axvline(reference - 1.0, color="0.5", linestyle=":", linewidth=1, label=f"reference p = {reference:.4f}")
    ax.set_xscale("log")
    ax.set_xlabel("threshold p - 1 (log scale)")
    ax.set_ylabel("R² of accuracy on pre-memorization accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    return _save(fig, plt, path)


def plot_robustness(relation: dict[str, Any], path: str | Path) -> Path:
    """Accuracy drop under prompt perturbations, binned by pre-memorization accuracy (one run).

    Args:
        relation: one entry of ``build_report(...)["robustness"]``.
        path: where to write the image.

    Returns:
        The path written.
    """
    plt = _pyplot()
    bins = relation["bins"]
    labels = [f"{b['low']:.1f}-{b['high']:.1f}\n(n={b['count']})" for b in bins]
    drops = [0.0 if b["accuracy_drop"] is None else b["accuracy_drop"] for b in bins]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.bar(range(len(bins)), drops, color="C1")
    ax.set_xticks(range(len(bins)), labels, fontsize=8)
    ax.axhline(0, color="0.3", linewidth=0.8)
    ax.set_xlabel("pre-memorization accuracy (bin)")
    ax.set_ylabel("clean - perturbed accuracy")
    rho = relation.get("spearman")
    ax.set_title(f"{relation['run']}: Spearman " + ("n/a" if rho is None else f"{rho:.3f}"), fontsize=9)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, plt, path)


def plot_curation(
    curves: Mapping[str, tuple[Sequence[int], Sequence[float]]], path: str | Path, *, title: str = ""
) -> Path:
    """Test accuracy against the number of training examples, one line per curation strategy.

    Args:
        curves: strategy -> (training-set sizes, test accuracies).
        path: where to write the image.
        title: the figure's title.

    Returns:
        The path written.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for strategy, (sizes, accuracy) in curves.items():
        ax.plot(list(sizes), list(accuracy), marker="o", linewidth=2 if strategy == "premem" else 1.2, label=strategy)
    ax.set_xlabel("training examples")
    ax.set_ylabel("test accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title)
    return _save(fig, plt, path)
