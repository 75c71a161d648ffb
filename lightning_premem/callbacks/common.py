"""What the two callbacks share: finding the model and tokenizer, the probe sets, the sampling settings.

Both :class:`~lightning_premem.PreMemorizationCallback` and
:class:`~lightning_premem.callbacks.predictors.BaselinePredictorsCallback` find the model, the
tokenizer and the examples to probe the same way, and resolve their sampling options the same way,
so the two never disagree about which model they probe or how.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import lightning as L  # noqa: N812  (the library's own convention)
import numpy as np
import torch
from torch import Tensor

from lightning_premem.answers import grade
from lightning_premem.probes.sampling import SamplingConfig
from lightning_premem.protocols import CompletionSampler, ProbeExampleSource, check_sampler, sample_completions
from lightning_premem.tokenization import encode_prompt_target, format_example

__all__ = [
    "ProbeSet",
    "build_probe_set",
    "check_answer_kind",
    "datamodule_examples",
    "find_model",
    "find_tokenizer",
    "progress_bar",
    "resolve_sampling",
    "sample_and_grade",
    "subset_stderr",
]


def resolve_sampling(
    owner: str,
    sampling: SamplingConfig | None,
    sampler: CompletionSampler | None,
    options: Mapping[str, Any],
) -> SamplingConfig | None:
    """Return the sampling settings a callback samples with (``None`` when ``sampler`` samples).

    ``options`` are the callback's flat sampling arguments (``None`` where not given), named as
    :class:`SamplingConfig`'s fields. Passing ``sampling`` together with flat options, or either together
    with ``sampler``, is an error: the settings would be ambiguous or silently unused.
    """
    given = {name: value for name, value in options.items() if value is not None}
    if sampling is not None and not isinstance(sampling, SamplingConfig):
        raise TypeError(f"`sampling` must be a SamplingConfig, got {type(sampling).__name__}.")
    if sampler is not None:
        check_sampler(sampler)
        named = (["sampling"] if sampling is not None else []) + sorted(given)
        if named:
            raise ValueError(
                f"{owner}: `sampler=` samples with its own settings, so {', '.join(f'`{n}`' for n in named)} would "
                "be ignored; configure the sampler instead, or drop `sampler` to use the built-in HFSampler."
            )
        return None
    if sampling is not None and given:
        raise ValueError(
            f"{owner}: pass the sampling settings either as `sampling=SamplingConfig(...)` or as flat arguments "
            f"({', '.join(sorted(given))}), not both."
        )
    return sampling if sampling is not None else SamplingConfig(**given)


def check_answer_kind(answer_kind: Any) -> None:
    """Raise ``ValueError`` unless ``answer_kind`` is ``"gsm8k"``, ``"math"`` or a callable."""
    if not (isinstance(answer_kind, str) and answer_kind in ("gsm8k", "math")) and not callable(answer_kind):
        raise ValueError(f"`answer_kind` must be 'gsm8k', 'math' or a callable, got {answer_kind!r}.")


def find_model(pl_module: L.LightningModule, model_attr: str, owner: str) -> Any:
    """Return the language model: ``pl_module.<model_attr>``, else ``pl_module`` itself if it has ``generate``."""
    model = getattr(pl_module, model_attr, None)
    if isinstance(model, torch.nn.Module):
        return model
    if callable(getattr(pl_module, "generate", None)):
        return pl_module
    raise ValueError(
        f"{owner} cannot find the language model: it looks for `pl_module.{model_attr}` "
        f"(a Hugging Face causal LM; set model_attr= to another attribute name), or a LightningModule with "
        f"`generate`. {type(pl_module).__name__} has neither. CausalLMModule holds it as `.model`."
    )


def find_tokenizer(trainer: L.Trainer, pl_module: L.LightningModule, explicit: Any, owner: str) -> Any:
    """Return the tokenizer: ``explicit``, else ``pl_module.tokenizer``, else ``trainer.datamodule.tokenizer``."""
    datamodule = getattr(trainer, "datamodule", None)
    for tokenizer in (explicit, getattr(pl_module, "tokenizer", None), getattr(datamodule, "tokenizer", None)):
        if tokenizer is not None:
            return tokenizer
    raise ValueError(
        f"{owner} needs the tokenizer: pass tokenizer= to it, or set `tokenizer` on the LightningModule or the "
        "datamodule."
    )


def datamodule_examples(trainer: L.Trainer, split: str) -> list[Mapping[str, Any]]:
    """Return ``trainer.datamodule.probe_examples(split)`` (a :class:`ProbeExampleSource`), or ``[]`` without one."""
    datamodule = getattr(trainer, "datamodule", None)
    if isinstance(datamodule, ProbeExampleSource):
        return list(datamodule.probe_examples(split))
    return []


@dataclass(frozen=True)
class ProbeSet:
    """The probed examples of one split: ids, prompt texts, reference solutions, encoded (prompt, target) ids."""

    ids: list[int]
    prompts: list[str]
    solutions: list[str]
    pairs: list[tuple[list[int], list[int]]]

    def with_prompts(self, prompts: list[str]) -> ProbeSet:
        """Return the same examples with other prompts (e.g. perturbed ones)."""
        return replace(self, prompts=prompts)


def build_probe_set(
    tokenizer: Any,
    examples: Sequence[Mapping[str, Any]],
    *,
    split: str,
    limit: int | None,
    seed: int,
    prompt_template: str,
    target_template: str,
    answer_kind: Any,
    max_positions: int | None,
) -> ProbeSet:
    """Check, order (by id), subsample (``limit`` of them, seeded) and encode the examples of one split."""
    _check_examples(examples, split)
    ordered = sorted(examples, key=lambda e: int(e["id"]))
    if limit is not None and limit < len(ordered):
        generator = torch.Generator().manual_seed(seed)
        keep = sorted(torch.randperm(len(ordered), generator=generator)[:limit].tolist())
        ordered = [ordered[i] for i in keep]
    if not callable(answer_kind):
        _check_references(ordered, answer_kind, split)
    probe = ProbeSet(ids=[], prompts=[], solutions=[], pairs=[])
    too_long = []
    for example in ordered:
        prompt, target = format_example(example, prompt_template, target_template)
        pair = encode_prompt_target(tokenizer, prompt, target)
        if max_positions is not None and len(pair[0]) + len(pair[1]) > max_positions:
            too_long.append(int(example["id"]))
        probe.ids.append(int(example["id"]))
        probe.prompts.append(prompt)
        probe.solutions.append(str(example["solution"]))
        probe.pairs.append(pair)
    if too_long:
        raise ValueError(
            f"{len(too_long)} {split} example(s) are longer than the model's {max_positions} positions "
            f"(prompt + target tokens; first ids {too_long[:5]}): drop them or use a model with a longer context."
        )
    return probe


def _check_examples(examples: Sequence[Mapping[str, Any]], split: str) -> None:
    bad_fields, bad_ids, seen, duplicates = [], [], set(), []
    for position, example in enumerate(examples):
        if not isinstance(example, Mapping) or not all(
            isinstance(example.get(key), str) and example.get(key) for key in ("question", "solution")
        ):
            bad_fields.append(position)
            continue
        example_id = example.get("id")
        if isinstance(example_id, bool) or not isinstance(example_id, (int, np.integer)) or example_id < 0:
            bad_ids.append(position)
        elif int(example_id) in seen:
            duplicates.append(int(example_id))
        else:
            seen.add(int(example_id))
    if bad_fields:
        raise ValueError(
            f"{len(bad_fields)} {split} example(s) lack a non-empty string 'question' or 'solution' "
            f"(first at positions {bad_fields[:5]}); each example is a mapping with 'id', 'question', 'solution'."
        )
    if bad_ids:
        raise ValueError(
            f"{len(bad_ids)} {split} example(s) have no valid 'id' (an int >= 0; first at positions {bad_ids[:5]})."
        )
    if duplicates:
        raise ValueError(f"{split} example ids must be unique; repeated: {sorted(set(duplicates))[:5]}.")


def _check_references(examples: Iterable[Mapping[str, Any]], kind: str, split: str) -> None:
    bad = []
    for example in examples:
        try:
            grade(str(example["solution"]), str(example["solution"]), kind)  # type: ignore[arg-type]
        except ValueError:
            bad.append(int(example["id"]))
    if bad:
        raise ValueError(
            f"{len(bad)} {split} solution(s) have no final answer that answer_kind={kind!r} can read "
            f"(first ids {bad[:5]}); GSM8K solutions end in '#### <number>', MATH ones hold a \\boxed{{...}}."
        )


def sample_and_grade(
    sampler: CompletionSampler,
    probe: ProbeSet,
    positions: Sequence[int],
    seeds: Sequence[int],
    answer_kind: Any,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[Tensor, Tensor]:
    """Sample the examples at ``positions`` of ``probe`` and grade every completion.

    Returns ``[len(positions)]`` float tensors: the number of correct and of unparseable completions.
    """
    completions = sample_completions(sampler, [probe.prompts[i] for i in positions], seeds, progress)
    correct = torch.zeros(len(positions))
    unparseable = torch.zeros(len(positions))
    for row, (samples, i) in enumerate(zip(completions, positions, strict=True)):
        for completion in samples:
            verdict = grade(completion, probe.solutions[i], answer_kind)
            correct[row] += verdict == "correct"
            unparseable[row] += verdict == "unparseable"
    return correct, unparseable


def subset_stderr(per_example: Tensor, population: int) -> float:
    """Return the standard error of a mean over a simple random subset (finite-population corrected)."""
    values = per_example[~torch.isnan(per_example)].double()
    n = values.numel()
    if n < 2:
        return float("nan")
    correction = (population - n) / (population - 1) if population > 1 else 0.0
    return float(values.std(unbiased=True) / math.sqrt(n) * math.sqrt(max(correction, 0.0)))


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def progress_bar(enabled: bool, total: int, description: str) -> Any:
    """Return a tqdm bar (``update``, ``close``) when ``enabled``, else one that does nothing."""
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)

