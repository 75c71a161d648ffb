import itertools
import math
import warnings

import pytest
import torch
from _reference import premem_loop
from hypothesis import given, settings
from hypothesis import strategies as st

from lightning_premem import PreMemorizationAccuracy
from lightning_premem.functional import pre_memorization_accuracy

THRESHOLD = 1.1


def test_hand_computed_with_steps_and_companions():
    metric = PreMemorizationAccuracy(num_examples=4, threshold=THRESHOLD)
    metric.update([0, 1, 2], accuracy=[0.2, 0.2, 1.0], perplexity=[2.0, 1.5, 1.4], step=10)
    metric.update([0, 1, 2], accuracy=[0.8, 1.0, 1.0], perplexity=[1.3, 1.05, 1.3], step=20)
    metric.update([0, 1, 2], accuracy=[1.0, 1.0, 0.4], perplexity=[1.01, 1.0, 1.3], step=30)
    per_example = metric.per_example()
    torch.testing.assert_close(per_example[:3], torch.tensor([0.8, 0.2, 0.4]), rtol=0, atol=0)
    assert math.isnan(per_example[3])
    summary = metric.summary()
    assert summary["pre_memorization_accuracy"].item() == pytest.approx((0.8 + 0.2 + 0.4) / 3, abs=1e-7)
    assert summary["train_accuracy"].item() == pytest.approx((1.0 + 1.0 + 0.4) / 3, abs=1e-7)
    assert summary["memorized_fraction"].item() == pytest.approx(2 / 3)
    assert summary["num_observed"].item() == 3
    assert metric.compute().item() == pytest.approx(summary["pre_memorization_accuracy"].item())


def test_nothing_observed_is_nan():
    metric = PreMemorizationAccuracy(num_examples=3, threshold=THRESHOLD)
    assert torch.isnan(metric.per_example()).all()
    assert math.isnan(metric.summary()["pre_memorization_accuracy"])
    assert metric.summary()["num_observed"].item() == 0


@st.composite
def observed_histories(draw):
    """A [T, N] history, a mask of which (t, i) were observed, and how each round is split in batches."""
    t = draw(st.integers(1, 5))
    n = draw(st.integers(1, 8))
    fr = st.sampled_from([0.0, 0.2, 0.4, 0.6, 0.8, 1.0, 1 / 3])
    pp = st.sampled_from([1.0, 1.05, 1.1, 1.2, 1.5, 9.0])
    acc = [[draw(fr) for _ in range(n)] for _ in range(t)]
    ppl = [[draw(pp) for _ in range(n)] for _ in range(t)]
    full = draw(st.booleans())
    seen = [[True if full else draw(st.booleans()) for _ in range(n)] for _ in range(t)]
    orders = [draw(st.permutations(range(n))) for _ in range(t)]
    cuts = [sorted(draw(st.lists(st.integers(0, n), max_size=3))) for _ in range(t)]
    return acc, ppl, seen, orders, cuts


@settings(max_examples=150, deadline=None)
@given(observed_histories(), st.booleans())
def test_equals_functional_core_on_random_histories(history, explicit_steps):
    acc, ppl, seen, orders, cuts = history
    t_max, n = len(acc), len(acc[0])
    metric = PreMemorizationAccuracy(num_examples=n, threshold=THRESHOLD)
    for t in range(t_max):
        order = [i for i in orders[t] if seen[t][i]]
        bounds = [0, *[min(c, len(order)) for c in cuts[t]], len(order)]
        for lo, hi in itertools.pairwise(bounds):
            batch = order[lo:hi]
            if not batch and not explicit_steps:
                continue  # an empty implicit-step call would still advance the clock; harmless either way
            metric.update(
                batch,
                accuracy=[acc[t][i] for i in batch],
                perplexity=[ppl[t][i] for i in batch],
                step=100 * t if explicit_steps else None,
            )
    got = metric.per_example()
    for i in range(n):
        times = [t for t in range(t_max) if seen[t][i]]
        if not times:
            assert math.isnan(got[i])
            continue
        sub_acc = [[acc[t][i]] for t in times]
        sub_ppl = [[ppl[t][i]] for t in times]
        expected = premem_loop(sub_acc, sub_ppl, THRESHOLD)[-1][0]
        assert got[i].item() == torch.tensor(expected, dtype=torch.float32).item()
    if all(all(row) for row in seen):
        core = pre_memorization_accuracy(acc, ppl, THRESHOLD)[-1]
        assert torch.equal(got, core)
        assert metric.compute().item() == pytest.approx(core.double().mean().item(), abs=1e-7)


def test_duplicate_ids_in_one_update_are_merged_deterministically():
    metric = PreMemorizationAccuracy(num_examples=2, threshold=THRESHOLD)
    metric.update([0, 0, 1], accuracy=[0.4, 0.6, 1.0], perplexity=[1.5, 1.5, 1.0])
    assert metric.per_example().tolist() == pytest.approx([0.6, 0.0])


def test_steps_must_not_go_back_and_implicit_steps_follow_explicit_ones():
    metric = PreMemorizationAccuracy(num_examples=2, threshold=THRESHOLD)
    metric.update([0], accuracy=[1.0], perplexity=[1.5], step=50)
    with pytest.raises(ValueError, match="earlier than example 0's previous observation at step 50"):
        metric.update([0], accuracy=[0.0], perplexity=[1.5], step=49)
    metric.update([1], accuracy=[0.5], perplexity=[1.5], step=10)  # other example: fine
    metric.update([0], accuracy=[0.25], perplexity=[1.01])  # implicit: after step 50
    assert metric.per_example().tolist() == pytest.approx([0.25, 0.5])
    assert int(metric.clock) == 52


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"example_ids": [0, 5], "accuracy": [1, 1], "perplexity": [2, 2]}, ValueError, r"\[0, 5\).*first is 5"),
        ({"example_ids": [-1], "accuracy": [1], "perplexity": [2]}, ValueError, "first is -1"),
        ({"example_ids": [0.0], "accuracy": [1], "perplexity": [2]}, TypeError, "must be integers"),
        ({"example_ids": [[0]], "accuracy": [1], "perplexity": [2]}, ValueError, "1-D"),
        ({"example_ids": [0, 1], "accuracy": [1], "perplexity": [2]}, ValueError, "one value per example id"),
        ({"example_ids": [0], "accuracy": [1.5], "perplexity": [2]}, ValueError, r"\[0, 1\]"),
        ({"example_ids": [0], "accuracy": [1], "perplexity": [0.5]}, ValueError, ">= 1"),
        ({"example_ids": [0], "accuracy": [1], "perplexity": [2], "step": -3}, ValueError, "`step` must be an int"),
    ],
)
def test_update_validation(kwargs, error, match):
    metric = PreMemorizationAccuracy(num_examples=5, threshold=THRESHOLD)
    with pytest.raises(error, match=match):
        metric.update(**kwargs)


def test_constructor_validation():
    with pytest.raises(ValueError, match="num_examples"):
        PreMemorizationAccuracy(num_examples=0, threshold=THRESHOLD)
    with pytest.raises(ValueError, match="threshold"):
        PreMemorizationAccuracy(num_examples=3, threshold=0.5)


def _random_round(metric, generator, n, step):
    ids = torch.randperm(n, generator=generator)[: n // 2]
    acc = torch.randint(0, 6, (ids.numel(),), generator=generator) / 5
    ppl = 1 + torch.rand(ids.numel(), generator=generator) * 0.3
    metric.update(ids, acc, ppl, step=step)


def test_state_dict_round_trip_continues_like_the_uninterrupted_metric():
    n = 50
    uninterrupted = PreMemorizationAccuracy(num_examples=n, threshold=THRESHOLD)
    first = PreMemorizationAccuracy(num_examples=n, threshold=THRESHOLD)
    g1, g2 = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    for step in range(3):
        _random_round(uninterrupted, g1, n, step)
        _random_round(first, g2, n, step)
    state = first.state_dict()
    assert set(state) == {"running_max", "latest", "clock"}
    resumed = PreMemorizationAccuracy(num_examples=n, threshold=THRESHOLD)
    resumed.load_state_dict(state)
    for step in range(3, 6):
        _random_round(uninterrupted, g1, n, step)
        _random_round(resumed, g2, n, step)
    assert torch.equal(resumed.per_example().nan_to_num(-1), uninterrupted.per_example().nan_to_num(-1))


def test_state_for_ten_million_examples_is_a_few_bytes_each():
    n = 10_000_000
    metric = PreMemorizationAccuracy(num_examples=n, threshold=THRESHOLD)
    state_bytes = sum(t.numel() * t.element_size() for t in (metric.running_max, metric.latest))
    assert state_bytes / n == 12
    ids = torch.randint(0, n, (4096,))
    metric.update(ids, torch.ones(4096), torch.full((4096,), 2.0))
    assert metric.summary()["num_observed"].item() == ids.unique().numel()


def test_loaded_state_is_computed_afresh_and_without_a_compute_before_update_warning():
    a = PreMemorizationAccuracy(num_examples=2, threshold=THRESHOLD)
    a.update([0, 1], accuracy=[1.0, 1.0], perplexity=[2.0, 2.0])
    b = PreMemorizationAccuracy(num_examples=2, threshold=THRESHOLD)
    b.update([0, 1], accuracy=[0.0, 0.5], perplexity=[2.0, 2.0])
    assert a.compute().item() == 1.0  # caches 1.0
    a.load_state_dict(b.state_dict())
    fresh = PreMemorizationAccuracy(num_examples=2, threshold=THRESHOLD)
    fresh.load_state_dict(b.state_dict())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert a.compute().item() == 0.25
        assert fresh.compute().item() == 0.25
