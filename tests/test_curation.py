"""CuratedDataModule (reweighting by score, DDP shares, resume) and acquisition strategies."""

import math

import lightning as L  # noqa: N812
import pytest
import torch
from _tiny import examples, module, tokenizer
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from lightning_premem import CuratedDataModule, PreMemorizationCallback
from lightning_premem.data.curation import _WeightedEpochSampler, sampling_weights, select_for_acquisition
from lightning_premem.functional import pre_memorization_accuracy

FIELDS = {"question": "question", "solution": "solution", "id": "id"}


# ---------------------------------------------------------------- weights


def test_weights_hand_computed():
    # T = 0.5, eps = 0.2, s = [0, 0.5, 1]: softmax(-2s) = [1, e^-1, e^-2] / (1 + e^-1 + e^-2)
    z = 1 + math.exp(-1) + math.exp(-2)
    expected = [0.8 * w / z + 0.2 / 3 for w in (1, math.exp(-1), math.exp(-2))]
    got = sampling_weights(torch.tensor([0.0, 0.5, 1.0]), temperature=0.5, floor=0.2)
    assert got.tolist() == pytest.approx(expected, rel=1e-12)
    assert got.sum().item() == pytest.approx(1.0)


def test_unscored_examples_are_neutral_and_nothing_scored_is_uniform():
    got = sampling_weights(torch.tensor([0.2, float("nan"), 0.6]), temperature=0.3, floor=0.0)
    middle = sampling_weights(torch.tensor([0.2, 0.4, 0.6]), temperature=0.3, floor=0.0)
    assert got.tolist() == pytest.approx(middle.tolist())  # NaN -> the mean score 0.4
    assert sampling_weights(torch.full((4,), float("nan"))).tolist() == [0.25] * 4


def test_floor_keeps_every_example_and_temperature_flattens():
    w = sampling_weights(torch.tensor([0.0] + [1.0] * 9), temperature=0.01, floor=0.1)
    assert w.min().item() >= 0.1 / 10 - 1e-15
    flat = sampling_weights(torch.tensor([0.0, 1.0]), temperature=1e6, floor=0.0)
    assert flat.tolist() == pytest.approx([0.5, 0.5])


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"temperature": 0}, "temperature"),
        ({"floor": 1.5}, "floor"),
        ({"scores": torch.tensor([0.5, 2.0])}, r"\[0, 1\]"),
        ({"scores": torch.zeros(0)}, "non-empty"),
    ],
)
def test_weight_errors(kwargs, match):
    scores = kwargs.pop("scores", torch.tensor([0.5]))
    with pytest.raises(ValueError, match=match):
        sampling_weights(scores, **kwargs)


# ---------------------------------------------------------------- sampler


def test_draws_match_the_weights_chi_square():
    sampler = _WeightedEpochSampler(5, num_replicas=1, rank=0, seed=0)
    sampler.weights.copy_(torch.tensor([0.4, 0.3, 0.15, 0.1, 0.05], dtype=torch.float64))
    counts = torch.zeros(5)
    for epoch in range(2000):
        sampler.set_epoch(epoch)
        for i in sampler:
            counts[i] += 1
    expected = sampler.weights * counts.sum()
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 18.47  # 99.9th percentile of chi-square with 4 degrees of freedom


def test_ranks_split_one_global_draw():
    samplers = [_WeightedEpochSampler(7, num_replicas=2, rank=r, seed=3) for r in range(2)]
    for s in samplers:
        s.weights.copy_(sampling_weights(torch.linspace(0, 1, 7)))
        s.set_epoch(4)
    shares = [list(s) for s in samplers]
    assert len(shares[0]) == len(shares[1]) == 4 == len(samplers[0])
    global_draw = samplers[0].global_sample(4).tolist()
    assert sorted(shares[0] + shares[1]) == sorted(global_draw)
    assert shares[0] == global_draw[0::2] and shares[1] == global_draw[1::2]


def test_scores_reach_the_weights_and_unknown_ids_are_rejected():
    tok = tokenizer()
    dm = CuratedDataModule(examples(4), fields=FIELDS, tokenizer=tok, temperature=0.5, floor=0.0)
    dm.setup("fit")
    loader = dm.train_dataloader()
    dm.update_premem_scores([0, 2], {"pre_memorization_accuracy": torch.tensor([1.0, 0.0])})
    expected = sampling_weights(torch.tensor([1.0, float("nan"), 0.0, float("nan")]), temperature=0.5, floor=0.0)
    assert dm.weights.tolist() == pytest.approx(expected.tolist())
    assert loader.sampler.weights.tolist() == pytest.approx(expected.tolist())  # updated in place
    with pytest.raises(ValueError, match=r"not in the training set \(first \[99\]\)"):
        dm.update_premem_scores([99], {"pre_memorization_accuracy": torch.tensor([0.5])})
    with pytest.raises(ValueError, match="2 scores for 1 example ids"):
        dm.update_premem_scores([0], {"pre_memorization_accuracy": torch.tensor([0.5, 0.5])})


# ---------------------------------------------------------------- with the callback and Trainer


class RecordBatches(Callback):
    def __init__(self):
        self.ids = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.ids[trainer.global_step] = batch["example_ids"].tolist()


def _fit(tmp_path, epochs, callbacks, ckpt_path=None):
    tok = tokenizer()
    dm = CuratedDataModule(examples(12), fields=FIELDS, tokenizer=tok, batch_size=4, temperature=0.1, floor=0.05)
    premem = PreMemorizationCallback(num_samples=2, max_new_tokens=10, temperature=1.0, progress=False)
    L.seed_everything(0)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[premem, *callbacks],
        accelerator="cpu",
    )
    trainer.fit(module(tok), datamodule=dm, ckpt_path=ckpt_path)
    return dm, premem


@pytest.mark.slow
def test_next_epoch_samples_by_the_callbacks_scores(tmp_path):
    record = RecordBatches()
    dm, premem = _fit(tmp_path, 2, [record])
    scores = premem.metric.per_example()
    expected = sampling_weights(scores.double(), temperature=0.1, floor=0.05)
    assert dm.weights.tolist() == pytest.approx(expected.tolist())
    first_epoch = sorted(i for step in range(3) for i in record.ids[step])
    assert len(first_epoch) == 12
    # epoch 1 drew with the weights of round 0's scores (uniform before any score)
    round0 = premem.history[0]
    scores0 = pre_memorization_accuracy(round0["accuracy"], round0["perplexity"], premem.threshold)
    replay = _WeightedEpochSampler(12, num_replicas=1, rank=0, seed=dm.seed)
    replay.weights.copy_(sampling_weights(scores0.double(), temperature=0.1, floor=0.05))
    replay.set_epoch(1)
    assert [i for step in range(3, 6) for i in record.ids[step]] == list(replay)
    replay.weights.fill_(1 / 12)
    replay.set_epoch(0)
    assert [i for step in range(3) for i in record.ids[step]] == list(replay)


@pytest.mark.slow
def test_resume_mid_epoch_draws_the_uninterrupted_batches(tmp_path):
    full = RecordBatches()
    save = ModelCheckpoint(dirpath=tmp_path / "ckpt", every_n_train_steps=5, save_top_k=-1)
    _fit(tmp_path / "full", 4, [full, save])  # 3 batches per epoch: step 5 is mid-epoch 1
    (mid,) = [p for p in (tmp_path / "ckpt").glob("*.ckpt") if "step=5" in p.name]
    state = torch.load(mid, weights_only=False)["CuratedDataModule"]
    assert state["sampler"]["consumed"] == 2 * 4  # 2 of epoch 1's 3 batches done
    resumed = RecordBatches()
    _fit(tmp_path / "resumed", 4, [resumed], ckpt_path=mid)
    assert sorted(resumed.ids) == list(range(5, 12))
    assert {step: resumed.ids[step] for step in resumed.ids} == {step: full.ids[step] for step in resumed.ids}


# ---------------------------------------------------------------- acquisition


def _rows(spec, start=0):
    """spec: list of group names -> rows with consecutive ids."""
    return [
        {"id": start + i, "template": g, "question": f"q{start + i}", "solution": "#### 1"} for i, g in enumerate(spec)
    ]


TRAIN = _rows(["A", "A", "B", "C"])
POOL = _rows(["A"] * 4 + ["B"] * 4 + ["C"] * 4, start=100)
SCORES = {
    0: {"pre_memorization_accuracy": 0.1, "accuracy": 0.9, "perplexity": 1.2},
    1: {"pre_memorization_accuracy": 0.2, "accuracy": 0.95, "perplexity": 1.1},
    2: {"pre_memorization_accuracy": 0.9, "accuracy": 0.1, "perplexity": 1.5},
    3: {"pre_memorization_accuracy": 0.8, "accuracy": 0.8, "perplexity": 3.0},
}


def _groups(rows):
    return sorted(r["template"] for r in rows)


def test_premem_acquires_like_the_low_scoring_examples():
    chosen = select_for_acquisition("premem", TRAIN, POOL, 4, scores=SCORES, threshold=0.5)
    assert _groups(chosen) == ["A"] * 4  # ids 0 and 1 (template A) are below 0.5


def test_low_accuracy_and_high_loss():
    assert _groups(select_for_acquisition("low_accuracy", TRAIN, POOL, 3, scores=SCORES, threshold=0.5)) == ["B"] * 3
    assert _groups(select_for_acquisition("high_loss", TRAIN, POOL, 2, scores=SCORES)) == ["C"] * 2  # top quarter: id 3


def test_budget_split_by_flagged_counts_and_dry_groups_pass_on():
    scores = {**SCORES, 2: {**SCORES[2], "pre_memorization_accuracy": 0.3}}  # flagged: A, A, B
    assert _groups(select_for_acquisition("premem", TRAIN, POOL, 6, scores=scores)) == ["A"] * 4 + ["B"] * 2
    # A's 4 pool examples run out; its remaining demand goes to B
    assert _groups(select_for_acquisition("premem", TRAIN, POOL, 9, scores=scores)) == ["A"] * 4 + ["B"] * 4 + ["C"]


def test_random_is_uniform_over_groups_and_iid_follows_the_pool():
    assert _groups(select_for_acquisition("random", TRAIN, POOL, 6)) == ["A", "A", "B", "B", "C", "C"]
    pool = _rows(["A"] * 9 + ["B"], start=100)
    iid = select_for_acquisition("iid", TRAIN, pool, 10)
    assert _groups(iid) == ["A"] * 9 + ["B"]


def test_deterministic_under_a_seed():
    a = select_for_acquisition("premem", TRAIN, POOL, 3, scores=SCORES, seed=5)
    b = select_for_acquisition("premem", TRAIN, POOL, 3, scores=SCORES, seed=5)
    assert [r["id"] for r in a] == [r["id"] for r in b]
    assert len({r["id"] for r in a}) == 3
    # the seed picks which of template A's pool examples are taken
    picks = {
        tuple(r["id"] for r in select_for_acquisition("premem", TRAIN, POOL, 3, scores=SCORES, seed=s))
        for s in range(8)
    }
    assert len(picks) > 1


@pytest.mark.parametrize(
    ("args", "kwargs", "match"),
    [
        (("bald", TRAIN, POOL, 1), {}, "unknown strategy 'bald'"),
        (("iid", TRAIN, [], 1), {}, "pool is empty"),
        (("iid", TRAIN, POOL, 13), {}, r"larger than the pool \(12"),
        (("premem", TRAIN, POOL, 1), {}, "needs `scores`"),
        (("premem", TRAIN, POOL, 1), {"scores": {77: SCORES[0]}}, r"not training examples \(first \[77\]\)"),
        (("iid", [{"id": 0}], POOL, 1), {}, "have no 'template'"),
    ],
)
def test_acquisition_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        select_for_acquisition(*args, **kwargs)


def test_fit_without_the_callback_is_an_error(tmp_path):
    tok = tokenizer()
    dm = CuratedDataModule(examples(4), fields=FIELDS, tokenizer=tok, batch_size=2)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=1,
        logger=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    with pytest.raises(ValueError, match="this Trainer has none: add Trainer"):
        trainer.fit(module(tok), datamodule=dm)
