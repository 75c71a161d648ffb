import math

import numpy as np
import pytest
import torch
from _reference import premem_loop, r2_normal_equations
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_premem.functional import (
    loglog_threshold_to_perplexity,
    memorization_mask,
    pre_memorization_accuracy,
    r_squared,
)


def test_hand_computed_history():
    # example 0: solved at t=1 before memorizing (ppl 1.3 > 1.1) -> keeps 0.8 after memorizing at t=2
    # example 1: memorized (ppl 1.05) before it is ever correct unmemorized -> masked max stays at 0.2
    # example 2: accuracy drops after being correct -> current accuracy caps the value
    acc = [[0.2, 0.2, 1.0], [0.8, 1.0, 1.0], [1.0, 1.0, 0.4]]
    ppl = [[2.0, 1.5, 1.4], [1.3, 1.05, 1.3], [1.01, 1.0, 1.3]]
    expected = torch.tensor([[0.2, 0.2, 1.0], [0.8, 0.2, 1.0], [0.8, 0.2, 0.4]])
    out = pre_memorization_accuracy(acc, ppl, threshold=1.1)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_threshold_is_inclusive():
    # perplexity exactly at the threshold counts as memorized
    out = pre_memorization_accuracy([[1.0, 1.0]], [[1.25, 1.2500001]], threshold=1.25)
    assert out.tolist() == [[0.0, 1.0]]
    assert memorization_mask([1.25, 1.2500001], 1.25).tolist() == [True, False]


def test_one_dimensional_input_is_one_checkpoint():
    out = pre_memorization_accuracy([0.5, 0.5], [1.0, 3.0], threshold=1.1)
    assert out.tolist() == [0.0, 0.5]


def test_dtype_kept_for_float64_and_numpy_inputs():
    acc = np.array([[0.25, 0.5]], dtype=np.float64)
    out = pre_memorization_accuracy(acc, np.array([[2.0, 2.0]]), threshold=1.5)
    assert out.dtype == torch.float64
    ints = pre_memorization_accuracy([[0, 1]], [[2, 2]], threshold=1.5)
    assert ints.dtype == torch.float32 and ints.tolist() == [[0.0, 1.0]]


fractions = st.sampled_from([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 0.25, 0.75, 1 / 3])
perplexities = st.sampled_from([1.0, 1.01, 1.05, 1.1, 1.1055, 1.2, 1.5, 3.0, 40.0])


@st.composite
def histories(draw):
    t = draw(st.integers(1, 6))
    n = draw(st.integers(1, 7))
    acc = [[draw(fractions) for _ in range(n)] for _ in range(t)]
    ppl = [[draw(perplexities) for _ in range(n)] for _ in range(t)]
    return acc, ppl


@settings(max_examples=200, deadline=None)
@given(histories(), st.sampled_from([1.0, 1.05, 1.1055, 1.2, 2.0]))
def test_matches_brute_force_loop(history, threshold):
    acc, ppl = history
    out = pre_memorization_accuracy(torch.tensor(acc, dtype=torch.float64), ppl, threshold)
    assert out.tolist() == premem_loop(acc, ppl, threshold)


@given(histories())
@settings(deadline=None)
def test_premem_never_exceeds_accuracy(history):
    acc, ppl = history
    out = pre_memorization_accuracy(acc, ppl, 1.1)
    assert torch.all(out <= torch.tensor(acc, dtype=torch.float32))
    assert torch.all(out >= 0)


def test_huge_threshold_gives_zero_and_threshold_one_gives_running_accuracy_bound():
    acc = [[0.5, 1.0], [0.25, 1.0]]
    ppl = [[1.5, 1.2], [1.5, 1.2]]
    assert pre_memorization_accuracy(acc, ppl, threshold=1e9).tolist() == [[0.0, 0.0], [0.0, 0.0]]
    # nothing is memorized at p = 1 unless perplexity is exactly 1: the value is the current accuracy
    assert pre_memorization_accuracy(acc, ppl, threshold=1.0).tolist() == acc


def test_loglog_conversion():
    assert loglog_threshold_to_perplexity(-2.3) == pytest.approx(math.exp(math.exp(-2.3)))
    assert loglog_threshold_to_perplexity(-2.3) == pytest.approx(1.1055, abs=1e-4)
    assert loglog_threshold_to_perplexity(-1.7) == pytest.approx(1.2004, abs=1e-4)
    # the authors' test log(log(ppl)) >= tau for "not memorized" agrees with ppl > p
    p = loglog_threshold_to_perplexity(-2.3)
    for ppl in (1.05, 1.1, 1.11, 1.3, 5.0):
        assert (math.log(math.log(ppl)) >= -2.3) == (ppl > p)
    with pytest.raises(ValueError, match="finite number"):
        loglog_threshold_to_perplexity(float("nan"))


def test_r_squared_matches_normal_equations_and_numpy():
    rng = np.random.default_rng(0)
    x = rng.random(40)
    y = 0.7 * x + 0.2 * rng.random(40)
    expected = r2_normal_equations(list(x), list(y))
    assert r_squared(x, y) == pytest.approx(expected, rel=1e-12)
    assert r_squared(torch.tensor(x), list(y)) == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2, rel=1e-12)
    assert r_squared([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([1, 2], [1, 2, 3], "same length"),
        ([1], [1], "at least 2 points"),
        ([1, 1, 1], [1, 2, 3], "every `x` value is the same"),
        ([1, 2, float("nan")], [1, 2, 3], "finite"),
    ],
)
def test_r_squared_errors(x, y, match):
    with pytest.raises(ValueError, match=match):
        r_squared(x, y)


@pytest.mark.parametrize(
    ("acc", "ppl", "match"),
    [
        ([[0.5, 0.5]], [[1.5]], r"same shape, got \(1, 2\) and \(1, 1\)"),
        ([[[0.5]]], [[[1.5]]], "1-D .N. or 2-D"),
        (
            [[0.5, 1.5, 2.0]],
            [[1.5, 1.5, 1.5]],
            r"in \[0, 1\]; 2 value\(s\) are not, the first 1.5 at position \(0, 1\)",
        ),
        ([[0.5, float("nan")]], [[1.5, 1.5]], r"the first nan at position \(0, 1\)"),
        ([0.5, 0.5, 0.5], [1.5, 0.9, float("inf")], r"finite and >= 1.*2 value\(s\).*first 0.9 at position \(1,\)"),
    ],
)
def test_input_validation(acc, ppl, match):
    with pytest.raises(ValueError, match=match):
        pre_memorization_accuracy(acc, ppl, threshold=1.1)


def test_threshold_validation():
    with pytest.raises(ValueError, match=r"loglog_threshold_to_perplexity\(-2.3\)"):
        pre_memorization_accuracy([0.5], [1.5], threshold=-2.3)
    with pytest.raises(ValueError, match="finite perplexity"):
        pre_memorization_accuracy([0.5], [1.5], threshold=float("inf"))
    with pytest.raises(TypeError, match="array-like of numbers"):
        pre_memorization_accuracy("high", [1.5], threshold=1.1)
