r"""``ReasoningDataModule``: question/solution reasoning data (GSM8K, MATH, your own) for Lightning.

Rows come from local JSONL / JSON / Parquet / CSV files, an in-memory ``datasets.Dataset``, a
list of dicts, or a dataset-hub name such as ``"openai/gsm8k"``. Each row becomes an example
``{"id", "question", "solution"}`` (the columns are named by ``fields``), is checked (non-empty
question and solution, a final answer ``answer_kind`` can read, at most ``max_length`` tokens),
and is tokenized once as ``prompt_template`` + ``target_template`` with the prompt masked out of
the labels (:func:`lightning_premem.data.batching.tokenize_example`).

Example ids: a row's id is its 0-based position among the rows of its source (file, dataset
split, list), or the value of the ``id`` column when ``fields`` maps one. Ids never change
afterwards: not when invalid rows are skipped, not when a validation split is carved out of the
training rows, not when ``max_train_examples`` / ``max_test_examples`` keep a subset. Ids are
unique within a split (the training and the test split both start at 0). Every batch carries
them as ``example_ids``; :meth:`ReasoningDataModule.probe_examples` hands the same ids to the
:class:`~lightning_premem.PreMemorizationCallback`.

See ``docs/data.md``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import lightning as L  # noqa: N812  (the library's own convention)
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch.utils.data import DataLoader, Sampler

from lightning_premem._checks import check_int
from lightning_premem.answers import extract_boxed, extract_gsm8k_answer
from lightning_premem.data.batching import FeatureDataset, collate, tokenize_example
from lightning_premem.data.sources import Source, load_hub, read_examples, resolve_source
from lightning_premem.tokenization import (
    DEFAULT_PROMPT_TEMPLATE,
    DEFAULT_TARGET_TEMPLATE,
    format_example,
    load_tokenizer,
    pad_token_id,
)

if TYPE_CHECKING:
    from datasets import Dataset  # type: ignore[import-untyped, unused-ignore]
    from transformers import PreTrainedTokenizerBase

__all__ = ["FIELD_LAYOUTS", "INVALID_REASONS", "SPLITS", "ReasoningDataModule"]

#: Column names of the built-in layouts: ``fields="gsm8k"`` and ``fields="math"``.
FIELD_LAYOUTS: dict[str, dict[str, str]] = {
    "gsm8k": {"question": "question", "solution": "answer"},
    "math": {"question": "problem", "solution": "solution"},
}
#: Why a row can be invalid, in the order the checks run.
INVALID_REASONS = ("missing_question", "missing_solution", "no_final_answer", "too_long")
#: The splits a :class:`ReasoningDataModule` knows.
SPLITS = ("train", "validation", "test")

_FIELD_KEYS = ("question", "solution", "id")
_FIRST_IDS = 5  # ids listed per reason in reports
_SALT = {"validation": 0x7A11, "train": 0x7EA1, "test": 0x7E57}






class ReasoningDataModule(L.LightningDataModule):
    r"""Question/solution reasoning data, tokenized for :class:`~lightning_premem.CausalLMModule`.

    Args:
        train: the training rows: a local ``.jsonl`` / ``.json`` / ``.parquet`` / ``.csv`` file, a
            ``datasets.Dataset``, a list of dicts, or a hub dataset name (``"owner/name"``, used when no
            such local file exists; its ``"train"`` split is read).
        validation: validation rows, as ``train``; when ``train`` is a hub name, also a split name of
            it (``"validation"``, ``"test[:200]"``). A hub name here reads its ``"validation"`` split.
        test: held-out rows, as ``validation`` (a hub name reads its ``"test"`` split). They make the
            test loader and the callback's ``premem/test_accuracy`` queries.
        hub_config: the hub dataset's configuration (``"main"`` for ``openai/gsm8k``); only with hub sources.
        fields: the columns holding the question and the solution: ``"gsm8k"`` (``question``,
            ``answer``), ``"math"`` (``problem``, ``solution``), or a mapping
            ``{"question": column, "solution": column, "id": column}`` (``"id"`` optional; its values must be
            unique ints >= 0).
        tokenizer: ``"char"`` for :func:`lightning_premem.tokenization.char_tokenizer`, another string for
            ``AutoTokenizer.from_pretrained`` (a local folder or hub name), or a tokenizer object.
        prompt_template: the prompt, formatted with ``{question}`` (also ``{solution}``, ``{id}``).
        target_template: the target trace the model learns, formatted likewise; must hold ``{solution}``.
        max_length: the longest prompt + target in tokens; longer rows are invalid (never truncated).
        batch_size: examples per batch, in every loader.
        num_workers: ``DataLoader`` worker processes.
        validation_size: carve a validation split out of the valid training rows: a count (int >= 1) or a
            fraction in ``(0, 1)``; ``0`` for none. Not together with ``validation``.
        max_train_examples: keep a seeded subset of this many training rows (after the validation carve-out).
        max_test_examples: keep a seeded subset of this many test rows.
        answer_kind: how a solution's final answer is read: ``"gsm8k"`` (``#### <number>``), ``"math"`` (the
            last ``\boxed{...}``), or ``None`` to skip the check; ``"auto"``: ``"math"`` with ``fields="math"``,
            else ``"gsm8k"``. Match the callback's ``answer_kind``.
        on_invalid: ``"skip"`` invalid rows with a warning, or ``"error"``: raise a ``ValueError``.
        seed: seeds the training shuffle, the validation carve-out and the subsets.

    Attributes:
        tokenizer: the tokenizer (the callback finds it here).
        pad_token_id: the padding id: the tokenizer's pad token, else its EOS token.
        train_rows / validation_rows / test_rows: the valid examples of each split after :meth:`setup`,
            ``{"id", "question", "solution"}`` dicts in source order (``[]`` for a split that does not exist).
        train_features / validation_features / test_features: their tokenized forms, aligned with the rows.
        invalid_rows: ``{split: {reason: [ids]}}`` for each loaded split, reasons from :data:`INVALID_REASONS`.

    Example:
        >>> rows = [
        ...     {"question": "What is 2+3?", "answer": "2+3=5\n#### 5"},
        ...     {"question": "What is 4+4?", "answer": "no final answer here"},
        ...     {"question": "What is 1+1?", "answer": "1+1=2\n#### 2"},
        ... ]
        >>> import warnings
        >>> dm = ReasoningDataModule(rows, batch_size=2)
        >>> with warnings.catch_warnings(record=True):
        ...     dm.setup("fit")
        >>> dm.invalid_rows["train"]["no_final_answer"]
        [1]
        >>> [example["id"] for example in dm.probe_examples("train")]
        [0, 2]
        >>> batch = next(iter(dm.train_dataloader()))
        >>> sorted(batch), sorted(batch["example_ids"].tolist())
        (['attention_mask', 'example_ids', 'input_ids', 'labels'], [0, 2])
        >>> labels = batch["labels"][batch["example_ids"].tolist().index(0)]
        >>> dm.tokenizer.decode(labels[labels != -100])  # the target trace of example 0; the prompt is masked
        ' 2+3=5\n#### 5\nDone.'
    """

    def __init__(
        self,
        train: str | Path | Dataset | Sequence[Mapping[str, Any]],
        *,
        validation: str | Path | Dataset | Sequence[Mapping[str, Any]] | None = None,
        test: str | Path | Dataset | Sequence[Mapping[str, Any]] | None = None,
        hub_config: str | None = None,
        fields: Literal["gsm8k", "math"] | Mapping[str, str] = "gsm8k",
        tokenizer: str | PreTrainedTokenizerBase = "char",
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        target_template: str = DEFAULT_TARGET_TEMPLATE,
        max_length: int = 512,
        batch_size: int = 8,
        num_workers: int = 0,
        validation_size: int | float = 0,
        max_train_examples: int | None = None,
        max_test_examples: int | None = None,
        answer_kind: Literal["auto", "gsm8k", "math"] | None = "auto",
        on_invalid: Literal["skip", "error"] = "skip",
        seed: int = 0,
    ) -> None:
        super().__init__()
        check_int(max_length, "max_length", minimum=2)
        check_int(batch_size, "batch_size", minimum=1)
        check_int(num_workers, "num_workers", minimum=0)
        check_int(seed, "seed")
        for name, limit in (("max_train_examples", max_train_examples), ("max_test_examples", max_test_examples)):
            if limit is not None:
                check_int(limit, name, minimum=1)
        if on_invalid not in ("skip", "error"):
            raise ValueError(f"`on_invalid` must be 'skip' or 'error', got {on_invalid!r}.")
        if answer_kind not in ("auto", "gsm8k", "math", None):
            raise ValueError(
                f"`answer_kind` must be 'auto', 'gsm8k', 'math' or None (no final-answer check), got {answer_kind!r}."
            )
        if answer_kind == "auto":
            answer_kind = "math" if fields == "math" else "gsm8k"
        if hub_config is not None and (not isinstance(hub_config, str) or not hub_config):
            raise ValueError(f"`hub_config` must be a non-empty string or None, got {hub_config!r}.")
        self.validation_size = _check_validation_size(validation_size)
        if self.validation_size and validation is not None:
            raise ValueError(
                "pass either `validation` (a validation source) or `validation_size` (carve one out of `train`), "
                "not both."
            )
        self.fields = _check_fields(fields)
        _check_templates(prompt_template, target_template)

        self._sources: dict[str, Source | None] = {"train": resolve_source(train, "train", None)}
        train_hub = self._sources["train"].hub_name if self._sources["train"] is not None else None
        self._sources["validation"] = resolve_source(validation, "validation", train_hub)
        self._sources["test"] = resolve_source(test, "test", train_hub)
        if hub_config is not None and not any(s is not None and s.kind == "hub" for s in self._sources.values()):
            raise ValueError(
                f"`hub_config`={hub_config!r} applies to hub datasets only, and no source is one; drop it or pass a "
                "hub name (such as 'openai/gsm8k') as `train`."
            )

        self.hub_config = hub_config
        self.tokenizer = load_tokenizer(tokenizer)
        self.pad_token_id = pad_token_id(self.tokenizer)
        self.prompt_template = prompt_template
        self.target_template = target_template
        self.max_length = max_length
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.max_train_examples = max_train_examples
        self.max_test_examples = max_test_examples
        self.answer_kind = answer_kind
        self.on_invalid = on_invalid
        self.seed = int(seed)

        plain = (str, Path, type(None))
        ignore = [
            name
            for name, value in (("train", train), ("validation", validation), ("test", test), ("tokenizer", tokenizer))
            if not isinstance(value, plain)
        ]
        self.save_hyperparameters(ignore=ignore)

        # built by setup()
        self.train_rows: list[dict[str, Any]] = []
        self.validation_rows: list[dict[str, Any]] = []
        self.test_rows: list[dict[str, Any]] = []
        self.train_features: list[dict[str, Any]] = []
        self.validation_features: list[dict[str, Any]] = []
        self.test_features: list[dict[str, Any]] = []
        self.invalid_rows: dict[str, dict[str, list[int]]] = {}
        self._built: set[str] = set()

    # ------------------------------------------------------------------ Lightning hooks

    def prepare_data(self) -> None:
        """Download the hub sources into the ``datasets`` cache (local sources need nothing)."""
        for source in self._sources.values():
            if source is not None and source.kind == "hub":
                load_hub(source, self.hub_config)

    def setup(self, stage: str | None = None) -> None:
        """Read, check and tokenize the splits ``stage`` needs (all for ``None``); each split is built once.

        ``"fit"`` builds train and validation, ``"validate"`` validation, ``"test"`` test. The test split is
        also built on demand by :meth:`probe_examples` (the callback asks for it during ``fit``).
        """
        needed = {"fit": ("train", "validation"), "validate": ("validation",), "test": ("test",), "predict": ()}
        for split in needed.get(stage, SPLITS) if stage is not None else SPLITS:
            self._ensure(split)

    def train_dataloader(self) -> DataLoader[dict[str, Any]]:
        """Return shuffled training batches (seeded; under DDP Lightning's distributed sampler takes over)."""
        self._ensure("train")
        return self.make_train_dataloader()

    def val_dataloader(self) -> DataLoader[dict[str, Any]] | list[DataLoader[dict[str, Any]]]:
        """Return validation batches in source order, or ``[]`` (no validation) without a validation split."""
        self._ensure("validation")
        if not self.validation_features:
            return []
        return self.make_dataloader(self.validation_features, shuffle=False)

    def test_dataloader(self) -> DataLoader[dict[str, Any]] | list[DataLoader[dict[str, Any]]]:
        """Return test batches in source order, or ``[]`` without a test split."""
        self._ensure("test")
        if not self.test_features:
            return []
        return self.make_dataloader(self.test_features, shuffle=False)

    # ------------------------------------------------------------------ public helpers

    def make_train_dataloader(self) -> DataLoader[dict[str, Any]]:
        """Build the training loader from :attr:`train_features`; override to change the sampling.

        A subclass that reweights or selects training examples overrides this (or passes its own
        ``sampler`` to :meth:`make_dataloader`); :meth:`train_dataloader` only makes sure the split is built.
        """
        return self.make_dataloader(self.train_features, shuffle=True)

    def make_dataloader(
        self,
        features: Sequence[dict[str, Any]],
        *,
        shuffle: bool = False,
        sampler: Sampler[int] | None = None,
        batch_size: int | None = None,
    ) -> DataLoader[dict[str, Any]]:
        """Return a ``DataLoader`` over tokenized examples, collated with right padding and ``example_ids``.

        Args:
            features: tokenized examples (e.g. :attr:`train_features`).
            shuffle: shuffle with a generator seeded by ``seed`` (each epoch draws a new order from it).
            sampler: a sampler instead of ``shuffle`` (e.g. a ``WeightedRandomSampler``).
            batch_size: default ``self.batch_size``.
        """
        if shuffle and sampler is not None:
            raise ValueError("pass either `shuffle=True` or a `sampler`, not both.")
        return DataLoader(
            FeatureDataset(features),
            batch_size=self.batch_size if batch_size is None else batch_size,
            shuffle=shuffle,
            sampler=sampler,
            generator=torch.Generator().manual_seed(self.seed) if shuffle else None,
            collate_fn=functools.partial(collate, pad_token_id=self.pad_token_id),
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def probe_examples(self, split: str) -> list[dict[str, Any]]:
        """Return a split's examples as ``{"id", "question", "solution"}`` dicts (fresh copies, source order).

        The :class:`~lightning_premem.PreMemorizationCallback` calls ``probe_examples("train")`` (all training
        examples; the callback's own ``max_examples`` picks its probe subset) and ``probe_examples("test")``
        (held-out queries for ``premem/test_accuracy``; ``[]`` without a test split).

        Args:
            split: ``"train"``, ``"validation"`` or ``"test"``.
        """
        if split not in SPLITS:
            raise ValueError(f"`split` must be one of {list(SPLITS)}, got {split!r}.")
        self._ensure(split)
        return [dict(row) for row in self._rows(split)]

    # ------------------------------------------------------------------ building

    def _rows(self, split: str) -> list[dict[str, Any]]:
        return {"train": self.train_rows, "validation": self.validation_rows, "test": self.test_rows}[split]

    def _ensure(self, split: str) -> None:
        if split in self._built:
            return
        if split == "train" or (split == "validation" and self.validation_size):
            self._build_train()
        elif split == "validation":
            self.validation_rows, self.validation_features = self._build_split("validation")
            self._built.add("validation")
        else:
            self.test_rows, self.test_features = self._build_split("test")
            if self.max_test_examples is not None:
                keep = _seeded_subset(len(self.test_rows), self.max_test_examples, self.seed ^ _SALT["test"])
                self.test_rows = [self.test_rows[i] for i in keep]
                self.test_features = [self.test_features[i] for i in keep]
            self._built.add("test")

    def _build_train(self) -> None:
        rows, features = self._build_split("train")
        if not rows:
            raise ValueError("the training source has no valid rows (see `.invalid_rows['train']`).")
        if self.validation_size:
            size = self.validation_size
            count = size if isinstance(size, int) else max(1, round(size * len(rows)))
            if count >= len(rows):
                raise ValueError(
                    f"`validation_size`={self.validation_size!r} would take {count} of the {len(rows)} valid training "
                    "rows, leaving none to train on; use a smaller count or fraction."
                )
            carved = set(_seeded_subset(len(rows), count, self.seed ^ _SALT["validation"]))
            self.validation_rows = [rows[i] for i in sorted(carved)]
            self.validation_features = [features[i] for i in sorted(carved)]
            rest = [i for i in range(len(rows)) if i not in carved]
            rows, features = [rows[i] for i in rest], [features[i] for i in rest]
            self._built.add("validation")
        if self.max_train_examples is not None:
            keep = _seeded_subset(len(rows), self.max_train_examples, self.seed ^ _SALT["train"])
            rows, features = [rows[i] for i in keep], [features[i] for i in keep]
        self.train_rows, self.train_features = rows, features
        self._built.add("train")

    def _build_split(self, split: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Read, check and tokenize one split's source; report (and skip, or raise on) invalid rows."""
        source = self._sources[split]
        if source is None:
            self.invalid_rows.pop(split, None)
            return [], []
        examples = read_examples(source, self.fields, self.hub_config)
        invalid: dict[str, list[int]] = {reason: [] for reason in INVALID_REASONS}
        rows: list[dict[str, Any]] = []
        features: list[dict[str, Any]] = []
        for example in examples:
            reason = self._invalid_reason(example)
            if reason is not None:
                invalid[reason].append(example["id"])
                continue
            try:
                feature = tokenize_example(self.tokenizer, example, self.prompt_template, self.target_template)
            except ValueError as err:
                raise ValueError(f"{source.label}, row id {example['id']}: {err}") from None
            if len(feature["input_ids"]) > self.max_length:
                invalid["too_long"].append(example["id"])
                continue
            rows.append(example)
            features.append(feature)
        self.invalid_rows[split] = invalid
        if any(invalid.values()):
            report = self._invalid_report(source, invalid, len(examples))
            if self.on_invalid == "error":
                raise ValueError(
                    f"{report} Fix or drop them, or pass on_invalid='skip' to skip them (see `.invalid_rows`)."
                )
            rank_zero_warn(f"{report} They are skipped (see `.invalid_rows[{split!r}]`).", category=UserWarning)
        return rows, features

    def _invalid_reason(self, example: Mapping[str, Any]) -> str | None:
        question, solution = example["question"], example["solution"]
        if not isinstance(question, str) or not question.strip():
            return "missing_question"
        if not isinstance(solution, str) or not solution.strip():
            return "missing_solution"
        if self.answer_kind == "gsm8k" and extract_gsm8k_answer(solution) is None:
            return "no_final_answer"
        if self.answer_kind == "math" and extract_boxed(solution) is None:
            return "no_final_answer"
        return None

    def _invalid_report(self, source: Source, invalid: Mapping[str, list[int]], total: int) -> str:
        hints = {
            "missing_question": "a missing, empty or non-text question",
            "missing_solution": "a missing, empty or non-text solution",
            "no_final_answer": (
                f"no final answer answer_kind={self.answer_kind!r} can read"
                + (" ('#### <number>')" if self.answer_kind == "gsm8k" else " (a '\\boxed{...}')")
            ),
            "too_long": f"more than max_length={self.max_length} prompt + target tokens",
        }
        parts = [
            f"{reason}: {len(ids)} ({hints[reason]}; first ids {ids[:_FIRST_IDS]})"
            for reason, ids in invalid.items()
            if ids
        ]
        count = sum(len(ids) for ids in invalid.values())
        return f"ReasoningDataModule: {count} of the {total} rows of {source.label} are invalid: {'; '.join(parts)}."


# ---------------------------------------------------------------------- argument checks




def _check_validation_size(value: Any) -> int | float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"`validation_size` must be an int (a count) or a float (a fraction), got {value!r}.")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"`validation_size` must be >= 0 (0: no validation carve-out), got {value!r}.")
        return value
    if not (math.isfinite(value) and 0 <= value < 1):
        raise ValueError(
            f"`validation_size` as a float is a fraction of the training rows in [0, 1), got {value!r}; "
            "pass an int for a count."
        )
    return value


def _check_fields(fields: Any) -> dict[str, str]:
    if isinstance(fields, str):
        if fields not in FIELD_LAYOUTS:
            raise ValueError(
                f"`fields` must be one of {sorted(FIELD_LAYOUTS)} or a mapping like "
                f"{{'question': 'problem', 'solution': 'solution', 'id': 'uid'}}, got {fields!r}."
            )
        return dict(FIELD_LAYOUTS[fields])
    if not isinstance(fields, Mapping):
        raise TypeError(f"`fields` must be 'gsm8k', 'math' or a mapping of column names, got {type(fields).__name__}.")
    unknown = sorted(str(key) for key in fields if key not in _FIELD_KEYS)
    if unknown:
        raise ValueError(f"`fields` keys must be among {list(_FIELD_KEYS)}; unknown: {unknown}.")
    for key in ("question", "solution"):
        if key not in fields:
            raise ValueError(f"`fields` must name the {key!r} column, e.g. {{'question': 'q', 'solution': 'a'}}.")
    for key, column in fields.items():
        if not isinstance(column, str) or not column:
            raise ValueError(f"`fields[{key!r}]` must be a non-empty column name, got {column!r}.")
    return {str(key): str(column) for key, column in fields.items()}


def _check_templates(prompt_template: Any, target_template: Any) -> None:
    for name, template, field in (
        ("prompt_template", prompt_template, "{question}"),
        ("target_template", target_template, "{solution}"),
    ):
        if not isinstance(template, str):
            raise TypeError(f"`{name}` must be a str, got {type(template).__name__}.")
        if field not in template:
            raise ValueError(f"`{name}` must contain {field}, got {template!r}.")
    try:
        format_example({"id": 0, "question": "q", "solution": "s"}, prompt_template, target_template)
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(
            f"the templates {prompt_template!r} / {target_template!r} do not format ({type(err).__name__}: {err}); "
            "they may use {question}, {solution} and {id}, and write literal braces as {{ and }}."
        ) from None




















def _seeded_subset(size: int, count: int, seed: int) -> list[int]:
    """Sorted positions of a seeded random subset of ``min(count, size)`` of ``range(size)``."""
    if count >= size:
        return list(range(size))
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(size, generator=generator)[:count].tolist())
