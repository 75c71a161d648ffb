"""PreMemorizationAccuracy under 2-process DDP on CPU (gloo)."""

import math

import pytest
import torch
from _ddp import spawn
from _ddp_worker import THRESHOLD, observation, run

from lightning_premem import PreMemorizationAccuracy
from lightning_premem.functional import pre_memorization_accuracy

pytestmark = [pytest.mark.ddp, pytest.mark.slow, pytest.mark.timeout(300, method="thread")]  # a hang fails
WORLD = 2


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    out_dir = tmp_path_factory.mktemp("ddp")
    spawn(run, WORLD, str(out_dir))
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


def _history(rounds, n):
    acc = [[observation(t, i)[0] for i in range(n)] for t in range(rounds)]
    ppl = [[observation(t, i)[1] for i in range(n)] for t in range(rounds)]
    return acc, ppl


def _assert_equals_core(snap, rounds, n):
    expected = pre_memorization_accuracy(*_history(rounds, n), THRESHOLD)[-1]
    assert torch.equal(snap["per_example"], expected)
    assert snap["compute"].item() == pytest.approx(expected.double().mean().item(), abs=1e-7)
    assert snap["summary"]["num_observed"].item() == n


@pytest.mark.parametrize("rank", range(WORLD))
def test_disjoint_shards(results, rank):
    _assert_equals_core(results[rank]["disjoint"], rounds=3, n=10)


@pytest.mark.parametrize("rank", range(WORLD))
def test_distributed_sampler_padding_duplicates(results, rank):
    ids = [results[r]["padded_ids"][0] for r in range(WORLD)]
    assert sum(len(x) for x in ids) == 6  # the padding really happened
    _assert_equals_core(results[rank]["padded"], rounds=3, n=5)


@pytest.mark.parametrize("rank", range(WORLD))
@pytest.mark.parametrize("first", [0, 1])
@pytest.mark.parametrize("explicit", [True, False])
@pytest.mark.parametrize("sync_between", [True, False])
def test_later_observation_on_another_rank_is_current(results, rank, first, explicit, sync_between):
    snap = results[rank][f"later_first{first}_explicit{explicit}_sync{sync_between}"]
    # round 0: acc 1.0 not memorized; round 1: acc 0.2, memorized -> min(max(1.0, 0), 0.2)
    assert snap["per_example"][0].item() == pytest.approx(0.2)
    assert all(math.isnan(v) for v in snap["per_example"][1:].tolist())
    assert snap["summary"]["train_accuracy"].item() == pytest.approx(0.2)
    assert snap["summary"]["memorized_fraction"].item() == 1.0
    assert snap["summary"]["num_observed"].item() == 1


@pytest.mark.parametrize("rank", range(WORLD))
def test_rank_that_observed_nothing(results, rank):
    _assert_equals_core(results[rank]["idle_rank"], rounds=2, n=6)


def test_merge_ranks_puts_every_observation_into_each_ranks_checkpoint_state(results):
    before = [results[r]["local_state_before_merge"] for r in range(WORLD)]
    after = [results[r]["local_state_after_merge"] for r in range(WORLD)]
    assert not torch.equal(before[0]["latest"], before[1]["latest"])  # each rank saw half
    assert torch.equal(after[0]["latest"], after[1]["latest"])
    # rank 0's state alone, loaded into a single-process metric, knows all 10 examples
    restored = PreMemorizationAccuracy(10, THRESHOLD)
    restored.load_state_dict(after[0])
    _assert_equals_core(
        {"per_example": restored.per_example(), "compute": restored.compute(), "summary": restored.summary()},
        rounds=1,
        n=10,
    )


@pytest.mark.parametrize("rank", range(WORLD))
def test_merging_is_idempotent_and_later_updates_stay_exact(results, rank):
    _assert_equals_core(results[rank]["merged_then_more"], rounds=2, n=10)
