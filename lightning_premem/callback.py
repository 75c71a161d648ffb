"""``PreMemorizationCallback``: probe the training queries during training and log pre-memorization accuracy.

Every ``every_n_epochs`` training epochs the callback samples ``num_samples`` completions for each
probed training query, grades their final answers, computes the perplexity of each target trace,
updates a :class:`~lightning_premem.PreMemorizationAccuracy` and logs, under ``premem/``:

- ``pre_memorization_accuracy``, ``train_accuracy``, ``memorized_fraction``, ``target_perplexity``
  (mean over probed examples), ``unparseable_fraction``, ``num_probed``;
- ``pre_memorization_accuracy_stderr`` when a subset of the training set is probed;
- ``test_accuracy`` when held-out queries exist;
- ``robust_accuracy`` (mean accuracy under the prompt perturbations) when ``perturbations`` is set;
- to TensorBoard also a histogram of per-example pre-memorization accuracy and an image of the
  per-example dynamics.

Each round's per-example table goes to ``<log_dir>/premem/history.npz`` (all rounds; the layout
``premem replay`` reads) and ``<log_dir>/premem/round_<NNN>.csv``, written atomically by rank 0.
"""

from __future__ import annotations

import csv
import io
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L  # noqa: N812  (the library's own convention)
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from lightning_premem._batching import DEFAULT_PROMPT_TEMPLATE, DEFAULT_TARGET_TEMPLATE, format_example
from lightning_premem.answers import grade
from lightning_premem.functional import (
    AUTHORS_LOGLOG_THRESHOLDS,
    _check_threshold,
    loglog_threshold_to_perplexity,
    pre_memorization_accuracy,
)
from lightning_premem.metric import PreMemorizationAccuracy
from lightning_premem.probes import (
    DEFAULT_STOP,
    CompletionSampler,
    HFSampler,
    _check_int,
    _generation_pad_id,
    _max_positions,
    _mix64,
    encode_prompt_target,
    target_perplexity,
)
from lightning_premem.robustness import perturb_prompt, resolve_perturbations

__all__ = ["PreMemorizationCallback"]

HISTORY_FILE = "history.npz"
_STATE_VERSION = 1
_TEST_SEED_SALT = 0x5EED_7E57
_ROBUST_SEED_SALT = 0x0B57_0000


class PreMemorizationCallback(Callback):
    r"""Probe training queries at epoch ends and log pre-memorization accuracy (Kang et al., arXiv 2411.07681).

    Args:
        threshold: perplexity ``p``; a target trace with perplexity ``<= p`` counts as memorized.
            Default: the authors' GSM8K value ``exp(exp(-2.3)) ≈ 1.1055``.
        train_examples: training queries to probe, mappings with ``id`` (int >= 0, unique), ``question`` and
            ``solution``. Default: ``trainer.datamodule.probe_examples("train")``.
        test_examples: held-out queries for ``premem/test_accuracy``, same keys. Default:
            ``trainer.datamodule.probe_examples("test")`` when the datamodule offers it; none otherwise.
        every_n_epochs: probe at the end of every n-th training epoch.
        max_examples: probe a fixed, seeded subset of this many training examples (all when ``None``).
        max_test_examples: likewise for the held-out queries.
        num_samples: completions sampled per query (the paper: 5).
        temperature: sampling temperature (the paper: 0.8; 0 is greedy).
        top_p: nucleus sampling mass (the paper: 0.95).
        max_new_tokens: longest completion.
        stop: generation stops at this string (the paper's traces end in ``"\\nDone."``).
        answer_kind: how final answers are checked: ``"gsm8k"``, ``"math"`` or a callable
            ``(completion, reference) -> bool`` (see :func:`lightning_premem.answers.grade`).
        prompt_template: format of the prompt from an example's fields.
        target_template: format of the target trace from an example's fields.
        generation_batch_size: queries per generation batch (each expands to ``num_samples`` rows).
        max_batch_tokens: token budget of a perplexity batch (padded rows x longest sequence).
        sampler: another generation engine implementing
            :class:`~lightning_premem.probes.CompletionSampler`; replaces the Hugging Face sampler and its
            ``num_samples``/``temperature``/``top_p``/``max_new_tokens``/``stop`` settings.
        tokenizer: the tokenizer; default ``pl_module.tokenizer``, then ``trainer.datamodule.tokenizer``.
        model_attr: attribute of the LightningModule holding the Hugging Face causal LM; when absent
            the LightningModule itself is used if it has ``generate``.
        seed: seeds the probe subset and every example's samples (the same example gets the same random
            stream every round, on any number of ranks).
        history_dir: where the history files go (default ``<trainer.log_dir>/premem``).
        log_histogram: log the per-example histogram to TensorBoard.
        log_dynamics: log the per-example dynamics image to TensorBoard.
        progress: show a progress bar while probing (rank 0, when the trainer shows one).
        perturbations: robustness probe (off when ``None``): prompt suffixes inserted right after the last
            ``"Answer:"`` of each probed prompt; ``"default"`` means the authors' ``(" First", " We know that")``.
            Each round then also samples ``num_samples`` completions per probed query and perturbation, grades
            them, logs ``premem/robust_accuracy`` and writes ``robust_accuracy [T, P, N]`` and
            ``perturbations [P]`` to the history file. Costs ``P`` times the round's sampling.
    """

    def __init__(
        self,
        *,
        threshold: float | None = None,
        train_examples: Sequence[Mapping[str, Any]] | None = None,
        test_examples: Sequence[Mapping[str, Any]] | None = None,
        every_n_epochs: int = 1,
        max_examples: int | None = None,
        max_test_examples: int | None = None,
        num_samples: int = 5,
        temperature: float = 0.8,
        top_p: float = 0.95,
        max_new_tokens: int = 256,
        stop: str | None = DEFAULT_STOP,
        answer_kind: Literal["gsm8k", "math"] | Callable[[str, str], bool | None] = "gsm8k",
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        target_template: str = DEFAULT_TARGET_TEMPLATE,
        generation_batch_size: int = 16,
        max_batch_tokens: int = 8192,
        sampler: CompletionSampler | None = None,
        tokenizer: Any = None,
        model_attr: str = "model",
        seed: int = 0,
        history_dir: str | Path | None = None,
        log_histogram: bool = True,
        log_dynamics: bool = True,
        progress: bool = True,
        perturbations: Sequence[str] | Literal["default"] | None = None,
    ) -> None:
        super().__init__()
        self.threshold = _check_threshold(
            loglog_threshold_to_perplexity(AUTHORS_LOGLOG_THRESHOLDS["gsm8k"]) if threshold is None else threshold
        )
        for name, value in (
            ("every_n_epochs", every_n_epochs),
            ("num_samples", num_samples),
            ("max_new_tokens", max_new_tokens),
            ("generation_batch_size", generation_batch_size),
            ("max_batch_tokens", max_batch_tokens),
        ):
            _check_int(value, name, minimum=1)
        for name, optional in (("max_examples", max_examples), ("max_test_examples", max_test_examples)):
            if optional is not None:
                _check_int(optional, name, minimum=1)
        if not (isinstance(answer_kind, str) and answer_kind in ("gsm8k", "math")) and not callable(answer_kind):
            raise ValueError(f"`answer_kind` must be 'gsm8k', 'math' or a callable, got {answer_kind!r}.")
        if sampler is not None and not isinstance(sampler, CompletionSampler):
            raise TypeError(
                f"`sampler` must implement CompletionSampler (`num_samples` and `sample(prompts, seeds)`), "
                f"got {type(sampler).__name__}."
            )
        for name, template, field in (
            ("prompt_template", prompt_template, "{question}"),
            ("target_template", target_template, "{solution}"),
        ):
            if field not in template:
                raise ValueError(f"`{name}` must contain {field}, got {template!r}.")
        self.every_n_epochs = every_n_epochs
        self.max_examples = max_examples
        self.max_test_examples = max_test_examples
        self.answer_kind = answer_kind
        self.prompt_template = prompt_template
        self.target_template = target_template
        self.max_batch_tokens = max_batch_tokens
        self.model_attr = model_attr
        self.seed = int(seed)
        self.history_dir = None if history_dir is None else Path(history_dir)
        self.log_histogram = log_histogram
        self.log_dynamics = log_dynamics
        self.progress = progress
        self.perturbations = resolve_perturbations(perturbations)
        if self.perturbations:
            perturb_prompt(prompt_template, self.perturbations[0])  # the template must hold "Answer:"
        self._robust_probes: list[_ProbeSet] = []
        self._train_examples = None if train_examples is None else list(train_examples)
        self._test_examples = None if test_examples is None else list(test_examples)
        self.num_samples = num_samples
        self.temperature = temperature
        self.top_p = top_p
        self.max_new_tokens = max_new_tokens
        self.stop = stop
        self.generation_batch_size = generation_batch_size
        self._user_sampler = sampler
        self._tokenizer = tokenizer
        # built in setup()
        self._sampler: CompletionSampler | None = None
        self._probe: _ProbeSet | None = None
        self._test: _ProbeSet | None = None
        self._num_train_examples = 0
        self._pad_token_id = 0
        self._metric: PreMemorizationAccuracy | None = None
        # the whole history, saved in checkpoints
        self._rounds: list[dict[str, Any]] = []
        self._pending_state: dict[str, Any] | None = None

    # ------------------------------------------------------------------ Lightning hooks

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(threshold=self.threshold, max_examples=self.max_examples, seed=self.seed)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model = self._find_model(pl_module)
        tokenizer = self._find_tokenizer(trainer, pl_module)
        self._pad_token_id = _generation_pad_id(tokenizer)
        train = self._examples(trainer, "train", self._train_examples)
        if not train:
            raise ValueError(
                "no training examples to probe: pass train_examples=[{'id', 'question', 'solution'}, ...] to "
                "PreMemorizationCallback, or use a datamodule with a probe_examples(split) method."
            )
        self._num_train_examples = len(train)
        test = self._examples(trainer, "test", self._test_examples)
        max_positions = _max_positions(model)
        self._probe = self._build_probe_set(tokenizer, train, self.max_examples, "train", max_positions)
        self._test = (
            self._build_probe_set(tokenizer, test, self.max_test_examples, "test", max_positions) if test else None
        )
        if self._user_sampler is not None:
            self._sampler = self._user_sampler
        else:
            if not callable(getattr(model, "generate", None)):
                raise TypeError(
                    f"the model ({type(model).__name__}) has no `generate`; use a Hugging Face causal LM or pass "
                    "sampler= (a CompletionSampler) to PreMemorizationCallback."
                )
            self._sampler = HFSampler(
                model,
                tokenizer,
                num_samples=self.num_samples,
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=self.max_new_tokens,
                stop=self.stop,
                batch_size=self.generation_batch_size,
            )
        probe = self._probe
        self._robust_probes = [
            _ProbeSet(
                ids=probe.ids,
                prompts=[perturb_prompt(prompt, suffix) for prompt in probe.prompts],
                solutions=probe.solutions,
                pairs=probe.pairs,
            )
            for suffix in self.perturbations
        ]
        self._metric = PreMemorizationAccuracy(len(self._probe.ids), self.threshold, sync_on_compute=False)
        if self._pending_state is not None:
            self._restore(self._pending_state)

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        if self._probe is None or self._metric is None or self._sampler is None:
            raise RuntimeError("PreMemorizationCallback.setup() did not run; it is set up by Trainer.fit().")
        if self._rounds and self._rounds[-1]["step"] == trainer.global_step:
            return  # this step was probed already (e.g. a resumed run re-entering the same epoch end)
        started = time.perf_counter()
        record = self._probe_round(trainer, pl_module)
        self._rounds.append(record)
        self._observe(len(self._rounds) - 1, record)
        self._push_scores(trainer, record)
        scalars = self._scalars(record)
        # identical on every rank (the round was gathered); sync_dist keeps Lightning's DDP bookkeeping exact
        pl_module.log_dict({f"premem/{k}": v for k, v in scalars.items()}, on_step=False, on_epoch=True, sync_dist=True)
        folder = (
            self.history_dir or Path(trainer.log_dir or trainer.default_root_dir) / "premem"
        )  # all ranks: broadcast
        if trainer.is_global_zero:
            self._log_tensorboard(trainer)
            self._write_history(folder)
        trainer.strategy.barrier("premem_round_written")
        rank_zero_info(
            f"[premem] epoch {trainer.current_epoch}: pre-memorization accuracy "
            f"{scalars['pre_memorization_accuracy']:.4f}, train accuracy {scalars['train_accuracy']:.4f}"
            + (f", test accuracy {scalars['test_accuracy']:.4f}" if "test_accuracy" in scalars else "")
            + f" ({time.perf_counter() - started:.1f} s)"
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {
            "version": _STATE_VERSION,
            "probe_ids": None if self._probe is None else list(self._probe.ids),
            "rounds": [dict(r) for r in self._rounds],
        }

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._probe is None:
            self._pending_state = state_dict  # restored at setup()
        else:
            self._restore(state_dict)

    # ------------------------------------------------------------------ public read access

    @property
    def metric(self) -> PreMemorizationAccuracy | None:
        """The metric holding the per-example state (``None`` before ``setup``); index = position in ``probed_ids``."""
        return self._metric

    @property
    def probed_ids(self) -> list[int]:
        """The example ids probed each round, in metric order (empty before ``setup``)."""
        return [] if self._probe is None else list(self._probe.ids)

    @property
    def history(self) -> list[dict[str, Any]]:
        """One record per probe round, oldest first.

        Keys: ``epoch``, ``step``, ``num_samples``, per-example ``accuracy``, ``perplexity``, ``num_correct``,
        ``num_unparseable`` (tensors in ``probed_ids`` order) and ``test_accuracy`` (``None`` without held-out
        queries).
        """
        return list(self._rounds)

    # ------------------------------------------------------------------ the probe round

    def _probe_round(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if self._probe is None or self._sampler is None:
            raise RuntimeError("setup() did not run")
        model = self._find_model(pl_module)
        world, rank = trainer.world_size, trainer.global_rank
        num_samples = int(self._sampler.num_samples)
        mine = list(range(rank, len(self._probe.ids), world))
        test_mine = [] if self._test is None else list(range(rank, len(self._test.ids), world))
        total_work = (2 + len(self._robust_probes)) * len(mine) + len(test_mine)
        bar = _progress_bar(
            self.progress and trainer.is_global_zero and trainer.progress_bar_callback is not None,
            total_work,
            f"premem probe (epoch {trainer.current_epoch})",
        )
        was_training = model.training
        try:
            correct, unparseable = self._sample_and_grade(self._probe, mine, 0, bar)
            perplexity = target_perplexity(
                model,
                [self._probe.pairs[i] for i in mine],
                pad_token_id=self._pad_token_id,
                max_batch_tokens=self.max_batch_tokens,
                progress=bar.update,
            )
            if self._test is not None:
                test_correct, _ = self._sample_and_grade(self._test, test_mine, _TEST_SEED_SALT, bar)
            robust_correct = [
                self._sample_and_grade(perturbed, mine, _ROBUST_SEED_SALT + index, bar)[0]
                for index, perturbed in enumerate(self._robust_probes)
            ]
        finally:
            model.train(was_training)
            bar.close()

        def gather(local: Tensor, positions: list[int], size: int) -> Tensor:
            full = torch.zeros(size, dtype=torch.float64, device=pl_module.device)
            full[positions] = local.to(device=full.device, dtype=torch.float64)
            reduced: Tensor = trainer.strategy.reduce(full, reduce_op="sum")
            return reduced.cpu()

        size = len(self._probe.ids)
        num_correct = gather(correct, mine, size).round().to(torch.int32)
        record: dict[str, Any] = {
            "epoch": int(trainer.current_epoch),
            "step": int(trainer.global_step),
            "num_samples": num_samples,
            "num_correct": num_correct,
            "num_unparseable": gather(unparseable, mine, size).round().to(torch.int32),
            "accuracy": (num_correct.double() / num_samples).float(),
            "perplexity": gather(perplexity, mine, size).float(),
            "test_accuracy": None,
        }
        if robust_correct:
            record["robust_accuracy"] = (
                torch.stack([gather(c, mine, size) for c in robust_correct]).round() / num_samples
            ).float()
        if self._test is not None:
            test_total = gather(test_correct, test_mine, len(self._test.ids)).sum()
            record["test_accuracy"] = float(test_total) / (num_samples * len(self._test.ids))
        return record

    def _sample_and_grade(self, probe: _ProbeSet, positions: list[int], salt: int, bar: Any) -> tuple[Tensor, Tensor]:
        if self._sampler is None:
            raise RuntimeError("setup() did not run")
        prompts = [probe.prompts[i] for i in positions]
        seeds = [_example_seed(self.seed ^ salt, probe.ids[i]) for i in positions]
        if isinstance(self._sampler, HFSampler):
            completions = self._sampler.sample(prompts, seeds, progress=bar.update)
        else:
            completions = self._sampler.sample(prompts, seeds)
            bar.update(len(prompts))
        if len(completions) != len(prompts):
            raise ValueError(
                f"the sampler returned {len(completions)} lists of completions for {len(prompts)} prompts."
            )
        correct = torch.zeros(len(positions))
        unparseable = torch.zeros(len(positions))
        for row, (samples, i) in enumerate(zip(completions, positions, strict=True)):
            for completion in samples:
                verdict = grade(completion, probe.solutions[i], self.answer_kind)
                correct[row] += verdict == "correct"
                unparseable[row] += verdict == "unparseable"
        return correct, unparseable

    # ------------------------------------------------------------------ logging and files

    def _scalars(self, record: dict[str, Any]) -> dict[str, float]:
        if self._metric is None or self._probe is None:
            raise RuntimeError("setup() did not run")
        summary = {k: float(v) for k, v in self._metric.summary().items()}
        probed = len(self._probe.ids)
        scalars = {
            "pre_memorization_accuracy": summary["pre_memorization_accuracy"],
            "train_accuracy": summary["train_accuracy"],
            "memorized_fraction": summary["memorized_fraction"],
            "target_perplexity": float(record["perplexity"].double().mean()),
            "unparseable_fraction": float(record["num_unparseable"].double().sum() / (probed * record["num_samples"])),
            "num_probed": float(probed),
        }
        if probed < self._num_train_examples:
            scalars["pre_memorization_accuracy_stderr"] = _subset_stderr(
                self._metric.per_example(), self._num_train_examples
            )
        if record["test_accuracy"] is not None:
            scalars["test_accuracy"] = float(record["test_accuracy"])
        if record.get("robust_accuracy") is not None:
            scalars["robust_accuracy"] = float(record["robust_accuracy"].double().mean())
        return scalars

    def _history_arrays(self) -> dict[str, Tensor]:
        accuracy = torch.stack([r["accuracy"] for r in self._rounds])
        perplexity = torch.stack([r["perplexity"] for r in self._rounds])
        return {
            "accuracy": accuracy,
            "perplexity": perplexity,
            "pre_memorization_accuracy": pre_memorization_accuracy(accuracy, perplexity, self.threshold),
        }

    def _log_tensorboard(self, trainer: L.Trainer) -> None:
        boards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not boards or not (self.log_histogram or self.log_dynamics):
            return
        arrays = self._history_arrays()
        for board in boards:
            writer = board.experiment
            if self.log_histogram:
                writer.add_histogram(
                    "premem/per_example_pre_memorization_accuracy",
                    arrays["pre_memorization_accuracy"][-1],
                    trainer.global_step,
                )
            if self.log_dynamics:
                image = _dynamics_image(arrays["accuracy"], arrays["perplexity"], self.threshold)
                writer.add_image("premem/per_example_dynamics", image, trainer.global_step, dataformats="CHW")

    def _write_history(self, folder: Path) -> None:
        if self._probe is None:
            raise RuntimeError("setup() did not run")
        folder.mkdir(parents=True, exist_ok=True)
        arrays = self._history_arrays()
        memorized = arrays["perplexity"] <= self.threshold
        columns: dict[str, np.ndarray] = {
            "steps": np.array([r["step"] for r in self._rounds], dtype=np.int64),
            "epochs": np.array([r["epoch"] for r in self._rounds], dtype=np.int64),
            "train_accuracy": arrays["accuracy"].numpy(),
            "train_perplexity": arrays["perplexity"].numpy(),
            "pre_memorization_accuracy": arrays["pre_memorization_accuracy"].numpy(),
            "memorized": memorized.numpy(),
            "num_correct": torch.stack([r["num_correct"] for r in self._rounds]).numpy(),
            "num_unparseable": torch.stack([r["num_unparseable"] for r in self._rounds]).numpy(),
            "num_samples": np.array([r["num_samples"] for r in self._rounds], dtype=np.int64),
            "example_ids": np.array(self._probe.ids, dtype=np.int64),
            "threshold": np.array(self.threshold),
            "run_name": np.array(_run_name(folder)),
        }
        if all(r["test_accuracy"] is not None for r in self._rounds):
            columns["test_accuracy"] = np.array([r["test_accuracy"] for r in self._rounds], dtype=np.float64)
        if self.perturbations and all(r.get("robust_accuracy") is not None for r in self._rounds):
            columns["robust_accuracy"] = torch.stack([r["robust_accuracy"] for r in self._rounds]).numpy()
            columns["perturbations"] = np.array(list(self.perturbations))
        buffer = io.BytesIO()
        np.savez_compressed(buffer, **columns)  # type: ignore[arg-type]  # numpy's stub types **kwds loosely
        _atomic_write(folder / HISTORY_FILE, buffer.getvalue())

        last = len(self._rounds) - 1
        text = io.StringIO()
        table = csv.writer(text, lineterminator="\n")
        table.writerow(
            [
                "example_id",
                "epoch",
                "step",
                "accuracy",
                "num_samples",
                "num_correct",
                "num_unparseable",
                "perplexity",
                "memorized",
                "pre_memorization_accuracy",
            ]
        )
        record = self._rounds[-1]
        for i, example_id in enumerate(self._probe.ids):
            table.writerow(
                [
                    example_id,
                    record["epoch"],
                    record["step"],
                    f"{float(record['accuracy'][i]):.6g}",
                    record["num_samples"],
                    int(record["num_correct"][i]),
                    int(record["num_unparseable"][i]),
                    f"{float(record['perplexity'][i]):.6g}",
                    int(memorized[last, i]),
                    f"{float(arrays['pre_memorization_accuracy'][last, i]):.6g}",
                ]
            )
        _atomic_write(folder / f"round_{last:03d}.csv", text.getvalue().encode())

    # ------------------------------------------------------------------ setup helpers

    def _find_model(self, pl_module: L.LightningModule) -> Any:
        model = getattr(pl_module, self.model_attr, None)
        if isinstance(model, torch.nn.Module):
            return model
        if callable(getattr(pl_module, "generate", None)):
            return pl_module
        raise ValueError(
            f"PreMemorizationCallback cannot find the language model: it looks for `pl_module.{self.model_attr}` "
            f"(a Hugging Face causal LM; set model_attr= to another attribute name), or a LightningModule with "
            f"`generate`. {type(pl_module).__name__} has neither. CausalLMModule holds it as `.model`."
        )

    def _find_tokenizer(self, trainer: L.Trainer, pl_module: L.LightningModule) -> Any:
        datamodule = getattr(trainer, "datamodule", None)
        for tokenizer in (
            self._tokenizer,
            getattr(pl_module, "tokenizer", None),
            getattr(datamodule, "tokenizer", None),
        ):
            if tokenizer is not None:
                return tokenizer
        raise ValueError(
            "PreMemorizationCallback needs the tokenizer: pass tokenizer= to it, or set `tokenizer` on the "
            "LightningModule or the datamodule."
        )

    @staticmethod
    def _examples(trainer: L.Trainer, split: str, explicit: list[Mapping[str, Any]] | None) -> list[Mapping[str, Any]]:
        if explicit is not None:
            return explicit
        offer = getattr(getattr(trainer, "datamodule", None), "probe_examples", None)
        return list(offer(split)) if callable(offer) else []

    def _build_probe_set(
        self,
        tokenizer: Any,
        examples: list[Mapping[str, Any]],
        limit: int | None,
        split: str,
        max_positions: int | None,
    ) -> _ProbeSet:
        _check_examples(examples, split)
        ordered = sorted(examples, key=lambda e: int(e["id"]))
        if limit is not None and limit < len(ordered):
            generator = torch.Generator().manual_seed(self.seed)
            keep = sorted(torch.randperm(len(ordered), generator=generator)[:limit].tolist())
            ordered = [ordered[i] for i in keep]
        if not callable(self.answer_kind):
            _check_references(ordered, self.answer_kind, split)
        probe = _ProbeSet(ids=[], prompts=[], solutions=[], pairs=[])
        too_long = []
        for example in ordered:
            prompt, target = format_example(example, self.prompt_template, self.target_template)
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

    def _restore(self, state: dict[str, Any]) -> None:
        if self._probe is None or self._metric is None:
            raise RuntimeError("setup() did not run")
        self._pending_state = None
        saved_ids = state.get("probe_ids")
        if saved_ids is not None and list(saved_ids) != self._probe.ids:
            raise ValueError(
                "the checkpoint's PreMemorizationCallback probed other examples than this one is configured to "
                f"({len(saved_ids)} saved vs {len(self._probe.ids)} now): resume with the same training examples, "
                "max_examples and seed."
            )
        self._rounds = [dict(r) for r in state.get("rounds", [])]
        self._metric.reset()
        for index, record in enumerate(self._rounds):
            self._observe(index, record)

    def _observe(self, index: int, record: dict[str, Any]) -> None:
        if self._probe is None or self._metric is None:
            raise RuntimeError("setup() did not run")
        self._metric.update(torch.arange(len(self._probe.ids)), record["accuracy"], record["perplexity"], step=index)

    def _push_scores(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        """Hand the round's per-example scores to a datamodule that takes them (``update_premem_scores``)."""
        receiver = getattr(getattr(trainer, "datamodule", None), "update_premem_scores", None)
        if callable(receiver) and self._metric is not None:
            receiver(
                self.probed_ids,
                {
                    "pre_memorization_accuracy": self._metric.per_example(),
                    "accuracy": record["accuracy"],
                    "perplexity": record["perplexity"],
                },
            )


class _ProbeSet:
    """The prompts, reference solutions and encoded (prompt, target) ids of the probed examples."""

    def __init__(
        self, ids: list[int], prompts: list[str], solutions: list[str], pairs: list[tuple[list[int], list[int]]]
    ):
        self.ids, self.prompts, self.solutions, self.pairs = ids, prompts, solutions, pairs


# ---------------------------------------------------------------------- module helpers


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


def _example_seed(seed: int, example_id: int) -> int:
    """Mix ``(seed, example id)`` into a 63-bit seed: the same stream every round and on every rank."""
    return _mix64(_mix64(seed & ((1 << 64) - 1)) ^ example_id) >> 1


def _subset_stderr(per_example: Tensor, population: int) -> float:
    """Return the standard error of a mean over a simple random subset (finite-population corrected)."""
    values = per_example[~torch.isnan(per_example)].double()
    n = values.numel()
    if n < 2:
        return float("nan")
    correction = (population - n) / (population - 1) if population > 1 else 0.0
    return float(values.std(unbiased=True) / math.sqrt(n) * math.sqrt(max(correction, 0.0)))


def _dynamics_image(accuracy: Tensor, perplexity: Tensor, threshold: float, max_rows: int = 200) -> np.ndarray:
    """``[3, H, W]`` uint8: examples (rows, sorted by final accuracy) x probe rounds (columns), two panels.

    Left, accuracy (black 0 → green 1). Right, perplexity: memorized cells (``<= threshold``) red, others blue,
    brighter for higher perplexity (log scale up to 4x the threshold).
    """
    acc = accuracy.double().numpy().T  # [N, T]
    ppl = perplexity.double().numpy().T
    if acc.shape[0] > max_rows:
        rows = np.linspace(0, acc.shape[0] - 1, max_rows).round().astype(int)
        acc, ppl = acc[rows], ppl[rows]
    order = np.lexsort((ppl[:, -1], acc[:, -1]))
    acc, ppl = acc[order], ppl[order]
    cell_h, cell_w = (2 if acc.shape[0] > 50 else 6), 12
    n, t = acc.shape
    left = np.zeros((3, n, t))
    left[1] = acc
    right = np.zeros((3, n, t))
    memorized = ppl <= threshold
    level = np.clip(np.log(ppl / threshold) / np.log(4.0), 0, 1)
    right[0] = np.where(memorized, 0.9, 0.0)
    right[2] = np.where(memorized, 0.0, 0.35 + 0.65 * level)
    gap = np.ones((3, n, 1))
    panel = np.concatenate([left, gap, right], axis=2)
    image = np.repeat(np.repeat(panel, cell_h, axis=1), cell_w, axis=2)
    return np.asarray((image * 255).round(), dtype=np.uint8)


def _run_name(folder: Path) -> str:
    parent = folder.parent if folder.name == "premem" else folder
    return "/".join(parent.parts[-2:]) if len(parent.parts) >= 2 else parent.name


def _atomic_write(path: Path, data: bytes) -> None:
    descriptor, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _NullBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _progress_bar(enabled: bool, total: int, description: str) -> Any:
    if not enabled:
        return _NullBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=description, leave=False, dynamic_ncols=True)
