"""Per-example run histories on disk: reading and validating them.

A *run history* is what the method needs from one training run: for each checkpoint (in time
order) and training example, the sampled accuracy and the target-trace perplexity, plus the
test accuracy of each checkpoint when it is known.

Format: ``.npz`` files with arrays ``steps`` [T], ``train_accuracy`` [T, N],
``train_perplexity`` [T, N], and optionally ``test_accuracy`` [T], ``example_ids`` [N] and
``run_name`` (a string). Both the authors' GSM8K run logs and the
:class:`~lightning_premem.PreMemorizationCallback`'s ``premem/history.npz`` files are in it (the
callback adds more arrays, which are ignored here). Every problem is reported as one
``ValueError`` that names the file and the array.
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
    """

    name: str
    steps: np.ndarray
    train_accuracy: np.ndarray
    train_perplexity: np.ndarray
    test_accuracy: np.ndarray | None
    example_ids: np.ndarray
    source: Path

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
            found = sorted(p for p in path.rglob("*") if p.suffix in _SUFFIXES and p.is_file())
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
    for key, values in (("steps", steps), ("example_ids", example_ids)):
        if not np.issubdtype(values.dtype, np.integer):
            raise ValueError(f"{path}: array '{key}' must hold integers, got dtype {values.dtype}.")
    if np.any(np.diff(steps) <= 0):
        raise ValueError(f"{path}: array 'steps' must increase (checkpoints in time order), got {steps.tolist()}.")
    try:
        _check_history(accuracy, perplexity, names=("train_accuracy", "train_perplexity"))
        if test is not None:
            _check_accuracy(torch.as_tensor(test), "test_accuracy")
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
    )


def _vector(path: Path, arrays: dict[str, np.ndarray], key: str, length: int, what: str) -> np.ndarray:
    value = arrays[key]
    if value.shape != (length,):
        raise ValueError(f"{path}: array '{key}' must have shape ({length},) [{what}], got {value.shape}.")
    return value
