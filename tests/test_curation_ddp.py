"""CuratedDataModule under 2-process CPU DDP (gloo): the ranks split one weighted draw per epoch."""

import pytest
import torch
from _curation_ddp_worker import run
from _ddp import spawn

from lightning_premem.data.curation import _WeightedEpochSampler

pytestmark = [pytest.mark.ddp, pytest.mark.slow, pytest.mark.timeout(300, method="thread")]


def test_ranks_share_one_weighted_draw(tmp_path):
    spawn(run, 2, str(tmp_path))
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=False) for r in range(2)]
    assert sorted(ranks[0]["epochs"]) == [0, 1, 2]
    uniform = torch.full((10,), 0.1, dtype=torch.float64)
    assert torch.equal(ranks[0]["epochs"][0]["weights"], uniform)
    assert not torch.equal(ranks[0]["epochs"][2]["weights"], uniform)  # scores arrived after round 0 and 1
    for epoch in range(3):
        weights = [ranks[r]["epochs"][epoch]["weights"] for r in range(2)]
        assert torch.equal(weights[0], weights[1])  # every rank received the same scores
        replay = _WeightedEpochSampler(10, num_replicas=2, rank=0, seed=ranks[0]["seed"])
        replay.weights.copy_(weights[0])
        draw = replay.global_sample(epoch).tolist()
        assert len(draw) == 10
        assert ranks[0]["epochs"][epoch]["ids"] == draw[0::2]
        assert ranks[1]["epochs"][epoch]["ids"] == draw[1::2]
