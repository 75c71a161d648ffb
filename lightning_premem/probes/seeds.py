"""Counter-based random streams: every sample is a fixed function of ``(seed, example id, sample, step)``.

The probes never draw from a global RNG. An example's completions come from the stream
``example_seed(seed, example_id, stream)``; sample ``j`` of it uses the key ``row_key(that seed, j)``,
and its ``t``-th token the uniform number ``uniform(key, t)``. So the same example gets the same
completions every round, on any rank, in any batch. All of it is SplitMix64 (Steele et al. 2014).

Streams (:data:`STREAMS`) keep the probes of one round apart: the training queries, the held-out
test and validation queries, the ATC queries, and each prompt perturbation of the robustness probe
(``STREAMS["robust"] + index``). Two probes of the same queries on the same stream with the same
seed draw the same completions: the callback's robustness probe and
:func:`~lightning_premem.probes.robustness.robustness_accuracy` agree, and so do the callback's
validation accuracy and the ATC fit of the baseline-predictors callback.
"""

from __future__ import annotations

import numpy as np

__all__ = ["STREAMS", "example_seed", "mix64", "mix64_array", "row_key", "uniform", "uniforms"]

MASK64 = (1 << 64) - 1

#: Salt of each probe's random stream (xor-ed into the seed).
STREAMS: dict[str, int] = {
    "train": 0,
    "test": 0x5EED_7E57,
    "validation": 0x0A7C_F17,
    "atc_queries": 0x0A7C_0E5,
    "robust": 0x0B57_0000,
}


def mix64(value: int) -> int:
    """SplitMix64 finalizer: a bijective, well-mixing map of 64-bit integers."""
    value = (value + 0x9E3779B97F4A7C15) & MASK64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & MASK64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & MASK64
    return value ^ (value >> 31)


def mix64_array(values: np.ndarray) -> np.ndarray:
    """:func:`mix64` of each element of a ``uint64`` array (numpy wraps ``uint64`` arithmetic mod 2**64)."""
    values = values + np.uint64(0x9E3779B97F4A7C15)
    values = (values ^ (values >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    values = (values ^ (values >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    mixed: np.ndarray = values ^ (values >> np.uint64(31))
    return mixed


def example_seed(seed: int, example_id: int, stream: int = 0) -> int:
    """Mix ``(seed, stream, example id)`` into a 63-bit seed: the same stream every round and on every rank.

    Example:
        >>> example_seed(0, 7) == example_seed(0, 7) != example_seed(0, 7, STREAMS["test"])
        True
    """
    return mix64(mix64((seed ^ stream) & MASK64) ^ example_id) >> 1


def row_key(seed: int, sample_index: int) -> int:
    """Return the random-stream key of sample ``sample_index`` of a prompt seeded with ``seed``."""
    return mix64(mix64(seed & MASK64) ^ sample_index)


def uniform(key: int, step: int) -> float:
    """Return a uniform number in ``[0, 1)`` (53 random bits) for ``step`` of the stream ``key``."""
    return (mix64(key ^ mix64(step)) >> 11) * 2.0**-53


def uniforms(keys: np.ndarray, step: int) -> np.ndarray:
    """:func:`uniform` of each key of a ``uint64`` array at ``step``, as ``float64``: one vectorised pass."""
    mixed = mix64_array(keys ^ np.uint64(mix64(step & MASK64)))
    out: np.ndarray = (mixed >> np.uint64(11)).astype(np.float64) * 2.0**-53
    return out
