"""Argument checks shared by the whole package: one function per kind of value.

One exception type per kind of mistake: a value of the wrong type raises ``TypeError``, a value of
the right type outside its range raises ``ValueError``. Every message names the argument, what was
expected and what was given. The names here are public within the package (this module is not
part of the public API).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

__all__ = [
    "as_float_tensor",
    "check_accuracy",
    "check_history",
    "check_int",
    "check_perplexity",
    "check_real",
    "check_threshold",
    "check_token_ids",
]


def _bounds(minimum: float | None, maximum: float | None) -> str:
    if minimum is not None and maximum is not None:
        return f" in [{minimum}, {maximum}]"
    if minimum is not None:
        return f" >= {minimum}"
    if maximum is not None:
        return f" <= {maximum}"
    return ""


def check_int(value: Any, name: str, *, minimum: int | None = None, maximum: int | None = None) -> int:
    """Return ``value`` as an ``int`` if it is one (not a ``bool``) within ``[minimum, maximum]``.

    Example:
        >>> check_int(3, "num_samples", minimum=1)
        3
        >>> check_int(0, "num_samples", minimum=1)
        Traceback (most recent call last):
        ...
        ValueError: `num_samples` must be an int >= 1, got 0.
        >>> check_int(2.0, "num_samples", minimum=1)
        Traceback (most recent call last):
        ...
        TypeError: `num_samples` must be an int >= 1, got float 2.0.
    """
    expected = f"`{name}` must be an int{_bounds(minimum, maximum)}"
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{expected}, got {type(value).__name__} {value!r}.")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{expected}, got {value!r}.")
    return int(value)


def check_real(value: Any, name: str, *, minimum: float | None = None, maximum: float | None = None) -> float:
    """Return ``value`` as a ``float`` if it is a finite real number (not a ``bool``) within ``[minimum, maximum]``.

    Example:
        >>> check_real(0.8, "temperature", minimum=0)
        0.8
        >>> check_real(float("nan"), "temperature")
        Traceback (most recent call last):
        ...
        ValueError: `temperature` must be a finite number, got nan.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`{name}` must be a number{_bounds(minimum, maximum)}, got {type(value).__name__} {value!r}.")
    if not math.isfinite(value):
        raise ValueError(f"`{name}` must be a finite number, got {value!r}.")
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"`{name}` must be a number{_bounds(minimum, maximum)}, got {value!r}.")
    return float(value)


def check_token_ids(ids: Any, name: str) -> list[int]:
    """Return ``ids`` (a sequence or 1-D tensor of ints) as a list of non-negative Python ints."""
    if isinstance(ids, Tensor):
        if ids.dim() != 1 or ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise TypeError(f"{name} must be a 1-D integer tensor, got shape {tuple(ids.shape)} and {ids.dtype}.")
        ids = ids.tolist()
    if isinstance(ids, (str, bytes)) or not isinstance(ids, Sequence):
        raise TypeError(f"{name} must be a sequence of token ids, got {type(ids).__name__}.")
    out: list[int] = []
    for value in ids:
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must hold ints, got {value!r} ({type(value).__name__}).")
        if value < 0:
            raise ValueError(f"{name} must be non-negative token ids, got {value}.")
        out.append(int(value))
    return out


# --------------------------------------------------------------------------- per-example values


def as_float_tensor(value: Any, name: str) -> Tensor:
    """Return ``value`` as a real floating-point tensor (integers become float32)."""
    try:
        tensor = value if isinstance(value, Tensor) else torch.as_tensor(value)
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(
            f"`{name}` must be a tensor or array-like of numbers, got {type(value).__name__}: {err}"
        ) from None
    if tensor.is_complex():
        raise TypeError(f"`{name}` must be real-valued, got dtype {tensor.dtype}.")
    if not tensor.is_floating_point():
        tensor = tensor.to(torch.float32)
    return tensor


def _first_position(bad: Tensor) -> tuple[int, ...]:
    return tuple(int(i) for i in bad.nonzero()[0])


def check_accuracy(accuracy: Tensor, name: str) -> Tensor:
    """Return ``accuracy`` if every value is a fraction in ``[0, 1]`` (NaN is not)."""
    bad = ~((accuracy >= 0) & (accuracy <= 1))  # also catches NaN
    if bad.any():
        pos = _first_position(bad)
        raise ValueError(
            f"`{name}` must be a fraction of correct samples in [0, 1]; {int(bad.sum())} value(s) are "
            f"not, the first {float(accuracy[pos]):.6g} at position {pos}."
        )
    return accuracy


def check_perplexity(perplexity: Tensor, name: str) -> Tensor:
    """Return ``perplexity`` if every value is finite and ``>= 1``."""
    bad = ~(torch.isfinite(perplexity) & (perplexity >= 1))
    if bad.any():
        pos = _first_position(bad)
        raise ValueError(
            f"`{name}` must be finite and >= 1 (exp of a mean cross-entropy); {int(bad.sum())} value(s) "
            f"are not, the first {float(perplexity[pos]):.6g} at position {pos}."
        )
    return perplexity


def check_history(
    accuracy: Any, perplexity: Any, names: tuple[str, str] = ("accuracy", "perplexity")
) -> tuple[Tensor, Tensor]:
    """Validate and convert an accuracy/perplexity pair of equal ``[N]`` or ``[T, N]`` shape."""
    acc = as_float_tensor(accuracy, names[0])
    ppl = as_float_tensor(perplexity, names[1])
    for tensor, name in ((acc, names[0]), (ppl, names[1])):
        if tensor.ndim not in (1, 2):
            raise ValueError(
                f"`{name}` must be 1-D [N] or 2-D [T checkpoints, N examples], got shape {tuple(tensor.shape)}."
            )
    if acc.shape != ppl.shape:
        raise ValueError(
            f"`{names[0]}` and `{names[1]}` must have the same shape, got {tuple(acc.shape)} and {tuple(ppl.shape)}."
        )
    return check_accuracy(acc, names[0]), check_perplexity(ppl, names[1])


def check_threshold(threshold: Any) -> float:
    """Return a memorization threshold (a perplexity ``p >= 1``) as a float."""
    if isinstance(threshold, Tensor) and threshold.numel() == 1:
        threshold = threshold.item()
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
        raise ValueError(f"`threshold` must be a finite perplexity >= 1, got {threshold!r}.")
    if threshold < 1:
        raise ValueError(
            f"`threshold` is a perplexity and must be >= 1, got {threshold}. If this is the authors' "
            f"log-log threshold tau, pass loglog_threshold_to_perplexity({threshold}) instead."
        )
    return float(threshold)
