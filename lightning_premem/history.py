"""The run files, written and read here only: ``history.npz``, ``round_NNN.csv`` and ``predictors.npz``.

A *run history* is what the method needs from one training run: for each checkpoint (in time
order) and training example, the sampled accuracy and the target-trace perplexity, plus the
test accuracy of each checkpoint when it is known.

``history.npz`` (:data:`HISTORY_FILE`, written by :func:`write_history`, read by
:func:`load_run_histories`): arrays ``steps`` [T], ``train_accuracy`` [T, N],
``train_perplexity`` [T, N], and optionally ``test_accuracy`` [T], ``example_ids`` [N],
``run_name`` (a string), ``validation_accuracy`` [T] (read by threshold calibration), and the
robustness probe's ``robust_accuracy`` [T, P, N] with its ``perturbations`` [P] (strings).
Both the authors' GSM8K run logs and the :class:`~lightning_premem.PreMemorizationCallback`'s
``premem/history.npz`` files are in it. The callback also writes ``epochs`` [T],
``pre_memorization_accuracy`` [T, N], ``memorized`` [T, N], ``num_correct`` [T, N],
``num_unparseable`` [T, N], ``num_samples`` [T], ``threshold`` and, with ``skip_decided``, ``sampled``
[T, N] (False where an example was not sampled: its ``train_accuracy`` entry is then 0) (ignored by the
reader).
Every problem is reported as one ``ValueError`` that names the file and the array.

``round_NNN.csv`` (written by :func:`write_history` for the newest round): one row per probed example,
columns :data:`ROUND_COLUMNS`.

``predictors.npz`` (:data:`PREDICTORS_FILE`, written by :func:`write_predictors`, read by
:func:`read_predictors`): ``steps`` [T], ``epochs`` [T], ``run_name`` and one ``[T]`` float array per
column of :data:`PREDICTOR_COLUMNS` (NaN where a predictor is off).

Files are written atomically (:func:`atomic_write`): a reader never sees half a file.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lightning_premem._checks import check_accuracy, check_history
from lightning_premem.functional import pre_memorization_accuracy

__all__ = [
    "HISTORY_FILE",
    "PREDICTORS_FILE",
    "PREDICTOR_COLUMNS",
    "ROUND_COLUMNS",
    "RunHistory",
    "atomic_write",
    "default_run_name",
    "load_run_histories",
    "read_predictors",
    "write_history",
    "write_predictors",
]

#: The per-example history of every probe round.
HISTORY_FILE = "history.npz"
#: The baseline predictors of every round, next to the history.
PREDICTORS_FILE = "predictors.npz"
#: The columns of ``predictors.npz`` besides ``steps``, ``epochs`` and ``run_name``.
PREDICTOR_COLUMNS = (
    "epoch_train_loss",
    "gradient_variance",
    "distance_from_init",
    "atc",
    "atc_threshold",
    "atc_fit_accuracy",
)
#: The columns of ``round_NNN.csv``.
ROUND_COLUMNS = (
    "example_id",
    "epoch",
    "step",
    "accuracy",
    "num_samples",
    "num_correct",
    "num_unparseable",
    "perplexity",
    "memorized",
    "pre_memorization_accuracy",
)

_REQUIRED = ("steps", "train_accuracy", "train_perplexity")
_SUFFIXES = (".npz",)
#: Files that sit next to a history but are not run logs (skipped when a folder is searched).
_COMPANIONS = (PREDICTORS_FILE,)


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


# --------------------------------------------------------------------------- writing


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and an atomic rename."""
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def default_run_name(folder: Path) -> str:
    """Return the name a run gets from its history folder: the last two parts of the log folder above ``premem/``.

    Example:
        >>> default_run_name(Path("runs/demo/lightning_logs/version_0/premem"))
        'lightning_logs/version_0'
    """
    parent = folder.parent if folder.name == "premem" else folder
    return "/".join(parent.parts[-2:]) if len(parent.parts) >= 2 else parent.name


def _savez(path: Path, columns: Mapping[str, np.ndarray]) -> None:
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **columns)  # type: ignore[arg-type]  # numpy's stub types **kwds loosely
    atomic_write(path, buffer.getvalue())


def write_history(
    folder: str | Path,
    rounds: Sequence[Mapping[str, Any]],
    *,
    example_ids: Sequence[int],
    threshold: float,
    perturbations: Sequence[str] = (),
    run_name: str | None = None,
) -> Path:
    """Write ``history.npz`` (every round) and ``round_NNN.csv`` (the newest round) into ``folder``.

    Args:
        folder: the history folder (created if missing).
        rounds: one record per probe round, oldest first, as
            :attr:`~lightning_premem.PreMemorizationCallback.history` holds them: ``epoch``, ``step``,
            ``num_samples``, per-example ``accuracy``, ``perplexity``, ``num_correct``, ``num_unparseable``
            (``[N]`` tensors), ``test_accuracy`` and ``validation_accuracy`` (floats or ``None``), optionally
            ``sampled`` (``[N]`` bool) and, with perturbations, ``robust_accuracy`` (``[P, N]``).
        example_ids: the ``N`` probed example ids, in the records' order.
        threshold: the memorization threshold ``p`` (for ``pre_memorization_accuracy`` and ``memorized``).
        perturbations: the prompt suffixes of ``robust_accuracy``.
        run_name: the run's name (default: :func:`default_run_name` of ``folder``).

    Returns:
        The path of ``history.npz``.
    """
    folder = Path(folder)
    if not rounds:
        raise ValueError("no probe rounds to write: a history needs at least one round.")
    folder.mkdir(parents=True, exist_ok=True)
    accuracy = torch.stack([r["accuracy"] for r in rounds])
    perplexity = torch.stack([r["perplexity"] for r in rounds])
    premem = pre_memorization_accuracy(accuracy, perplexity, threshold)
    memorized = perplexity <= threshold
    columns: dict[str, np.ndarray] = {
        "steps": np.array([r["step"] for r in rounds], dtype=np.int64),
        "epochs": np.array([r["epoch"] for r in rounds], dtype=np.int64),
        "train_accuracy": accuracy.numpy(),
        "train_perplexity": perplexity.numpy(),
        "pre_memorization_accuracy": premem.numpy(),
        "memorized": memorized.numpy(),
        "num_correct": torch.stack([r["num_correct"] for r in rounds]).numpy(),
        "num_unparseable": torch.stack([r["num_unparseable"] for r in rounds]).numpy(),
        "num_samples": np.array([r["num_samples"] for r in rounds], dtype=np.int64),
        "example_ids": np.array(example_ids, dtype=np.int64),
        "threshold": np.array(threshold),
        "run_name": np.array(default_run_name(folder) if run_name is None else run_name),
    }
    for key in ("test_accuracy", "validation_accuracy"):
        if all(r.get(key) is not None for r in rounds):
            columns[key] = np.array([r[key] for r in rounds], dtype=np.float64)
    if all(r.get("sampled") is not None for r in rounds):  # PreMemorizationCallback(skip_decided=True)
        columns["sampled"] = torch.stack([r["sampled"] for r in rounds]).numpy()
    if perturbations and all(r.get("robust_accuracy") is not None for r in rounds):
        columns["robust_accuracy"] = torch.stack([r["robust_accuracy"] for r in rounds]).numpy()
        columns["perturbations"] = np.array(list(perturbations))
    _savez(folder / HISTORY_FILE, columns)
    _write_round_csv(folder, rounds, example_ids, memorized, premem)
    return folder / HISTORY_FILE


def _write_round_csv(
    folder: Path, rounds: Sequence[Mapping[str, Any]], example_ids: Sequence[int], memorized: Tensor, premem: Tensor
) -> None:
    last = len(rounds) - 1
    record = rounds[last]
    text = io.StringIO()
    table = csv.writer(text, lineterminator="\n")
    table.writerow(ROUND_COLUMNS)
    for i, example_id in enumerate(example_ids):
        table.writerow(
            [
                example_id,
                record["epoch"],
                record["step"],
                f"{float(record['accuracy'][i]):.6g}",
                record["num_samples"],
                int(record["num_correct"][i]),
                int(record["num_unparseable"][i]),
                f"{float(record['perplexity'][i]):.6g}",
                int(memorized[last, i]),
                f"{float(premem[last, i]):.6g}",
            ]
        )
    atomic_write(folder / f"round_{last:03d}.csv", text.getvalue().encode())


def write_predictors(folder: str | Path, rounds: Sequence[Mapping[str, float]], *, run_name: str | None = None) -> Path:
    """Write ``predictors.npz``: ``steps``, ``epochs`` and the :data:`PREDICTOR_COLUMNS` of every round.

    Args:
        folder: the history folder (created if missing).
        rounds: one record per round with ``step``, ``epoch`` and a value per column (NaN when off).
        run_name: the run's name (default: :func:`default_run_name` of ``folder``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    columns: dict[str, np.ndarray] = {
        "steps": np.array([int(r["step"]) for r in rounds], dtype=np.int64),
        "epochs": np.array([int(r["epoch"]) for r in rounds], dtype=np.int64),
        "run_name": np.array(default_run_name(folder) if run_name is None else run_name),
    }
    for name in PREDICTOR_COLUMNS:
        columns[name] = np.array([r.get(name, math.nan) for r in rounds], dtype=np.float64)
    _savez(folder / PREDICTORS_FILE, columns)
    return folder / PREDICTORS_FILE


def read_predictors(run: RunHistory, names: Sequence[str] = PREDICTOR_COLUMNS) -> dict[str, list[float | None]]:
    """Read the predictors next to ``run``'s history, joined to its checkpoints by step (``None`` where absent).

    A run without a ``predictors.npz`` beside its history gets ``None`` everywhere.
    """
    path = run.source.parent / PREDICTORS_FILE
    out: dict[str, list[float | None]] = {name: [None] * run.num_checkpoints for name in names}
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
    for name in names:
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


# --------------------------------------------------------------------------- reading


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
        check_history(accuracy, perplexity, names=("train_accuracy", "train_perplexity"))
        optional_arrays = (("test_accuracy", test), ("validation_accuracy", validation), ("robust_accuracy", robust))
        for key, optional in optional_arrays:
            if optional is not None:
                check_accuracy(torch.as_tensor(optional), key)
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
