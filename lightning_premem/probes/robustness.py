"""Robustness probe: accuracy on training queries under small prompt perturbations.

Kang et al. (arXiv 2411.07681) find that training examples with low pre-memorization accuracy
are the ones whose correct answers break under tiny changes of the prompt: appending
``" First"`` or ``" We know that"`` after ``"Answer:"``. This module samples completions of such
perturbed prompts and grades them, per example and perturbation. The callback runs it in its
probe rounds when ``PreMemorizationCallback(perturbations=...)`` is set; ``premem report``
relates the accuracy drop to pre-memorization accuracy (see ``docs/analysis.md``).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor

from lightning_premem.answers import grade
from lightning_premem.probes.seeds import STREAMS, example_seed
from lightning_premem.protocols import CompletionSampler, check_sampler, sample_completions
from lightning_premem.tokenization import DEFAULT_PROMPT_TEMPLATE

__all__ = [
    "DEFAULT_PERTURBATIONS",
    "perturb_prompt",
    "perturbation_seed",
    "resolve_perturbations",
    "robustness_accuracy",
]

#: The authors' perturbations: suffixes inserted right after ``"Answer:"``.
DEFAULT_PERTURBATIONS: tuple[str, ...] = (" First", " We know that")

#: Where a perturbation goes: right after the last occurrence of this text in the prompt.
ANCHOR = "Answer:"


def perturb_prompt(prompt: str, suffix: str, anchor: str = ANCHOR) -> str:
    r"""Insert ``suffix`` right after the last ``anchor`` in ``prompt``.

    Example:
        >>> perturb_prompt("What is 2+3?\nAnswer:", " First")
        'What is 2+3?\nAnswer: First'
    """
    if not isinstance(prompt, str) or not isinstance(suffix, str):
        raise TypeError(
            f"`prompt` and `suffix` must be strings, got {type(prompt).__name__} and {type(suffix).__name__}."
        )
    at = prompt.rfind(anchor)
    if at < 0:
        raise ValueError(
            f"the prompt {prompt[:60]!r} has no {anchor!r} to insert the perturbation after; use a prompt template "
            f"that contains {anchor!r} (the default is {DEFAULT_PROMPT_TEMPLATE!r})."
        )
    end = at + len(anchor)
    return prompt[:end] + suffix + prompt[end:]


def resolve_perturbations(perturbations: Sequence[str] | Literal["default"] | None) -> tuple[str, ...]:
    """Validate a perturbation setting: ``None`` (off) -> ``()``, ``"default"`` -> :data:`DEFAULT_PERTURBATIONS`.

    Example:
        >>> resolve_perturbations("default")
        (' First', ' We know that')
        >>> resolve_perturbations([" Let's see"])
        (" Let's see",)
    """
    if perturbations is None:
        return ()
    if isinstance(perturbations, str):
        if perturbations == "default":
            return DEFAULT_PERTURBATIONS
        raise ValueError(
            f"`perturbations` must be None, 'default' or a sequence of prompt suffixes such as [' First'], got "
            f"{perturbations!r} (wrap a single suffix in a list)."
        )
    resolved = tuple(perturbations)
    if not resolved or not all(isinstance(p, str) and p for p in resolved):
        raise ValueError(f"`perturbations` must hold at least one non-empty string, got {list(resolved)!r}.")
    if len(set(resolved)) != len(resolved):
        raise ValueError(f"`perturbations` must be distinct, got {list(resolved)!r}.")
    return resolved


def perturbation_seed(seed: int, index: int, example_id: int) -> int:
    """Seed of an example's completions under perturbation ``index``: the callback's robustness stream.

    :func:`robustness_accuracy` and ``PreMemorizationCallback(perturbations=...)`` use it alike, so with the
    same seed they draw the same completions.
    """
    return example_seed(seed, example_id, STREAMS["robust"] + index)


def robustness_accuracy(
    sampler: CompletionSampler,
    examples: Sequence[Mapping[str, Any]],
    perturbations: Sequence[str] | Literal["default"] = "default",
    *,
    prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
    answer_kind: Literal["gsm8k", "math"] | Callable[[str, str], bool | None] = "gsm8k",
    seed: int = 0,
) -> Tensor:
    """Per-example accuracy of sampled answers to perturbed prompts.

    For each perturbation (a suffix inserted right after the last ``"Answer:"`` of
    ``prompt_template.format(**example)``) and each example, ``sampler.num_samples`` completions are
    sampled (seeded per example, perturbation and ``seed``: :func:`perturbation_seed`, the streams of the
    callback's robustness probe, so the same seed gives the callback's samples) and graded against the example's
    ``solution`` with :func:`lightning_premem.answers.grade`.

    Args:
        sampler: a :class:`~lightning_premem.probes.CompletionSampler` (e.g. an ``HFSampler``).
        examples: mappings with ``id`` (int), ``question`` and ``solution``.
        perturbations: prompt suffixes, or ``"default"`` for :data:`DEFAULT_PERTURBATIONS`.
        prompt_template: the clean prompt's format.
        answer_kind: how answers are checked (see :func:`~lightning_premem.answers.grade`).
        seed: seeds the samples.

    Returns:
        ``[P, N]`` float32 tensor: fraction of correct completions per perturbation and example.

    Example:
        >>> class Says42:
        ...     num_samples = 2
        ...     def sample(self, prompts, seeds):
        ...         return [[" #### 42", " #### 7"] if p.endswith("First") else [" #### 42"] * 2 for p in prompts]
        >>> rows = [{"id": 0, "question": "q?", "solution": "#### 42"}]
        >>> robustness_accuracy(Says42(), rows, [" First", " So"])
        tensor([[0.5000],
                [1.0000]])
    """
    suffixes = resolve_perturbations(perturbations)
    check_sampler(sampler)
    rows = list(examples)
    ids = [int(row["id"]) for row in rows]
    clean = [prompt_template.format(**row) for row in rows]
    out = torch.zeros(len(suffixes), len(rows), dtype=torch.float32)
    for index, suffix in enumerate(suffixes):
        prompts = [perturb_prompt(prompt, suffix) for prompt in clean]
        seeds = [perturbation_seed(seed, index, example_id) for example_id in ids]
        completions = sample_completions(sampler, prompts, seeds)
        for column, (samples, row) in enumerate(zip(completions, rows, strict=True)):
            correct = sum(grade(text, str(row["solution"]), answer_kind) == "correct" for text in samples)
            out[index, column] = correct / len(samples)
    return out
