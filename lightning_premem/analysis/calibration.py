"""Calibration of the memorization threshold without test leakage.

:func:`calibrate_threshold` chooses the perplexity ``p`` that maximises the R² between
pre-memorization accuracy and a *validation* target (validation accuracy, or the test accuracy of
other runs: :func:`split_runs`), never the test split it is judged on. See ``docs/analysis.md``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from lightning_premem._checks import check_history, check_threshold
from lightning_premem.analysis.statistics import r2_or_none
from lightning_premem.functional import loglog_threshold_to_perplexity
from lightning_premem.history import RunHistory

__all__ = ["DEFAULT_CANDIDATES", "Calibration", "calibrate_threshold", "premem_means", "r2_curve", "split_runs"]

#: Default candidate thresholds: ``p = exp(exp(tau))`` for ``tau`` in -6.0, -5.95, ..., 0.5 (131 values,
#: p from 1.0025 to 5.2; the authors' GSM8K tau = -2.3 and MATH tau = -1.7 are on the grid).
DEFAULT_CANDIDATES: tuple[float, ...] = tuple(
    loglog_threshold_to_perplexity(round(-6.0 + 0.05 * i, 2)) for i in range(131)
)


_TARGETS = ("validation_accuracy", "test_accuracy")


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
            check_history(
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


def premem_means(runs: Sequence[RunHistory], threshold: float) -> np.ndarray:
    """Dataset-level pre-memorization accuracy of every checkpoint of ``runs``, concatenated in order."""
    return _premem_means_prepared(_prepared(runs), threshold)


def _target_of(run: RunHistory, target: str) -> np.ndarray:
    values = run.validation_accuracy if target == "validation_accuracy" else run.test_accuracy
    if values is None:
        hint = (
            " Record it with PreMemorizationCallback(validation_examples=...) (held-out queries drawn like the "
            "test set), or split the runs with split_runs() and fit on target='test_accuracy' of the fit runs only."
            if target == "validation_accuracy"
            else ""
        )
        raise ValueError(f"run {run.name!r} ({run.source}) has no {target}.{hint}")
    return np.asarray(values, dtype=np.float64)


def r2_curve(runs: Sequence[RunHistory], candidates: Sequence[float], target: str) -> list[float | None]:
    """R² of ``target`` on pre-memorization accuracy over all checkpoints of ``runs``, for each candidate ``p``."""
    targets = np.concatenate([_target_of(run, target) for run in runs]).tolist()
    prepared = _prepared(runs)
    return [r2_or_none(_premem_means_prepared(prepared, p).tolist(), targets) for p in candidates]


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
    grid = sorted({check_threshold(p) for p in (DEFAULT_CANDIDATES if candidates is None else candidates)})
    if not grid:
        raise ValueError("`candidates` is empty: give at least one perplexity threshold >= 1.")
    shared = {id(run) for run in runs} & {id(run) for run in held_out}
    if shared:
        raise ValueError("a run is both in `runs` and in `held_out`: the held-out runs must not be fitted on.")
    curve = r2_curve(runs, grid, target)
    defined = [(r2, i) for i, r2 in enumerate(curve) if r2 is not None]
    if not defined:
        raise ValueError(
            f"no candidate threshold gives a defined R² of {target} on {len(runs)} run(s): they need at least two "
            f"checkpoints with a {target} that varies."
        )
    best = max(defined, key=lambda pair: (pair[0], -pair[1]))[1]
    threshold = grid[best]
    held_curve: list[float | None] = r2_curve(held_out, grid, held_out_target) if held_out else []
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
