"""The contracts between the parts: what a generation engine and a datamodule offer the callbacks.

- :class:`CompletionSampler`: a generation engine. ``num_samples`` completions per prompt, seeded per
  example. :class:`~lightning_premem.probes.HFSampler` is the default; a vLLM engine with a per-request
  seed, or anything else with these members, plugs in through ``sampler=``.
- :class:`ProbeExampleSource`: a datamodule that hands the callbacks the examples to probe
  (``probe_examples(split)``); :class:`~lightning_premem.ReasoningDataModule` is one.
- :class:`ScoreReceiver`: a datamodule that takes each probe round's per-example scores
  (``update_premem_scores``); :class:`~lightning_premem.CuratedDataModule` is one.
- :class:`ScoreSender`: a callback that sends them; :class:`~lightning_premem.PreMemorizationCallback` is one.

:func:`sample_completions` is how the package calls a sampler: it passes the optional ``progress``
callback where the sampler's ``sample`` takes one and checks the shape of what comes back.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

__all__ = [
    "CompletionSampler",
    "ProbeExampleSource",
    "ScoreReceiver",
    "ScoreSender",
    "check_sampler",
    "sample_completions",
]


@runtime_checkable
class CompletionSampler(Protocol):
    """What the callbacks need to sample answers: ``num_samples`` completions per prompt.

    Implementations must be *per-example deterministic*: ``seeds[i]`` determines prompt ``i``'s
    completions completely, so the same ``(prompt, seed)`` gives the same completions whatever
    else is in the call, in whatever order, on whatever rank. :class:`~lightning_premem.probes.HFSampler`
    is the default; any object with these two members works (e.g. a vLLM engine with a per-request seed).

    ``sample`` may take a keyword argument ``progress``: a callable that it calls with the number of
    prompts done after each chunk of work (an increment, as ``tqdm.update`` takes). A sampler without it
    still works; its progress then advances once, when ``sample`` returns.

    Example:
        >>> class Echo:
        ...     num_samples = 2
        ...
        ...     def sample(self, prompts, seeds):
        ...         return [[f" {s}"] * self.num_samples for s in seeds]
        >>> isinstance(Echo(), CompletionSampler)
        True
    """

    num_samples: int

    def sample(self, prompts: Sequence[str], seeds: Sequence[int]) -> list[list[str]]:
        """Return, for each prompt, ``num_samples`` completions (text after the prompt, cut before the stop)."""
        ...


@runtime_checkable
class ProbeExampleSource(Protocol):
    """A datamodule that offers the examples of a split for probing.

    ``probe_examples("train")`` returns every training example as an ``{"id", "question", "solution"}``
    mapping (ids unique ints >= 0, the ids its batches carry); ``"validation"`` and ``"test"`` return the
    held-out queries (``[]`` when the split does not exist).
    """

    def probe_examples(self, split: str) -> list[dict[str, Any]]:
        """Return the examples of ``split`` (``"train"``, ``"validation"`` or ``"test"``)."""
        ...


@runtime_checkable
class ScoreReceiver(Protocol):
    """A datamodule that takes per-example scores after each probe round (e.g. to reweight its sampling).

    ``scores`` maps ``"pre_memorization_accuracy"``, ``"accuracy"`` and ``"perplexity"`` to ``[len(example_ids)]``
    tensors aligned with ``example_ids``.
    """

    def update_premem_scores(self, example_ids: Sequence[int], scores: Mapping[str, Tensor]) -> None:
        """Take the latest scores of the probed training examples."""
        ...


@runtime_checkable
class ScoreSender(Protocol):
    """A callback that hands a :class:`ScoreReceiver` datamodule each probe round's scores.

    A receiving datamodule checks at ``setup`` that the Trainer has one (``sends_premem_scores`` is true).
    """

    sends_premem_scores: bool


def check_sampler(sampler: Any) -> CompletionSampler:
    """Return ``sampler`` if it implements :class:`CompletionSampler`; raise ``TypeError`` otherwise."""
    if not isinstance(sampler, CompletionSampler):
        raise TypeError(
            f"`sampler` must implement CompletionSampler (`num_samples` and `sample(prompts, seeds)`), "
            f"got {type(sampler).__name__}."
        )
    return sampler


def sample_completions(
    sampler: CompletionSampler,
    prompts: Sequence[str],
    seeds: Sequence[int],
    progress: Callable[[int], None] | None = None,
) -> list[list[str]]:
    """Call ``sampler.sample``, with ``progress`` where it takes one; check one non-empty list per prompt.

    Example:
        >>> class Echo:
        ...     num_samples = 1
        ...     def sample(self, prompts, seeds):
        ...         return [[p[::-1]] for p in prompts]
        >>> done = []
        >>> sample_completions(Echo(), ["ab", "cd"], [0, 1], progress=done.append), done
        ([['ba'], ['dc']], [2])
    """
    if progress is not None and _takes_progress(sampler):
        completions = sampler.sample(prompts, seeds, progress=progress)  # type: ignore[call-arg]
    else:
        completions = sampler.sample(prompts, seeds)
        if progress is not None:
            progress(len(prompts))
    if len(completions) != len(prompts):
        raise ValueError(f"the sampler returned {len(completions)} lists of completions for {len(prompts)} prompts.")
    for index, samples in enumerate(completions):
        if not samples:
            raise ValueError(f"the sampler returned no completions for prompt {index}.")
    return completions


def _takes_progress(sampler: Any) -> bool:
    try:
        parameters = inspect.signature(sampler.sample).parameters
    except (TypeError, ValueError):
        return False
    return "progress" in parameters or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
