"""Analysis of saved runs: generalization predictors, threshold calibration, robustness, ``premem report``.

The paper's evidence is a comparison: across checkpoints of many runs, how well does each
candidate predictor explain test accuracy (R² of a linear fit)? This module makes the same
comparison on any set of run histories (the callback's ``premem/history.npz`` files and the
authors' ``.npz`` logs, see :mod:`lightning_premem.history`):

- :func:`predictor_table` -- per checkpoint, every predictor that the run has: pre-memorization
  accuracy and train accuracy (via :func:`lightning_premem.replay.replay`), train loss (mean log
  target perplexity), and the :class:`~lightning_premem.predictors.BaselinePredictorsCallback`'s
  values (gradient variance, distance from initialisation, ATC) joined by step from
  ``predictors.npz`` next to the history;
- :func:`calibrate_threshold` -- choose the memorization threshold ``p`` that maximises the R²
  between pre-memorization accuracy and a *validation* target, never the test split;
  :func:`split_runs` splits a set of runs (seeded) when no validation split exists;
- :func:`spearman` -- rank correlation (average ranks for ties), used for the robustness relation;
- :func:`build_report` / :func:`write_report` -- what ``premem report`` prints and writes.

See ``docs/analysis.md`` for the definitions, the calibration rule and the numbers on the bundled
GSM8K logs.
"""

from __future__ import annotations

import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lightning_premem.functional import (
    AUTHORS_LOGLOG_THRESHOLDS,
    _check_history,
    _check_threshold,
    loglog_threshold_to_perplexity,
    pre_memorization_accuracy,
    r_squared,
)
from lightning_premem.history import RunHistory
from lightning_premem.replay import replay

__all__ = [
    "DEFAULT_CANDIDATES",
    "PREDICTORS",
    "Calibration",
    "build_report",
    "calibrate_threshold",
    "predictor_table",
    "spearman",
    "split_runs",
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

#: Predictors read from the :class:`~lightning_premem.predictors.BaselinePredictorsCallback`'s file.
CALLBACK_PREDICTORS = ("epoch_train_loss", "gradient_variance", "distance_from_init", "atc")

#: The file the predictors callback writes next to ``history.npz``.
PREDICTORS_FILE = "predictors.npz"

#: Default candidate thresholds: ``p = exp(exp(tau))`` for ``tau`` in -6.0, -5.95, ..., 0.5 (131 values,
#: p from 1.0025 to 5.2; the authors' GSM8K tau = -2.3 and MATH tau = -1.7 are on the grid).
DEFAULT_CANDIDATES: tuple[float, ...] = tuple(
    loglog_threshold_to_perplexity(round(-6.0 + 0.05 * i, 2)) for i in range(131)
)

_TARGETS = ("validation_accuracy", "test_accuracy")


# --------------------------------------------------------------------------- rank correlation


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


def _spearman_bootstrap_ci(
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


# --------------------------------------------------------------------------- predictors per checkpoint


def _r2_or_none(x: Sequence[float], y: Sequence[float]) -> float | None:
    try:
        return r_squared(x, y)
    except ValueError:
        return None


def _read_predictors(run: RunHistory) -> dict[str, list[float | None]]:
    """Read the predictors callback's values for ``run``'s checkpoints, joined by step (``None`` where absent)."""
    path = run.source.parent / PREDICTORS_FILE
    out: dict[str, list[float | None]] = {name: [None] * run.num_checkpoints for name in CALLBACK_PREDICTORS}
    if not path.is_file():
        return out
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path}: cannot read as a predictors file ({err}).") from None
    if "steps" not in arrays or arrays["steps"].ndim != 1:
        raise ValueError(f"{path}: a predictors file needs a 1-D array 'steps' (found: {', '.join(sorted(arrays))}).")
    row_of_step = {int(step): row for row, step in enumerate(arrays["steps"].tolist())}
    for name in CALLBACK_PREDICTORS:
        if name not in arrays:
            continue
        values = arrays[name]
        if values.shape != arrays["steps"].shape:
            raise ValueError(
                f"{path}: array '{name}' must have the shape of 'steps' {arrays['steps'].shape}, got {values.shape}."
            )
        for t, step in enumerate(run.steps.tolist()):
            row = row_of_step.get(int(step))
            if row is not None and math.isfinite(float(values[row])):
                out[name][t] = float(values[row])
    return out


def predictor_table(runs: Sequence[RunHistory], threshold: float) -> dict[str, Any]:
    """Every predictor per checkpoint, and the R² of test accuracy on each.

    Predictors (see ``docs/analysis.md`` for definitions and costs):

    - ``pre_memorization_accuracy``, ``train_accuracy``: from :func:`lightning_premem.replay.replay`;
    - ``train_loss``: mean over the probed training examples of ``log(target perplexity)``, i.e. each
      trace's mean token cross-entropy at the checkpoint (available for every history);
    - ``epoch_train_loss``, ``gradient_variance``, ``distance_from_init``, ``atc``: from
      ``predictors.npz`` next to the history (written by
      :class:`~lightning_premem.predictors.BaselinePredictorsCallback`), joined by step.

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
        extra = _read_predictors(run)
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
        r2[name] = _r2_or_none([p[0] for p in points], [p[1] for p in points]) if points else None
    return {"threshold": float(threshold), "runs": table_runs, "r2": r2, "num_points": counts}


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """The outcome of :func:`calibrate_threshold`.

    Attributes:
        threshold: the chosen perplexity threshold ``p`` (the candidate with the highest fit R²;
            the smallest such ``p`` on ties).
        candidates: every candidate ``p``, increasing.
        r2: the sensitivity curve: R² of ``target`` on pre-memorization accuracy over the fit runs'
            checkpoints, per candidate (``None`` where undefined).
        target: the per-checkpoint accuracy that was fitted (``"validation_accuracy"`` or ``"test_accuracy"``).
        fit_runs: names of the runs the threshold was fitted on.
        held_out_runs: names of the runs it is evaluated on (empty when none were given).
        held_out_r2: R² of the held-out runs' ``held_out_target`` on pre-memorization accuracy at
            ``threshold`` (``None`` without held-out runs or when undefined).
        held_out_curve: the held-out R² per candidate, for the sensitivity plot (never used to choose).
        held_out_target: the per-checkpoint accuracy of the held-out evaluation.
    """

    threshold: float
    candidates: tuple[float, ...]
    r2: tuple[float | None, ...]
    target: str
    fit_runs: tuple[str, ...]
    held_out_runs: tuple[str, ...] = ()
    held_out_r2: float | None = None
    held_out_curve: tuple[float | None, ...] = ()
    held_out_target: str = "test_accuracy"

    @property
    def fit_r2(self) -> float | None:
        """The fit R² at the chosen threshold."""
        return self.r2[self.candidates.index(self.threshold)]

    @property
    def loglog_threshold(self) -> float:
        """The chosen threshold in the authors' form: ``tau = log(log(p))``."""
        return math.log(math.log(self.threshold)) if self.threshold > 1 else -math.inf

    def as_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping (``loglog_threshold`` is ``None`` for ``p = 1``)."""
        tau = self.loglog_threshold
        return {
            "threshold": self.threshold,
            "loglog_threshold": tau if math.isfinite(tau) else None,
            "target": self.target,
            "fit_runs": list(self.fit_runs),
            "fit_r2": self.fit_r2,
            "held_out_runs": list(self.held_out_runs),
            "held_out_target": self.held_out_target if self.held_out_runs else None,
            "held_out_r2": self.held_out_r2,
            "curve": {
                "threshold": list(self.candidates),
                "fit_r2": list(self.r2),
                "held_out_r2": list(self.held_out_curve) if self.held_out_curve else None,
            },
        }


def _prepared(runs: Sequence[RunHistory]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each run's accuracy and perplexity as validated float64 arrays (converted and checked once)."""
    out = []
    for run in runs:
        accuracy = np.asarray(run.train_accuracy, dtype=np.float64)
        perplexity = np.asarray(run.train_perplexity, dtype=np.float64)
        try:
            _check_history(
                torch.as_tensor(accuracy), torch.as_tensor(perplexity), ("train_accuracy", "train_perplexity")
            )
        except (TypeError, ValueError) as err:
            raise ValueError(f"run {run.name!r}: {err}") from None
        out.append((accuracy, perplexity))
    return out


def _premem_means_prepared(prepared: Sequence[tuple[np.ndarray, np.ndarray]], threshold: float) -> np.ndarray:
    """Dataset-level pre-memorization accuracy of every checkpoint of every run, concatenated.

    The formula of :func:`~lightning_premem.functional.pre_memorization_accuracy` in NumPy (single-threaded,
    and without re-validating the inputs for every candidate threshold; the tests check that both agree).
    """
    means = []
    for accuracy, perplexity in prepared:
        masked = np.where(perplexity <= threshold, 0.0, accuracy)
        means.append(np.minimum(np.maximum.accumulate(masked, axis=0), accuracy).mean(axis=1))
    return np.concatenate(means) if means else np.empty(0)


def _premem_means(runs: Sequence[RunHistory], threshold: float) -> np.ndarray:
    return _premem_means_prepared(_prepared(runs), threshold)


def _target_of(run: RunHistory, target: str) -> np.ndarray:
    values = run.validation_accuracy if target == "validation_accuracy" else run.test_accuracy
    if values is None:
        hint = (
            " Record a validation split (e.g. pass validation examples as the callback's test_examples and use "
            "target='test_accuracy' on those runs), or split the runs with split_runs() and fit on "
            "target='test_accuracy' of the fit runs only."
            if target == "validation_accuracy"
            else ""
        )
        raise ValueError(f"run {run.name!r} ({run.source}) has no {target}.{hint}")
    return np.asarray(values, dtype=np.float64)


def _curve(runs: Sequence[RunHistory], candidates: Sequence[float], target: str) -> list[float | None]:
    targets = np.concatenate([_target_of(run, target) for run in runs]).tolist()
    prepared = _prepared(runs)
    return [_r2_or_none(_premem_means_prepared(prepared, p).tolist(), targets) for p in candidates]


def calibrate_threshold(
    runs: Sequence[RunHistory],
    candidates: Sequence[float] | None = None,
    *,
    target: str = "validation_accuracy",
    held_out: Sequence[RunHistory] = (),
    held_out_target: str = "test_accuracy",
) -> Calibration:
    """Choose the memorization threshold ``p`` without looking at the test split.

    The rule: for each candidate ``p``, compute the dataset-level pre-memorization accuracy of every
    checkpoint of ``runs`` and the R² of a linear fit of ``target`` on it; choose the ``p`` with the
    highest R² (the smallest on ties). ``target`` must not be the accuracy you evaluate on: use a
    validation split of questions, or -- when runs only carry a test accuracy, like the authors'
    logs -- fit on some runs and evaluate on others (``held_out``, see :func:`split_runs`).

    Args:
        runs: the runs to fit ``p`` on.
        candidates: candidate thresholds (each ``>= 1``); default :data:`DEFAULT_CANDIDATES`.
        target: the per-checkpoint accuracy to fit: ``"validation_accuracy"`` or ``"test_accuracy"``.
        held_out: runs not used for fitting; their R² at the chosen ``p`` is reported.
        held_out_target: the held-out runs' per-checkpoint accuracy to evaluate against.

    Returns:
        A :class:`Calibration` with the chosen ``p``, the sensitivity curve (R² against ``p``) and
        the held-out R².

    Raises:
        ValueError: no runs, a run without ``target``, a bad candidate, a run in both sets, or no
            candidate with a defined R² (fewer than two checkpoints, or a constant ``target``).

    Example:
        >>> from pathlib import Path
        >>> import numpy as np
        >>> acc = np.array([[0.5, 1.0], [1.0, 1.0]])  # 2 checkpoints x 2 examples
        >>> ppl = np.array([[1.5, 1.3], [1.3, 1.05]])
        >>> run = RunHistory("r", np.array([1, 2]), acc, ppl, None, np.arange(2), Path("r.npz"),
        ...                  validation_accuracy=np.array([0.2, 0.4]))
        >>> calibrate_threshold([run], [1.1, 1.4], target="validation_accuracy").threshold
        1.1
    """
    if not runs:
        raise ValueError("calibration needs at least one run to fit the threshold on.")
    for name, value in (("target", target), ("held_out_target", held_out_target)):
        if value not in _TARGETS:
            raise ValueError(f"`{name}` must be one of {', '.join(_TARGETS)}, got {value!r}.")
    grid = sorted({_check_threshold(p) for p in (DEFAULT_CANDIDATES if candidates is None else candidates)})
    if not grid:
        raise ValueError("`candidates` is empty: give at least one perplexity threshold >= 1.")
    shared = {id(run) for run in runs} & {id(run) for run in held_out}
    if shared:
        raise ValueError("a run is both in `runs` and in `held_out`: the held-out runs must not be fitted on.")
    curve = _curve(runs, grid, target)
    defined = [(r2, i) for i, r2 in enumerate(curve) if r2 is not None]
    if not defined:
        raise ValueError(
            f"no candidate threshold gives a defined R² of {target} on {len(runs)} run(s): they need at least two "
            f"checkpoints with a {target} that varies."
        )
    best = max(defined, key=lambda pair: (pair[0], -pair[1]))[1]
    threshold = grid[best]
    held_curve: list[float | None] = _curve(held_out, grid, held_out_target) if held_out else []
    return Calibration(
        threshold=threshold,
        candidates=tuple(grid),
        r2=tuple(curve),
        target=target,
        fit_runs=tuple(run.name for run in runs),
        held_out_runs=tuple(run.name for run in held_out),
        held_out_r2=held_curve[best] if held_curve else None,
        held_out_curve=tuple(held_curve),
        held_out_target=held_out_target,
    )


def split_runs(
    runs: Sequence[RunHistory], fit_fraction: float = 0.5, seed: int = 0
) -> tuple[list[RunHistory], list[RunHistory]]:
    """Split runs at random (seeded) into a fit set and a held-out set, both non-empty, order kept.

    The fit set has ``round(fit_fraction * len(runs))`` runs, clipped to ``[1, len(runs) - 1]``.

    Example:
        >>> fit, held = split_runs(["a", "b", "c", "d"], fit_fraction=0.5, seed=0)  # any objects work
        >>> len(fit), len(held), sorted(fit + held)
        (2, 2, ['a', 'b', 'c', 'd'])
    """
    if len(runs) < 2:
        raise ValueError(f"splitting runs needs at least 2 runs, got {len(runs)}.")
    if isinstance(fit_fraction, bool) or not isinstance(fit_fraction, (int, float)) or not 0 < fit_fraction < 1:
        raise ValueError(f"`fit_fraction` must be a number in (0, 1), got {fit_fraction!r}.")
    size = min(max(round(fit_fraction * len(runs)), 1), len(runs) - 1)
    chosen = set(np.random.default_rng(seed).permutation(len(runs))[:size].tolist())
    return [r for i, r in enumerate(runs) if i in chosen], [r for i, r in enumerate(runs) if i not in chosen]


# --------------------------------------------------------------------------- robustness relation


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
        lo, hi = _spearman_bootstrap_ci(premem, drop, num_resamples=num_resamples, confidence=0.95, seed=seed)
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


# --------------------------------------------------------------------------- the report


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
    threshold = _check_threshold(threshold)
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
        premem = _premem_means(runs, result.threshold)
        scored = [
            (x, y)
            for run, xs in zip(runs, _split_like(premem, runs), strict=True)
            if run.test_accuracy is not None
            for x, y in zip(xs, run.test_accuracy, strict=True)
        ]
        section.update(
            split="validation split of questions",
            test_r2=_r2_or_none([s[0] for s in scored], [s[1] for s in scored]) if scored else None,
        )
        if all(run.test_accuracy is not None for run in runs):  # for the figure: how test R² moves with p
            section["curve"]["test_r2"] = _curve(runs, result.candidates, "test_accuracy")
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


_LABELS = {
    "pre_memorization_accuracy": "pre-memorization accuracy",
    "train_accuracy": "train accuracy",
    "train_loss": "train loss (mean log perplexity)",
    "epoch_train_loss": "epoch train loss",
    "gradient_variance": "gradient variance",
    "distance_from_init": "distance from init",
    "atc": "ATC",
}


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _robustness_table(relation: dict[str, Any]) -> list[str]:
    """Markdown table of a robustness relation's bins: accuracy clean, perturbed, and the drop."""
    return [
        "| pre-memorization accuracy | examples | clean accuracy | perturbed accuracy | drop |",
        "| --- | ---: | ---: | ---: | ---: |",
        *(
            f"| [{b['low']:.1f}, {b['high']:.1f}{']' if b['high'] == 1.0 else ')'} | {b['count']} | "
            f"{_fmt(b['clean_accuracy'])} | {_fmt(b['perturbed_accuracy'])} | {_fmt(b['accuracy_drop'])} |"
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
    from lightning_premem import plots

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
        lines.append(f"| {_LABELS[name]} | {_fmt(report['r2'][name])} | {report['num_points'][name]} |")
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
            f"- fit R² ({len(calibration['fit_runs'])} run(s)): {_fmt(calibration['fit_r2'])}",
        ]
        if calibration["held_out_runs"]:
            lines.append(
                f"- held-out R² of {calibration['held_out_target']} ({len(calibration['held_out_runs'])} run(s)): "
                f"{_fmt(calibration['held_out_r2'])}"
            )
            if "held_out_r2_at_reference" in calibration:
                lines.append(
                    f"- held-out R² at the table's p = {calibration['reference_threshold']:.4f}: "
                    f"{_fmt(calibration['held_out_r2_at_reference'])}"
                )
        if "test_r2" in calibration:
            lines.append(f"- R² of test accuracy at the chosen p (all runs): {_fmt(calibration['test_r2'])}")
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
            f"Spearman correlation of pre-memorization accuracy with the accuracy drop: {_fmt(relation['spearman'])}"
            + (f" (95% bootstrap interval {ci[0]:.3f} to {ci[1]:.3f})" if ci else ""),
            "",
            *_robustness_table(relation),
        ]
        if f"robustness_{i}.png" in figures:
            lines += ["", f"![accuracy drop by pre-memorization accuracy](robustness_{i}.png)"]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"
