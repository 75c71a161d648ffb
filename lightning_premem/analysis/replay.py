"""Replay saved run histories: dataset-level values per checkpoint and the R² of test accuracy.

This is what ``premem replay`` prints; the returned mapping is the documented JSON of
``premem replay --json``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from lightning_premem.functional import memorization_mask, pre_memorization_accuracy, r_squared
from lightning_premem.history import RunHistory

__all__ = ["replay"]

#: The predictors whose R² against test accuracy replay reports.
PREDICTORS = ("pre_memorization_accuracy", "train_accuracy")


def replay(runs: Sequence[RunHistory], threshold: float) -> dict[str, Any]:
    """Per run and checkpoint: train, pre-memorization and test accuracy, memorized fraction; overall R².

    Args:
        runs: histories from :func:`lightning_premem.history.load_run_histories`.
        threshold: perplexity ``p`` (memorized iff perplexity ``<= p``).

    Returns:
        ``{"runs": [{"name", "checkpoints": [{"step", "train_accuracy",
        "pre_memorization_accuracy", "memorized_fraction", "test_accuracy"}]}],
        "r2": {"pre_memorization_accuracy", "train_accuracy"}, "threshold", "num_checkpoints"}``.
        An R² is ``None`` when it is undefined (fewer than two checkpoints with a test
        accuracy, or a constant series).
    """
    out_runs: list[dict[str, Any]] = []
    for run in runs:
        accuracy = torch.as_tensor(run.train_accuracy, dtype=torch.float64)
        perplexity = torch.as_tensor(run.train_perplexity, dtype=torch.float64)
        premem = pre_memorization_accuracy(accuracy, perplexity, threshold).mean(dim=1)
        memorized = memorization_mask(perplexity, threshold).double().mean(dim=1)
        train = accuracy.mean(dim=1)
        checkpoints = [
            {
                "step": int(run.steps[t]),
                "train_accuracy": float(train[t]),
                "pre_memorization_accuracy": float(premem[t]),
                "memorized_fraction": float(memorized[t]),
                "test_accuracy": None if run.test_accuracy is None else float(run.test_accuracy[t]),
            }
            for t in range(run.num_checkpoints)
        ]
        out_runs.append({"name": run.name, "num_examples": run.num_examples, "checkpoints": checkpoints})

    scored = [c for r in out_runs for c in r["checkpoints"] if c["test_accuracy"] is not None]
    test = [c["test_accuracy"] for c in scored]
    r2: dict[str, float | None] = {}
    for predictor in PREDICTORS:
        try:
            r2[predictor] = r_squared([c[predictor] for c in scored], test)
        except ValueError:
            r2[predictor] = None
    return {"threshold": float(threshold), "num_checkpoints": len(scored), "runs": out_runs, "r2": r2}
