r"""Active-learning curation by pre-memorization accuracy: reweighting and acquisition.

Reweighting (:class:`CuratedDataModule`): the latest per-example pre-memorization accuracy
``s_i`` of each training example becomes its sampling probability for the next epochs,

.. math::  p_i = (1 - \varepsilon)\,\frac{e^{-s_i / T}}{\sum_j e^{-s_j / T}} + \frac{\varepsilon}{N},

so low scores are sampled more (temperature ``T``), every example keeps at least ``ε / N``
(the floor), and an example never scored takes the mean score of the scored ones (neutral);
with nothing scored the distribution is uniform. Each epoch draws ``N`` examples with
replacement from ``p`` with a generator seeded by ``(seed, epoch)``; under DDP every rank draws
the same global sample and keeps its share.

Acquisition (:func:`select_for_acquisition`, Algorithm 1 of Kang et al.): after a round of
training, take the training examples a strategy flags (``premem``: pre-memorization accuracy
below a threshold), and acquire candidate-pool examples like them (same group key: template,
skill), spreading the budget over the flagged examples' groups.
"""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import DataLoader, DistributedSampler
from torch.utils.data import Dataset as TorchDataset

from lightning_premem._checks import check_int
from lightning_premem.data.datamodule import ReasoningDataModule
from lightning_premem.protocols import ScoreSender

__all__ = [
    "STRATEGIES",
    "CuratedDataModule",
    "largest_remainders",
    "sampling_weights",
    "select_for_acquisition",
]

#: Acquisition strategies: ours, and the baselines the paper compares against.
STRATEGIES = ("premem", "iid", "random", "high_loss", "low_accuracy")
Strategy = Literal["premem", "iid", "random", "high_loss", "low_accuracy"]


def sampling_weights(scores: Tensor, *, temperature: float = 0.25, floor: float = 0.1) -> Tensor:
    """Turn per-example scores into sampling probabilities (low score: sampled more).

    Args:
        scores: ``[N]`` pre-memorization accuracies in ``[0, 1]``; NaN where never scored (those get
            the mean of the scored ones).
        temperature: ``T`` in ``softmax(-s / T)``; larger is flatter.
        floor: ``ε``, the share of probability spread uniformly, so no example starves.

    Returns:
        ``[N]`` float64 probabilities summing to 1.

    Example:
        >>> sampling_weights(torch.tensor([0.0, 1.0]), temperature=1.0, floor=0.0)
        tensor([0.7311, 0.2689], dtype=torch.float64)
        >>> w = sampling_weights(torch.tensor([0.0, float("nan"), 1.0]), temperature=1.0, floor=0.0)  # NaN -> 0.5
        >>> round(w[1].item(), 4)  # e^-0.5 / (1 + e^-0.5 + e^-1)
        0.3072
    """
    if not (isinstance(temperature, (int, float)) and temperature > 0 and math.isfinite(temperature)):
        raise ValueError(f"`temperature` must be a positive number, got {temperature!r}.")
    if not (isinstance(floor, (int, float)) and 0 <= floor <= 1):
        raise ValueError(f"`floor` must be in [0, 1], got {floor!r}.")
    s = torch.as_tensor(scores, dtype=torch.float64)
    if s.ndim != 1 or s.numel() == 0:
        raise ValueError(f"`scores` must be a non-empty 1-D tensor, got shape {tuple(s.shape)}.")
    scored = ~torch.isnan(s)
    if not scored.any():
        return torch.full_like(s, 1.0 / s.numel())
    bad = scored & ~((s >= 0) & (s <= 1))
    if bad.any():
        raise ValueError(f"`scores` must be in [0, 1] or NaN; {int(bad.sum())} are not, e.g. {float(s[bad][0])}.")
    s = torch.where(scored, s, s[scored].mean())
    return (1 - floor) * torch.softmax(-s / temperature, dim=0) + floor / s.numel()


class _Sized(TorchDataset[int]):
    """A stand-in dataset of a given length (the sampler's parent only asks for ``len``)."""

    def __init__(self, size: int) -> None:
        self.size = size

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> int:
        return index


class _WeightedEpochSampler(DistributedSampler):  # type: ignore[type-arg]
    """One weighted draw with replacement per epoch, the same on every rank; each rank keeps its share.

    A ``DistributedSampler`` subclass, so Lightning neither replaces nor wraps it under DDP, and calls
    ``set_epoch`` on it every epoch. ``weights`` is updated in place between epochs.
    """

    def __init__(self, size: int, *, num_replicas: int, rank: int, seed: int) -> None:
        # the parent's dataset only serves len(); nothing else of it is used
        super().__init__(_Sized(size), num_replicas=num_replicas, rank=rank, shuffle=False, seed=seed)
        self.weights = torch.full((size,), 1.0 / size, dtype=torch.float64)
        self.per_rank = math.ceil(size / num_replicas)
        self._resume: tuple[int, int] | None = None  # (epoch, indices to skip) after a mid-epoch restore

    def global_sample(self, epoch: int) -> Tensor:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        return torch.multinomial(self.weights, self.per_rank * self.num_replicas, replacement=True, generator=generator)

    def __iter__(self) -> Iterator[int]:
        mine = self.global_sample(self.epoch)[self.rank :: self.num_replicas].tolist()
        if self._resume is not None:
            epoch, skip = self._resume
            self._resume = None
            if epoch == self.epoch:
                mine = mine[skip:]
        return iter(mine)

    def __len__(self) -> int:
        return self.per_rank

    def state(self, consumed: int) -> dict[str, Any]:
        return {"weights": self.weights.clone(), "epoch": self.epoch, "consumed": consumed}

    def restore(self, state: Mapping[str, Any]) -> None:
        weights = torch.as_tensor(state["weights"], dtype=torch.float64)
        if weights.shape != self.weights.shape:
            raise ValueError(
                f"the checkpoint's sampling weights cover {weights.numel()} examples, the training set has "
                f"{self.weights.numel()}: resume with the same training data."
            )
        self.weights.copy_(weights)
        self.epoch = int(state["epoch"])
        self._resume = (self.epoch, int(state["consumed"]))


class CuratedDataModule(ReasoningDataModule):
    """A :class:`~lightning_premem.ReasoningDataModule` that samples training examples by their scores.

    :class:`~lightning_premem.PreMemorizationCallback` hands it each probe round's scores
    (``update_premem_scores``); the following epochs draw examples with :func:`sampling_weights`.
    Its state (scores, weights, epoch and position in the epoch's draw) is saved in checkpoints,
    so a run resumed mid-epoch draws the batches the uninterrupted run would have.

    Args:
        train: the training rows (as for :class:`~lightning_premem.ReasoningDataModule`).
        temperature: ``T`` of :func:`sampling_weights`.
        floor: ``ε`` of :func:`sampling_weights`.
        kwargs: everything else :class:`~lightning_premem.ReasoningDataModule` takes.
    """

    def __init__(self, train: Any, *, temperature: float = 0.25, floor: float = 0.1, **kwargs: Any) -> None:
        super().__init__(train, **kwargs)
        sampling_weights(torch.zeros(1), temperature=temperature, floor=floor)  # validates both
        self.temperature = float(temperature)
        self.floor = float(floor)
        self.scores: Tensor | None = None  # [N] pre-memorization accuracy, NaN where unscored
        self._sampler: _WeightedEpochSampler | None = None
        self._pending_sampler_state: dict[str, Any] | None = None

    def setup(self, stage: str | None = None) -> None:
        """Build the splits; under ``Trainer.fit`` also check that someone will send scores."""
        super().setup(stage)
        trainer = getattr(self, "trainer", None)
        if (
            stage == "fit"
            and trainer is not None
            and not any(isinstance(c, ScoreSender) and c.sends_premem_scores for c in trainer.callbacks)
        ):
                raise ValueError(
                    "CuratedDataModule samples by the scores PreMemorizationCallback sends after each probe round, "
                    "and this Trainer has none: add Trainer(callbacks=[PreMemorizationCallback(...)]), or use "
                    "ReasoningDataModule for uniform shuffling."
                )

    @property
    def weights(self) -> Tensor:
        """``[N]`` sampling probabilities of the training examples, in ``train_rows`` order."""
        self._ensure("train")
        return sampling_weights(self._scores(), temperature=self.temperature, floor=self.floor)

    def update_premem_scores(self, example_ids: Sequence[int], scores: Mapping[str, Tensor]) -> None:
        """Take per-example scores (from the callback); the next epoch samples by them.

        Args:
            example_ids: ids of the scored training examples.
            scores: a mapping with ``pre_memorization_accuracy`` (``[len(example_ids)]``); other keys are ignored.

        Raises:
            ValueError: an id that is not a training example, or a length mismatch.
        """
        self._ensure("train")
        values = torch.as_tensor(scores["pre_memorization_accuracy"], dtype=torch.float64).flatten()
        if values.numel() != len(example_ids):
            raise ValueError(f"got {values.numel()} scores for {len(example_ids)} example ids.")
        position = {int(row["id"]): i for i, row in enumerate(self.train_rows)}
        unknown = [int(i) for i in example_ids if int(i) not in position]
        if unknown:
            raise ValueError(
                f"{len(unknown)} scored example ids are not in the training set (first {unknown[:5]}); "
                "score the datamodule's own training examples (its probe_examples('train'))."
            )
        current = self._scores().clone()
        current[[position[int(i)] for i in example_ids]] = values
        self.scores = current
        if self._sampler is not None:
            self._sampler.weights.copy_(self.weights)

    def make_train_dataloader(self) -> DataLoader[dict[str, Any]]:
        """Batches drawn by score each epoch (a DDP-aware weighted sampler)."""
        trainer = getattr(self, "trainer", None)
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        sampler = _WeightedEpochSampler(len(self.train_features), num_replicas=world, rank=rank, seed=self.seed)
        sampler.weights.copy_(self.weights)
        if self._pending_sampler_state is not None:
            sampler.restore(self._pending_sampler_state)
            self._pending_sampler_state = None
        self._sampler = sampler
        return self.make_dataloader(self.train_features, sampler=sampler)

    def state_dict(self) -> dict[str, Any]:
        """Scores and the sampler's weights, epoch and position (batches done in the epoch x batch size)."""
        state: dict[str, Any] = {"scores": None if self.scores is None else self.scores.clone()}
        if self._sampler is not None:
            state["sampler"] = self._sampler.state(self._batches_done() * self.batch_size)
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore scores and the sampler (applied when the train loader is built)."""
        scores = state_dict.get("scores")
        self.scores = None if scores is None else torch.as_tensor(scores, dtype=torch.float64)
        self._pending_sampler_state = state_dict.get("sampler")
        if self._sampler is not None and self._pending_sampler_state is not None:
            self._sampler.restore(self._pending_sampler_state)
            self._pending_sampler_state = None

    def _scores(self) -> Tensor:
        if self.scores is None or self.scores.numel() != len(self.train_rows):
            self.scores = torch.full((len(self.train_rows),), float("nan"), dtype=torch.float64)
        return self.scores

    def _batches_done(self) -> int:
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 0
        progress = trainer.fit_loop.epoch_loop.batch_progress.current
        done = int(progress.processed)
        # at an epoch's end the next epoch starts fresh (set_epoch moves the sampler on)
        return 0 if self._sampler is not None and done >= len(self._sampler) else done


def select_for_acquisition(
    strategy: Strategy,
    train: Sequence[Mapping[str, Any]],
    pool: Sequence[Mapping[str, Any]],
    budget: int,
    *,
    scores: Mapping[int, Mapping[str, float]] | None = None,
    group_key: str = "template",
    threshold: float = 0.5,
    seed: int = 0,
) -> list[Mapping[str, Any]]:
    """Pick ``budget`` candidate-pool examples to add to the training set.

    Args:
        strategy: ``premem`` (examples like the training examples whose pre-memorization accuracy is below
            ``threshold``), ``low_accuracy`` (like those whose train accuracy is below ``threshold``),
            ``high_loss`` (like the highest-perplexity quarter of the training examples), ``iid`` (the pool's
            own group mix: a uniform draw) or ``random`` (uniform over groups, whatever their size).
        train: the current training examples (each with ``id`` and ``group_key``).
        pool: candidates not in the training set (each with ``id`` and ``group_key``).
        budget: how many to acquire.
        scores: per training id, ``{"pre_memorization_accuracy", "accuracy", "perplexity"}`` (needed by
            ``premem``, ``low_accuracy``, ``high_loss``).
        group_key: the field that says which examples are alike (template, skill).
        threshold: ``t`` of Algorithm 1.
        seed: seeds the draws.

    Returns:
        The chosen pool examples. The budget is split over the flagged examples' groups in proportion to how
        many flagged examples each holds (largest remainders), then drawn uniformly within each group; a group
        that runs dry passes its share on. When nothing is flagged the draw is ``iid``.

    Raises:
        ValueError: unknown strategy, empty pool, a budget larger than the pool, scores missing or for ids not
            in ``train``, examples without ``group_key``.
    """
    if strategy not in STRATEGIES:
        raise ValueError(f"unknown strategy {strategy!r}; choose one of {', '.join(STRATEGIES)}.")
    if not pool:
        raise ValueError("the candidate pool is empty: nothing to acquire.")
    check_int(budget, "budget", minimum=0)
    if budget > len(pool):
        raise ValueError(f"`budget` ({budget}) is larger than the pool ({len(pool)} examples).")
    for name, rows in (("train", train), ("pool", pool)):
        missing = [r.get("id") for r in rows if group_key not in r]
        if missing:
            raise ValueError(f"{len(missing)} {name} examples have no {group_key!r} (first ids {missing[:5]}).")
    generator = torch.Generator().manual_seed(seed)
    groups: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
    for row in pool:
        groups[row[group_key]].append(row)
    if strategy == "iid":
        order = torch.randperm(len(pool), generator=generator).tolist()
        return [pool[i] for i in order[:budget]]
    if strategy == "random":
        demand = Counter({key: 1 for key in groups})
    else:
        demand = Counter(row[group_key] for row in _flagged(strategy, train, scores, threshold))
        if not demand:
            order = torch.randperm(len(pool), generator=generator).tolist()
            return [pool[i] for i in order[:budget]]
    return _draw_by_demand(groups, demand, budget, generator)


def _flagged(
    strategy: str,
    train: Sequence[Mapping[str, Any]],
    scores: Mapping[int, Mapping[str, float]] | None,
    threshold: float,
) -> list[Mapping[str, Any]]:
    if scores is None:
        raise ValueError(f"strategy {strategy!r} needs `scores` of the training examples.")
    train_ids = {int(r["id"]) for r in train}
    unknown = sorted(int(i) for i in scores if int(i) not in train_ids)
    if unknown:
        raise ValueError(f"scores given for {len(unknown)} ids that are not training examples (first {unknown[:5]}).")
    scored = [r for r in train if int(r["id"]) in scores]
    if strategy == "premem":
        return [r for r in scored if scores[int(r["id"])]["pre_memorization_accuracy"] < threshold]
    if strategy == "low_accuracy":
        return [r for r in scored if scores[int(r["id"])]["accuracy"] < threshold]
    ranked = sorted(scored, key=lambda r: (-scores[int(r["id"])]["perplexity"], int(r["id"])))
    return ranked[: max(1, len(ranked) // 4)] if ranked else []


def _draw_by_demand(
    groups: Mapping[Any, list[Mapping[str, Any]]], demand: Counter[Any], budget: int, generator: torch.Generator
) -> list[Mapping[str, Any]]:
    shuffled = {
        key: [rows[i] for i in torch.randperm(len(rows), generator=generator).tolist()] for key, rows in groups.items()
    }
    chosen: list[Mapping[str, Any]] = []
    remaining = budget
    active = {key: count for key, count in demand.items() if shuffled.get(key)}
    while remaining > 0:
        if not active:  # the flagged groups ran dry: fill from the rest of the pool
            active = {key: 1 for key, rows in shuffled.items() if rows}
            if not active:
                break
        for key, share in largest_remainders(active, remaining).items():
            take = shuffled[key][:share]
            shuffled[key] = shuffled[key][share:]
            chosen.extend(take)
            remaining -= len(take)
        active = {key: count for key, count in active.items() if shuffled[key]}
    return chosen


def largest_remainders(weights: Mapping[Any, float], n: int) -> dict[Any, int]:
    """Split ``n`` in proportion to ``weights`` into whole counts summing to ``n`` (largest remainders, ties by key).

    Example:
        >>> largest_remainders({"a": 3, "b": 1}, 6)  # quotas 4.5 and 1.5: the tie goes to the first key
        {'a': 5, 'b': 1}
    """
    total = sum(weights.values())
    quotas = {key: n * weight / total for key, weight in weights.items()}
    counts = {key: int(q) for key, q in quotas.items()}
    for key in sorted(quotas, key=lambda k: (-(quotas[k] - counts[k]), str(k)))[: n - sum(counts.values())]:
        counts[key] += 1
    return counts
