"""Per-example run histories on disk: reading and validating them.

A *run history* is what the method needs from one training run: for each checkpoint (in time
order) and training example, the sampled accuracy and the target-trace perplexity, plus the
test accuracy of each checkpoint when it is known.

Format: ``.npz`` files with arrays ``steps`` [T], ``train_accuracy`` [T, N],
``train_perplexity`` [T, N], and optionally ``test_accuracy`` [T], ``example_ids`` [N],
``run_name`` (a string), ``validation_accuracy`` [T] (read by threshold calibration), and the
robustness probe's ``robust_accuracy`` [T, P, N] with its ``perturbations`` [P] (strings).
Both the authors' GSM8K run logs and the :class:`~lightning_premem.PreMemorizationCallback`'s
``premem/history.npz`` files are in it (the callback adds more arrays, which are ignored here).
Every problem is reported as one ``ValueError`` that names the file and the array.
"""

from __future__ import annotations

import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lightning_premem.functional import _check_accuracy, _check_history

__all__ = ["RunHistory", "load_run_histories"]

_REQUIRED = ("steps", "train_accuracy", "train_perplexity")
_SUFFIXES = (".npz",)
#: Files that sit next to a history but are not run logs (skipped when a folder is searched).
_COMPANIONS = ("predictors.npz",)


@dataclass(frozen=True)
class RunHistory:
    """One run's per-example history.

    Attributes:
        name: the run's name (``run_name`` in the file, else the file name without its suffix).
        steps: ``[T]`` optimizer step of each checkpoint, increasing.
        train_accuracy: ``[T, N]`` per-example sampled accuracy in ``[0, 1]``.
        train_perplexity: ``[T, N]`` per-example target-trace perplexity (>= 1).
        test_accuracy: ``[T]`` test accuracy per checkpoint, or ``None`` when not recorded.
        example_ids: ``[N]`` which training example each column is.
        source: the file it was read from.
        validation_accuracy: ``[T]`` validation accuracy per checkpoint, or ``None`` when not recorded.
        robust_accuracy: ``[T, P, N]`` per-example accuracy under each prompt perturbation, or ``None``.
        perturbations: the ``P`` prompt suffixes of ``robust_accuracy`` (empty without it).
    """

    name: str
    steps: np.ndarray
    train_accuracy: np.ndarray
    train_perplexity: np.ndarray
    test_accuracy: np.ndarray | None
    example_ids: np.ndarray
    source: Path
    validation_accuracy: np.ndarray | None = None
    robust_accuracy: np.ndarray | None = None
    perturbations: tuple[str, ...] = ()

    @property
    def num_checkpoints(self) -> int:
        """Number of checkpoints ``T``."""
        return int(self.steps.shape[0])

    @property
    def num_examples(self) -> int:
        """Number of training examples ``N``."""
        return int(self.train_accuracy.shape[1])


def load_run_histories(paths: str | Path | Iterable[str | Path]) -> list[RunHistory]:
    """Read run histories from files and folders (a folder contributes every ``*.npz`` file below it, sorted).

    A folder search skips ``predictors.npz`` (the baseline-predictors file that sits next to a history).

    Raises:
        ValueError: a path is missing, a folder holds no run logs, a file is unreadable, lacks
            an array, or holds arrays of the wrong shape or with invalid values.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.suffix in _SUFFIXES and p.name not in _COMPANIONS and p.is_file()
            )
            if not found:
                raise ValueError(f"{path}: folder holds no run logs (expected files ending in {', '.join(_SUFFIXES)}).")
            files.extend(found)
        elif path.exists():
            files.append(path)
        else:
            raise ValueError(f"{path}: no such file or folder.")
    if not files:
        raise ValueError("no run logs given: pass one or more .npz files or folders of them.")
    return [_load_npz(path) for path in files]


def _load_npz(path: Path) -> RunHistory:
    if path.suffix not in _SUFFIXES:
        raise ValueError(f"{path}: unsupported run-log format {path.suffix!r} (expected {', '.join(_SUFFIXES)}).")
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = {key: npz[key] for key in npz.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as err:
        raise ValueError(f"{path}: cannot read as an .npz run log ({err}).") from None
    missing = [key for key in _REQUIRED if key not in arrays]
    if missing:
        raise ValueError(
            f"{path}: missing array(s) {', '.join(missing)}; a run log needs {', '.join(_REQUIRED)} "
            f"(found: {', '.join(sorted(arrays)) or 'none'})."
        )
    accuracy, perplexity = arrays["train_accuracy"], arrays["train_perplexity"]
    for key in ("train_accuracy", "train_perplexity"):
        if arrays[key].ndim != 2:
            raise ValueError(
                f"{path}: array '{key}' must be 2-D [T checkpoints, N examples], got shape {arrays[key].shape}."
            )
    if accuracy.shape != perplexity.shape:
        raise ValueError(
            f"{path}: arrays 'train_accuracy' {accuracy.shape} and 'train_perplexity' {perplexity.shape} "
            "must have the same shape [T, N]."
        )
    num_checkpoints, num_examples = accuracy.shape
    steps = _vector(path, arrays, "steps", num_checkpoints, "T checkpoints")
    example_ids = (
        _vector(path, arrays, "example_ids", num_examples, "N examples")
        if "example_ids" in arrays
        else np.arange(num_examples)
    )
    test = (
        _vector(path, arrays, "test_accuracy", num_checkpoints, "T checkpoints") if "test_accuracy" in arrays else None
    )
    validation = (
        _vector(path, arrays, "validation_accuracy", num_checkpoints, "T checkpoints")
        if "validation_accuracy" in arrays
        else None
    )
    robust, perturbations = _robustness(path, arrays, num_checkpoints, num_examples)
    for key, values in (("steps", steps), ("example_ids", example_ids)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{path}: array '{key}' must hold integers, got dtype {values.dtype}.")
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"{path}: array 'steps' must increase (checkpoints in time order), got {steps.tolist()}.")
    try:
        _check_history(accuracy, perplexity, names=("train_accuracy", "train_perplexity"))
        optional_arrays = (("test_accuracy", test), ("validation_accuracy", validation), ("robust_accuracy", robust))
        for key, optional in optional_arrays:
            if optional is not None:
                _check_accuracy(torch.as_tensor(optional), key)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{path}: array {err}") from None
    name = path.stem
    if "run_name" in arrays:
        if arrays["run_name"].ndim != 0 or arrays["run_name"].dtype.kind != "U":
            raise ValueError(f"{path}: array 'run_name' must be a single string, got {arrays['run_name']!r}.")
        name = str(arrays["run_name"])
    return RunHistory(
        name=name,
        steps=steps.astype(np.int64),
        train_accuracy=accuracy,
        train_perplexity=perplexity,
        test_accuracy=test,
        example_ids=example_ids.astype(np.int64),
        source=path,
        validation_accuracy=validation,
        robust_accuracy=robust,
        perturbations=perturbations,
    )


def _robustness(
    path: Path, arrays: dict[str, np.ndarray], num_checkpoints: int, num_examples: int
) -> tuple[np.ndarray | None, tuple[str, ...]]:
    """Read the optional robustness-probe arrays: ``robust_accuracy`` [T, P, N] and ``perturbations`` [P]."""
    if "robust_accuracy" not in arrays and "perturbations" not in arrays:
        return None, ()
    if "robust_accuracy" not in arrays or "perturbations" not in arrays:
        raise ValueError(f"{path}: arrays 'robust_accuracy' and 'perturbations' come together; only one is present.")
    names = arrays["perturbations"]
    if names.ndim != 1 or names.dtype.kind != "U":
        raise ValueError(f"{path}: array 'perturbations' must be a 1-D array of strings, got {names!r}.")
    robust = arrays["robust_accuracy"]
    expected = (num_checkpoints, names.shape[0], num_examples)
    if robust.shape != expected:
        raise ValueError(
            f"{path}: array 'robust_accuracy' must have shape {expected} [T checkpoints, P perturbations, "
            f"N examples], got {robust.shape}."
        )
    return robust, tuple(str(name) for name in names)


def _vector(path: Path, arrays: dict[str, np.ndarray], key: str, length: int, what: str) -> np.ndarray:
    value = arrays[key]
    if value.shape != (length,):
        raise ValueError(f"{path}: array '{key}' must have shape ({length},) [{what}], got {value.shape}.")
    return value
