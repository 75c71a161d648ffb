"""``premem report``: every generalization predictor's R², the threshold calibration, the robustness relation.

The paper's evidence is a comparison: across checkpoints of many runs, how well does each
candidate predictor explain test accuracy (R² of a linear fit)? This module makes the same
comparison on any set of run histories (the callback's ``premem/history.npz`` files and the
authors' ``.npz`` logs, see :mod:`lightning_premem.history`):

- :func:`predictor_table` -- per checkpoint, every predictor that the run has: pre-memorization
  accuracy and train accuracy (via :func:`lightning_premem.analysis.replay.replay`), train loss (mean log
  target perplexity), and the :class:`~lightning_premem.callbacks.BaselinePredictorsCallback`'s
  values (gradient variance, distance from initialisation, ATC) joined by step from
  ``predictors.npz`` next to the history;
- :func:`~lightning_premem.analysis.calibration.calibrate_threshold` -- choose the memorization threshold
  ``p`` that maximises the R² between pre-memorization accuracy and a *validation* target, never the test
  split; :func:`~lightning_premem.analysis.calibration.split_runs` splits a set of runs (seeded) when no
  validation split exists;
- :func:`~lightning_premem.analysis.statistics.spearman` -- rank correlation (average ranks for ties), used
  for the robustness relation;
- :func:`build_report` / :func:`write_report` -- what ``premem report`` prints and writes.

See ``docs/analysis.md`` for the definitions, the calibration rule and the numbers on the bundled
GSM8K logs.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_premem._checks import check_threshold
from lightning_premem.analysis.calibration import (
    DEFAULT_CANDIDATES,
    calibrate_threshold,
    premem_means,
    r2_curve,
    split_runs,
)
from lightning_premem.analysis.replay import replay
from lightning_premem.analysis.statistics import r2_or_none, spearman, spearman_bootstrap_ci
from lightning_premem.functional import (
    AUTHORS_LOGLOG_THRESHOLDS,
    loglog_threshold_to_perplexity,
    pre_memorization_accuracy,
)
from lightning_premem.history import RunHistory, read_predictors

__all__ = [
    "CALLBACK_PREDICTORS",
    "LABELS",
    "PREDICTORS",
    "build_report",
    "fmt",
    "predictor_table",
    "robustness_table",
    "write_report",
]

#: Every predictor the report knows, in table order. Keys of the report's ``"r2"`` mapping.
PREDICTORS = (
    "pre_memorization_accuracy",
    "train_accuracy",
    "train_loss",
    "epoch_train_loss",
    "gradient_variance",
    "distance_from_init",
    "atc",
)


#: Predictors read from the :class:`~lightning_premem.callbacks.BaselinePredictorsCallback`'s file.
CALLBACK_PREDICTORS = ("epoch_train_loss", "gradient_variance", "distance_from_init", "atc")


def predictor_table(runs: Sequence[RunHistory], threshold: float) -> dict[str, Any]:
    """Every predictor per checkpoint, and the R² of test accuracy on each.

    Predictors (see ``docs/analysis.md`` for definitions and costs):

    - ``pre_memorization_accuracy``, ``train_accuracy``: from :func:`lightning_premem.analysis.replay.replay`;
    - ``train_loss``: mean over the probed training examples of ``log(target perplexity)``, i.e. each
      trace's mean token cross-entropy at the checkpoint (available for every history);
    - ``epoch_train_loss``, ``gradient_variance``, ``distance_from_init``, ``atc``: from
      ``predictors.npz`` next to the history (written by
      :class:`~lightning_premem.callbacks.BaselinePredictorsCallback`), joined by step.

    Args:
        runs: run histories (:func:`lightning_premem.history.load_run_histories`).
        threshold: the memorization threshold ``p``.

    Returns:
        ``{"threshold", "runs": [{"name", "source", "checkpoints": [{"step", "test_accuracy",
        <predictor>: float | None, ...}]}], "r2": {predictor: float | None}, "num_points": {predictor: int}}``.
        An R² is over the checkpoints that have both the predictor and a test accuracy; ``None`` when
        fewer than two do or a series is constant.
    """
    if not runs:
        raise ValueError("no runs given: pass one or more run histories.")
    replayed = replay(runs, threshold)
    table_runs: list[dict[str, Any]] = []
    for run, summary in zip(runs, replayed["runs"], strict=True):
        loss = np.log(run.train_perplexity.astype(np.float64)).mean(axis=1)
        extra = read_predictors(run, CALLBACK_PREDICTORS)
        checkpoints = []
        for t, point in enumerate(summary["checkpoints"]):
            row: dict[str, Any] = {
                "step": point["step"],
                "test_accuracy": point["test_accuracy"],
                "validation_accuracy": None if run.validation_accuracy is None else float(run.validation_accuracy[t]),
                "pre_memorization_accuracy": point["pre_memorization_accuracy"],
                "train_accuracy": point["train_accuracy"],
                "train_loss": float(loss[t]),
                "memorized_fraction": point["memorized_fraction"],
            }
            row.update({name: extra[name][t] for name in CALLBACK_PREDICTORS})
            checkpoints.append(row)
        table_runs.append({"name": run.name, "source": str(run.source), "checkpoints": checkpoints})
    r2: dict[str, float | None] = {}
    counts: dict[str, int] = {}
    for name in PREDICTORS:
        points = [
            (c[name], c["test_accuracy"])
            for r in table_runs
            for c in r["checkpoints"]
            if c[name] is not None and c["test_accuracy"] is not None
        ]
        counts[name] = len(points)
        r2[name] = r2_or_none([p[0] for p in points], [p[1] for p in points]) if points else None
    return {"threshold": float(threshold), "runs": table_runs, "r2": r2, "num_points": counts}


def _robustness_relation(
    run: RunHistory, threshold: float, *, bins: int, num_resamples: int, seed: int
) -> dict[str, Any] | None:
    """Per-example relation of the accuracy drop under prompt perturbations to pre-memorization accuracy.

    At the run's last checkpoint: ``drop = clean accuracy - mean accuracy over the perturbations``, binned by
    pre-memorization accuracy (``bins`` equal-width bins on [0, 1], the last one closed), and the Spearman
    correlation of pre-memorization accuracy with the drop, with a percentile bootstrap interval over examples.
    """
    if run.robust_accuracy is None:
        return None
    premem = (
        pre_memorization_accuracy(
            torch.as_tensor(run.train_accuracy, dtype=torch.float64),
            torch.as_tensor(run.train_perplexity, dtype=torch.float64),
            threshold,
        )[-1]
        .numpy()
        .astype(np.float64)
    )
    clean = run.train_accuracy[-1].astype(np.float64)
    perturbed = run.robust_accuracy[-1].astype(np.float64)  # [P, N]
    drop = clean - perturbed.mean(axis=0)
    try:
        rho: float | None = spearman(premem, drop)
        lo, hi = spearman_bootstrap_ci(premem, drop, num_resamples=num_resamples, confidence=0.95, seed=seed)
    except ValueError:
        rho, lo, hi = None, None, None
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, premem, side="right") - 1, 0, bins - 1)
    table = []
    for b in range(bins):
        members = which == b
        count = int(members.sum())
        table.append(
            {
                "low": float(edges[b]),
                "high": float(edges[b + 1]),
                "count": count,
                "pre_memorization_accuracy": float(premem[members].mean()) if count else None,
                "clean_accuracy": float(clean[members].mean()) if count else None,
                "perturbed_accuracy": float(perturbed[:, members].mean()) if count else None,
                "accuracy_drop": float(drop[members].mean()) if count else None,
            }
        )
    return {
        "run": run.name,
        "step": int(run.steps[-1]),
        "num_examples": int(premem.size),
        "perturbations": list(run.perturbations),
        "clean_accuracy": float(clean.mean()),
        "perturbed_accuracy": {p: float(perturbed[i].mean()) for i, p in enumerate(run.perturbations)},
        "spearman": rho,
        "spearman_ci95": None if lo is None else [lo, hi],
        "bins": table,
    }


def build_report(
    runs: Sequence[RunHistory],
    *,
    threshold: float | None = None,
    threshold_origin: str | None = None,
    calibrate: bool = True,
    use_calibrated: bool = False,
    candidates: Sequence[float] | None = None,
    fit_fraction: float = 0.5,
    seed: int = 0,
    bins: int = 5,
    num_resamples: int = 1000,
) -> dict[str, Any]:
    """Everything ``premem report`` shows: the predictors' R² table, calibration, robustness.

    Calibration (when ``calibrate``): if every run records a ``validation_accuracy``, ``p`` is fitted on
    it over all runs and the R² of test accuracy at that ``p`` is reported as held-out; otherwise the runs
    are split (:func:`split_runs` with ``fit_fraction`` and ``seed``), ``p`` is fitted on the fit runs'
    test accuracy and evaluated on the other runs' test accuracy.

    Args:
        runs: run histories.
        threshold: the threshold ``p`` of the table; default the authors' GSM8K value.
        threshold_origin: how ``threshold`` was chosen (shown in the report).
        calibrate: run the calibration.
        use_calibrated: compute the table and the robustness relation at the calibrated ``p``.
        candidates: candidate thresholds for calibration (default :data:`DEFAULT_CANDIDATES`).
        fit_fraction: share of runs to fit on when runs are split.
        seed: seeds the run split and the bootstrap.
        bins: pre-memorization accuracy bins of the robustness relation.
        num_resamples: bootstrap resamples of the rank correlation's interval.

    Returns:
        ``{"threshold", "threshold_origin", "num_runs", "r2", "num_points", "runs", "calibration",
        "robustness"}``: ``"r2"`` maps every name in :data:`PREDICTORS` to a float or ``None``;
        ``"calibration"`` is :meth:`Calibration.as_dict` plus ``"split"`` (or ``None``); ``"robustness"``
        has one entry per run with robustness-probe arrays.
    """
    if not runs:
        raise ValueError("no runs given: pass one or more run histories.")
    if use_calibrated and not calibrate:
        raise ValueError("`use_calibrated` needs `calibrate=True`.")
    if threshold is None:
        tau = AUTHORS_LOGLOG_THRESHOLDS["gsm8k"]
        threshold = loglog_threshold_to_perplexity(tau)
        threshold_origin = threshold_origin or f"exp(exp({tau})), the authors' GSM8K value"
    threshold = check_threshold(threshold)
    calibration: dict[str, Any] | None = None
    if calibrate:
        calibration = _calibration_section(runs, candidates, threshold, fit_fraction, seed)
        if use_calibrated:
            if calibration.get("threshold") is None:
                raise ValueError(f"cannot use the calibrated threshold: {calibration['skipped']}")
            threshold = float(calibration["threshold"])
            threshold_origin = f"calibrated ({calibration['split']})"
    if bins < 1:
        raise ValueError(f"`bins` must be >= 1, got {bins}.")
    table = predictor_table(runs, threshold)
    robustness = [
        relation
        for run in runs
        if (relation := _robustness_relation(run, threshold, bins=bins, num_resamples=num_resamples, seed=seed))
        is not None
    ]
    return {
        "threshold": threshold,
        "threshold_origin": threshold_origin or "given",
        "num_runs": len(runs),
        "r2": table["r2"],
        "num_points": table["num_points"],
        "runs": table["runs"],
        "calibration": calibration,
        "robustness": robustness,
    }


def _calibration_section(
    runs: Sequence[RunHistory],
    candidates: Sequence[float] | None,
    reference: float,
    fit_fraction: float,
    seed: int,
) -> dict[str, Any]:
    grid = list(DEFAULT_CANDIDATES if candidates is None else candidates)
    if reference not in grid:
        grid.append(reference)  # so the curve also shows the table's threshold
    if all(run.validation_accuracy is not None for run in runs):
        try:
            result = calibrate_threshold(runs, grid, target="validation_accuracy")
        except ValueError as err:
            return {"skipped": str(err)}
        section = result.as_dict()
        premem = premem_means(runs, result.threshold)
        scored = [
            (x, y)
            for run, xs in zip(runs, _split_like(premem, runs), strict=True)
            if run.test_accuracy is not None
            for x, y in zip(xs, run.test_accuracy, strict=True)
        ]
        section.update(
            split="validation split of questions",
            test_r2=r2_or_none([s[0] for s in scored], [s[1] for s in scored]) if scored else None,
        )
        if all(run.test_accuracy is not None for run in runs):  # for the figure: how test R² moves with p
            section["curve"]["test_r2"] = r2_curve(runs, result.candidates, "test_accuracy")
        return section
    with_test = [run for run in runs if run.test_accuracy is not None]
    if len(with_test) < 2:
        return {
            "skipped": "calibration needs a validation_accuracy in every run, or at least 2 runs with test accuracy"
        }
    fit, held = split_runs(with_test, fit_fraction, seed)
    try:
        result = calibrate_threshold(fit, grid, target="test_accuracy", held_out=held)
    except ValueError as err:
        return {"skipped": str(err)}
    section = result.as_dict()
    section["split"] = f"runs (seed {seed}, fit fraction {fit_fraction:g})"
    section["reference_threshold"] = reference
    section["held_out_r2_at_reference"] = result.held_out_curve[result.candidates.index(reference)]
    return section


def _split_like(flat: np.ndarray, runs: Sequence[RunHistory]) -> list[np.ndarray]:
    bounds = np.cumsum([run.num_checkpoints for run in runs])[:-1]
    return list(np.split(flat, bounds))


LABELS = {
    "pre_memorization_accuracy": "pre-memorization accuracy",
    "train_accuracy": "train accuracy",
    "train_loss": "train loss (mean log perplexity)",
    "epoch_train_loss": "epoch train loss",
    "gradient_variance": "gradient variance",
    "distance_from_init": "distance from init",
    "atc": "ATC",
}


def fmt(value: float | None, digits: int = 3) -> str:
    """Format a number for a report table (``n/a`` for ``None``)."""
    return "n/a" if value is None else f"{value:.{digits}f}"


def robustness_table(relation: dict[str, Any]) -> list[str]:
    """Markdown table of a robustness relation's bins: accuracy clean, perturbed, and the drop."""
    return [
        "| pre-memorization accuracy | examples | clean accuracy | perturbed accuracy | drop |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| [{b['low']:.1f}, {b['high']:.1f}{']' if b['high'] == 1.0 else ')'} | {b['count']} | "
            f"{fmt(b['clean_accuracy'])} | {fmt(b['perturbed_accuracy'])} | {fmt(b['accuracy_drop'])} |"
            for b in relation["bins"]
        ),
    ]


def write_report(report: dict[str, Any], output: str | Path, *, figures: bool = True) -> Path:
    """Write ``report.md`` (and, with ``figures``, PNGs next to it) from :func:`build_report`'s mapping.

    Figures: ``r2.png`` (R² per predictor), ``predictors.png`` (test accuracy against each predictor),
    ``premem_vs_test.png`` (the paper's figure), ``calibration.png`` (R² against ``p``) when calibrated,
    ``robustness_<i>.png`` per run with robustness arrays.

    Returns:
        The path of ``report.md``.
    """
    from lightning_premem.analysis import plots

    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    written: list[str] = []
    if figures:
        written.append(plots.plot_r2_table(report["r2"], output / "r2.png").name)
        if any(c["test_accuracy"] is not None for r in report["runs"] for c in r["checkpoints"]):
            written.append(plots.plot_predictors(report, output / "predictors.png").name)
            written.append(plots.plot_replay(_as_replay(report), output / "premem_vs_test.png").name)
        calibration = report.get("calibration")
        if calibration and calibration.get("threshold") is not None:
            written.append(plots.plot_calibration(calibration, output / "calibration.png").name)
        for i, relation in enumerate(report["robustness"]):
            written.append(plots.plot_robustness(relation, output / f"robustness_{i}.png").name)
    path = output / "report.md"
    path.write_text(_markdown(report, written))
    return path


def _as_replay(report: dict[str, Any]) -> dict[str, Any]:
    return {"threshold": report["threshold"], "runs": report["runs"], "r2": report["r2"]}


def _markdown(report: dict[str, Any], figures: list[str]) -> str:
    lines = [
        "# premem report",
        "",
        f"{report['num_runs']} run(s). Memorized iff target perplexity <= p = {report['threshold']:.4f} "
        f"({report['threshold_origin']}).",
        "",
        "## Predictors of test accuracy",
        "",
        "R² of a linear fit of test accuracy on each predictor, over the checkpoints that have both.",
        "",
        "| predictor | R² | checkpoints |",
        "| --- | ---: | ---: |",
    ]
    for name in PREDICTORS:
        lines.append(f"| {LABELS[name]} | {fmt(report['r2'][name])} | {report['num_points'][name]} |")
    if "r2.png" in figures:
        lines += ["", "![R² per predictor](r2.png)"]
    if "predictors.png" in figures:
        lines += ["", "![test accuracy against each predictor](predictors.png)"]
    if "premem_vs_test.png" in figures:
        lines += ["", "![pre-memorization vs test accuracy](premem_vs_test.png)"]
    lines += ["", "## Threshold calibration", ""]
    calibration = report.get("calibration")
    if calibration is None:
        lines.append("Not run.")
    elif calibration.get("threshold") is None:
        lines.append(f"Skipped: {calibration['skipped']}")
    else:
        tau = calibration["loglog_threshold"]
        lines += [
            f"Rule: the p maximising the R² of {calibration['target']} on pre-memorization accuracy over the fit "
            f"runs' checkpoints ({len(calibration['curve']['threshold'])} candidates). Split: {calibration['split']}.",
            "",
            f"- chosen p = {calibration['threshold']:.4f}" + (f" (tau = log(log p) = {tau:.2f})" if tau else ""),
            f"- fit R² ({len(calibration['fit_runs'])} run(s)): {fmt(calibration['fit_r2'])}",
        ]
        if calibration["held_out_runs"]:
            lines.append(
                f"- held-out R² of {calibration['held_out_target']} ({len(calibration['held_out_runs'])} run(s)): "
                f"{fmt(calibration['held_out_r2'])}"
            )
            if "held_out_r2_at_reference" in calibration:
                lines.append(
                    f"- held-out R² at the table's p = {calibration['reference_threshold']:.4f}: "
                    f"{fmt(calibration['held_out_r2_at_reference'])}"
                )
        if "test_r2" in calibration:
            lines.append(f"- R² of test accuracy at the chosen p (all runs): {fmt(calibration['test_r2'])}")
        lines += [
            "",
            f"Fit runs: {', '.join(calibration['fit_runs'])}.",
        ]
        if calibration["held_out_runs"]:
            lines += ["", f"Held-out runs: {', '.join(calibration['held_out_runs'])}."]
        if "calibration.png" in figures:
            lines += ["", "![R² against the threshold p](calibration.png)"]
    lines += ["", "## Robustness to prompt perturbations", ""]
    if not report["robustness"]:
        lines.append(
            "No run has robustness-probe arrays (turn on `perturbations=` in PreMemorizationCallback to record them)."
        )
    for i, relation in enumerate(report["robustness"]):
        ci = relation["spearman_ci95"]
        lines += [
            f"### {relation['run']} (step {relation['step']}, {relation['num_examples']} examples)",
            "",
            f"Perturbations: {', '.join(repr(p) for p in relation['perturbations'])}. Clean accuracy "
            f"{relation['clean_accuracy']:.3f}; perturbed: "
            + ", ".join(f"{p!r} {v:.3f}" for p, v in relation["perturbed_accuracy"].items())
            + ".",
            "",
            f"Spearman correlation of pre-memorization accuracy with the accuracy drop: {fmt(relation['spearman'])}"
            + (f" (95% bootstrap interval {ci[0]:.3f} to {ci[1]:.3f})" if ci else ""),
            "",
            *robustness_table(relation),
        ]
        if f"robustness_{i}.png" in figures:
            lines += ["", f"![accuracy drop by pre-memorization accuracy](robustness_{i}.png)"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
