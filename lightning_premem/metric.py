"""``PreMemorizationAccuracy``: a torchmetrics Metric with dense per-example state.

State, per training example (12 bytes):

- ``running_max`` (float32): ``max`` over the example's observations of its masked accuracy;
- ``latest`` (int64): the example's latest observation packed into one integer as
  ``step << 31 | float32_bits(accuracy) << 1 | memorized`` (``-1``: never observed).

Both reduce across processes with an element-wise ``max``: the running maximum is a
maximum anyway, and the packing makes the maximum of ``latest`` the observation with the
highest step, whichever rank made it. Observations of one example at the same step
(the duplicates ``DistributedSampler`` pads with) resolve to the higher accuracy, then to
"memorized". So the standard torchmetrics sync is exact, and merging is idempotent: a rank may
hold the merged state of all ranks (``merge_ranks()``) and later merges stay exact. Every state
is persistent: it rides in the LightningModule's (or callback's) checkpoint.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor
from torchmetrics import Metric

from lightning_premem._checks import check_history, check_int, check_threshold
from lightning_premem.functional import masked_accuracy

__all__ = ["PreMemorizationAccuracy"]

_STEP_SHIFT = 31
_ACC_MASK = (1 << 30) - 1  # float32 bits of any value in [0, 1] fit in 30 bits
_MAX_STEP = (1 << 31) - 1
_NEVER = -1


def _pack(step: Tensor, accuracy: Tensor, memorized: Tensor) -> Tensor:
    bits = accuracy.abs().to(torch.float32).view(torch.int32).to(torch.int64)  # abs: -0.0 -> +0.0
    return (step << _STEP_SHIFT) | (bits << 1) | memorized.to(torch.int64)


def _unpack(latest: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Return ``(step, accuracy, memorized)``; meaningless where ``latest < 0``."""
    observed = latest >= 0
    safe = torch.where(observed, latest, torch.zeros_like(latest))
    bits = ((safe >> 1) & _ACC_MASK).to(torch.int32)
    return safe >> _STEP_SHIFT, bits.view(torch.float32), (safe & 1).bool()


class PreMemorizationAccuracy(Metric):
    r"""Dataset-level pre-memorization train accuracy, from per-example observations.

    ``PreMem_t(i) = min(max_{t'<=t} Acc_t'(i) * 1[Perp_t'(i) > p], Acc_t(i))``, averaged over the
    examples observed at least once (Kang et al., arXiv 2411.07681).

    Args:
        num_examples: how many examples the metric tracks; example ids are ``0 .. num_examples - 1`` (a
            training set's ids when they are, or positions in a probed subset: the callback's metric has one
            example per probed id, example ``i`` being ``callback.probed_ids[i]``).
        threshold: perplexity ``p``; an example is memorized iff its perplexity is ``<= p``.
        kwargs: forwarded to :class:`torchmetrics.Metric` (``sync_on_compute``, ``process_group``...).

    ``update`` inputs:
        - ``example_ids`` (``[B]`` int in ``[0, num_examples)``): which examples were probed;
        - ``accuracy`` (``[B]`` in ``[0, 1]``): fraction of their sampled answers that were correct;
        - ``perplexity`` (``[B]`` >= 1): perplexity of their target traces;
        - ``step`` (int, optional): the checkpoint's step (e.g. ``trainer.global_step``). Each
          observation of an example must be at a later step than the previous one; under DDP pass
          it so that observations made on different ranks are ordered. Without it, each call
          counts as one step later than any step this process has seen.

    Example:
        >>> metric = PreMemorizationAccuracy(num_examples=3, threshold=1.1)
        >>> metric.update([0, 1, 2], accuracy=[0.4, 1.0, 0.0], perplexity=[1.9, 1.5, 1.3])
        >>> metric.update([0, 1], accuracy=[1.0, 1.0], perplexity=[1.01, 1.02])
        >>> metric.per_example()
        tensor([0.4000, 1.0000, 0.0000])
        >>> metric.compute()
        tensor(0.4667)
        >>> for name, value in metric.summary().items():
        ...     print(f"{name}: {value:.4f}")
        pre_memorization_accuracy: 0.4667
        train_accuracy: 0.6667
        memorized_fraction: 0.6667
        num_observed: 3.0000
    """

    is_differentiable = False
    higher_is_better = True
    full_state_update = False

    running_max: Tensor
    latest: Tensor
    clock: Tensor

    def __init__(self, num_examples: int, threshold: float, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        check_int(num_examples, "num_examples", minimum=1)
        self.num_examples = num_examples
        self.threshold = check_threshold(threshold)
        self.add_state("running_max", torch.zeros(num_examples), dist_reduce_fx="max", persistent=True)
        self.add_state(
            "latest", torch.full((num_examples,), _NEVER, dtype=torch.int64), dist_reduce_fx="max", persistent=True
        )
        # the next implicit step: one past the highest step this process has recorded
        self.add_state("clock", torch.tensor(0, dtype=torch.int64), dist_reduce_fx="max", persistent=True)

    def update(self, example_ids: Any, accuracy: Any, perplexity: Any, step: int | None = None) -> None:
        """Record one observation for each given example (see the class docstring)."""
        ids = self._check_ids(example_ids)
        acc, ppl = check_history(accuracy, perplexity)
        if acc.ndim != 1 or acc.numel() != ids.numel():
            raise ValueError(
                f"`accuracy` and `perplexity` must be 1-D with one value per example id ({ids.numel()}), "
                f"got shape {tuple(acc.shape)}."
            )
        stamp = self._check_step(step, ids)
        memorized = (ppl <= self.threshold).to(self.latest.device)
        acc = acc.to(device=self.running_max.device, dtype=torch.float32)
        self.running_max.scatter_reduce_(0, ids, masked_accuracy(acc, memorized), reduce="amax")
        steps = torch.full_like(ids, stamp)
        self.latest.scatter_reduce_(0, ids, _pack(steps, acc, memorized), reduce="amax")
        self.clock = torch.clamp(self.clock, min=stamp + 1)

    def merge_ranks(self) -> None:
        """Replace every process's state by the state merged over all processes (a collective call).

        Under DDP each process holds the observations it made, and a checkpoint holds the state of
        the process that writes it. Call this on every rank before saving to put all observations
        into that state. It is exact and may be repeated: the merge is an element-wise ``max``,
        which merging copies of the same state leaves unchanged. Without a process group it does
        nothing.
        """
        with self.sync_context(should_sync=True):
            merged = {name: getattr(self, name).clone() for name in ("running_max", "latest", "clock")}
        for name, value in merged.items():
            setattr(self, name, value)

    def compute(self) -> Tensor:
        """Mean pre-memorization accuracy over the examples observed at least once (NaN if none)."""
        return self._summary_from_state()["pre_memorization_accuracy"]

    def per_example(self) -> Tensor:
        """``[num_examples]`` current pre-memorization accuracy; NaN for never-observed examples."""
        with self.sync_context(should_sync=self.sync_on_compute):
            return self._per_example_from_state()

    def best_masked_accuracy(self) -> Tensor:
        """``[num_examples]`` the running maximum of each example's masked accuracy; NaN for never-observed ones.

        An example memorized now whose value here is 0 has pre-memorization accuracy 0 whatever its
        accuracy now: ``min(max(0, 0), accuracy) = 0``.

        Example:
            >>> metric = PreMemorizationAccuracy(num_examples=3, threshold=1.1)
            >>> metric.update([0, 1], accuracy=[0.5, 1.0], perplexity=[1.5, 1.05])
            >>> metric.best_masked_accuracy()
            tensor([0.5000, 0.0000,    nan])
        """
        with self.sync_context(should_sync=self.sync_on_compute):
            return torch.where(self.latest >= 0, self.running_max, torch.full_like(self.running_max, float("nan")))

    def summary(self) -> dict[str, Tensor]:
        """Dataset-level values over the observed examples, from each example's latest observation.

        Keys: ``pre_memorization_accuracy``, ``train_accuracy`` (mean current accuracy),
        ``memorized_fraction`` (share whose current perplexity is ``<= threshold``) and
        ``num_observed``.
        """
        with self.sync_context(should_sync=self.sync_on_compute):
            return self._summary_from_state()

    # ------------------------------------------------------------------ private

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        # torchmetrics counts updates to warn about compute-before-update and caches compute();
        # a restored state is as good as updated, and any cached value is stale
        self._update_count = max(self._update_count, int((self.latest >= 0).any()))
        self._computed = None

    def _per_example_from_state(self) -> Tensor:
        _, acc, _ = _unpack(self.latest)
        premem = torch.minimum(self.running_max, acc)
        return torch.where(self.latest >= 0, premem, torch.full_like(premem, float("nan")))

    def _summary_from_state(self) -> dict[str, Tensor]:
        observed = self.latest >= 0
        _, acc, memorized = _unpack(self.latest[observed])
        premem = torch.minimum(self.running_max[observed], acc)
        nan = torch.tensor(float("nan"), device=self.running_max.device)

        def mean(x: Tensor) -> Tensor:
            return x.double().mean().float() if x.numel() else nan

        return {
            "pre_memorization_accuracy": mean(premem),
            "train_accuracy": mean(acc),
            "memorized_fraction": mean(memorized.float()),
            "num_observed": observed.sum().float(),
        }

    def _check_ids(self, example_ids: Any) -> Tensor:
        ids = example_ids if isinstance(example_ids, Tensor) else torch.as_tensor(example_ids)
        if ids.numel() == 0:  # an empty batch, e.g. a rank with nothing to probe this round
            ids = ids.to(torch.int64)
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise TypeError(f"`example_ids` must be integers, got dtype {ids.dtype}.")
        if ids.ndim != 1:
            raise ValueError(f"`example_ids` must be 1-D [B], got shape {tuple(ids.shape)}.")
        bad = (ids < 0) | (ids >= self.num_examples)
        if bad.any():
            first = int(ids[bad][0])
            raise ValueError(
                f"`example_ids` must lie in [0, {self.num_examples}) (num_examples={self.num_examples}); "
                f"{int(bad.sum())} do not, the first is {first}."
            )
        return ids.to(device=self.latest.device, dtype=torch.int64)

    def _check_step(self, step: int | None, ids: Tensor) -> int:
        if step is None:
            return int(self.clock)
        if isinstance(step, Tensor) and step.numel() == 1:
            step = int(step.item())
        step = check_int(step, "step", minimum=0, maximum=_MAX_STEP)
        previous, _, _ = _unpack(self.latest[ids])
        stale = (self.latest[ids] >= 0) & (previous > step)
        if stale.any():
            example = int(ids[stale][0])
            raise ValueError(
                f"`step`={step} is earlier than example {example}'s previous observation at step "
                f"{int(previous[stale][0])}; observations must come in time order (pass the checkpoint's "
                "global step, or reset() the metric before replaying an older history)."
            )
        return step
