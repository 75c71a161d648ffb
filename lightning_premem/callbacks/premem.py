"""``PreMemorizationCallback``: probe the training queries during training and log pre-memorization accuracy.

Every ``every_n_epochs`` training epochs the callback samples ``num_samples`` completions for each
probed training query, grades their final answers, computes the perplexity of each target trace,
updates a :class:`~lightning_premem.PreMemorizationAccuracy` and logs, under ``premem/``:

- ``pre_memorization_accuracy``, ``train_accuracy``, ``memorized_fraction``, ``target_perplexity``
  (mean over probed examples), ``unparseable_fraction``, ``num_probed``;
- ``pre_memorization_accuracy_stderr`` when a subset of the training set is probed;
- ``probe_time_fraction``: the round's probe time over the probe + training time since the previous round;
- ``test_accuracy`` when held-out queries exist, ``validation_accuracy`` with ``validation_examples``;
- ``robust_accuracy`` (mean accuracy under the prompt perturbations) when ``perturbations`` is set;
- to TensorBoard also a histogram of per-example pre-memorization accuracy and an image of the
  per-example dynamics.

Each round's per-example table goes to ``<log_dir>/premem/history.npz`` (all rounds; the layout
``premem replay`` reads) and ``<log_dir>/premem/round_<NNN>.csv``, written atomically by rank 0
(:func:`lightning_premem.history.write_history`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar, Literal

import lightning as L  # noqa: N812  (the library's own convention)
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from lightning_premem._checks import check_int, check_real, check_threshold
from lightning_premem.callbacks.common import (
    ProbeSet,
    build_probe_set,
    check_answer_kind,
    datamodule_examples,
    find_model,
    find_tokenizer,
    progress_bar,
    resolve_sampling,
    sample_and_grade,
    subset_stderr,
)
from lightning_premem.callbacks.images import dynamics_image
from lightning_premem.functional import (
    AUTHORS_LOGLOG_THRESHOLDS,
    loglog_threshold_to_perplexity,
    pre_memorization_accuracy,
)
from lightning_premem.history import write_history
from lightning_premem.metric import PreMemorizationAccuracy
from lightning_premem.probes.models import max_positions
from lightning_premem.probes.perplexity import target_perplexity
from lightning_premem.probes.robustness import perturb_prompt, perturbation_seed, resolve_perturbations
from lightning_premem.probes.sampling import HFSampler, SamplingConfig
from lightning_premem.probes.seeds import STREAMS, example_seed
from lightning_premem.protocols import CompletionSampler, ScoreReceiver
from lightning_premem.tokenization import DEFAULT_PROMPT_TEMPLATE, DEFAULT_TARGET_TEMPLATE, pad_token_id

__all__ = ["PreMemorizationCallback"]

_STATE_VERSION = 1
_OWNER = "PreMemorizationCallback"


class PreMemorizationCallback(Callback):
    r"""Probe training queries at epoch ends and log pre-memorization accuracy (Kang et al., arXiv 2411.07681).

    Args:
        threshold: perplexity ``p``; a target trace with perplexity ``<= p`` counts as memorized.
            Default: the authors' GSM8K value ``exp(exp(-2.3)) ≈ 1.1055``.
        train_examples: training queries to probe, mappings with ``id`` (int >= 0, unique), ``question`` and
            ``solution``. Default: ``trainer.datamodule.probe_examples("train")``
            (a :class:`~lightning_premem.protocols.ProbeExampleSource`).
        test_examples: held-out queries for ``premem/test_accuracy``, same keys. Default:
            ``trainer.datamodule.probe_examples("test")`` when the datamodule offers it; none otherwise.
        validation_examples: held-out queries for ``premem/validation_accuracy`` (written to the history as
            ``validation_accuracy``, which threshold calibration reads); none by default.
        every_n_epochs: probe at the end of every n-th training epoch.
        max_examples: probe a fixed, seeded subset of this many training examples (``None``: all of them).
            The default, 1,000, puts the standard error of the dataset-level value (logged as
            ``premem/pre_memorization_accuracy_stderr``) at about 0.01-0.015 (on the authors' GSM8K logs a
            subset of 1,000 questions per run keeps R² 0.92-0.94, against 0.939 with every question).
        max_test_examples: likewise for the held-out test and validation queries (default 1,000; ``None``: all).
        max_time_fraction: bound the probes' share of the training time (e.g. ``0.25``): a due round is
            skipped when the previous round's probe time would be more than this share of the probe + training
            time since the last round (never the first round, nor the last epoch's). ``None``: every due round
            runs. The share of each round is logged as ``premem/probe_time_fraction``.
        skip_decided: score perplexity first and sample only the examples whose samples can change their
            pre-memorization value: one memorized now (perplexity ``<= threshold``) whose best masked accuracy
            so far is 0 has value 0 whatever it samples, and is not sampled (the values are exactly the full
            draw's). ``premem/train_accuracy`` then covers the sampled examples only (the skipped ones are
            mostly examples the model reproduces), a skipped example's round accuracy is recorded as 0 with
            ``sampled`` False, and ``premem/samples_skipped_fraction`` says how many were skipped. Off by
            default: train accuracy over every probed example is a predictor the analysis compares against.
        sampling: the sampling settings as one :class:`~lightning_premem.probes.SamplingConfig` (default: the
            paper's, ``num_samples=5, temperature=0.8, top_p=0.95, max_new_tokens=256, stop="\nDone."``). Or
            give the most common ones as flat arguments instead:
        num_samples: completions sampled per query (``SamplingConfig.num_samples``).
        temperature: sampling temperature (``SamplingConfig.temperature``; 0 is greedy).
        top_p: nucleus sampling mass (``SamplingConfig.top_p``).
        max_new_tokens: longest completion (``SamplingConfig.max_new_tokens``).
        generation_batch_size: queries per generation batch (``SamplingConfig.batch_size``).
        answer_kind: how final answers are checked: ``"gsm8k"``, ``"math"`` or a callable
            ``(completion, reference) -> bool`` (see :func:`lightning_premem.answers.grade`).
        prompt_template: format of the prompt from an example's fields.
        target_template: format of the target trace from an example's fields.
        max_batch_tokens: token budget of a perplexity batch (padded rows x longest sequence).
        sampler: another generation engine implementing :class:`~lightning_premem.protocols.CompletionSampler`;
            replaces the Hugging Face sampler. It samples with its own settings: passing ``sampling`` or a flat
            sampling argument with it is an error.
        tokenizer: the tokenizer; default ``pl_module.tokenizer``, then ``trainer.datamodule.tokenizer``.
        model_attr: attribute of the LightningModule holding the Hugging Face causal LM; when absent
            the LightningModule itself is used if it has ``generate``.
        seed: seeds the probe subset and every example's samples (the same example gets the same random
            stream every round, on any number of ranks).
        history_dir: where the history files go (default ``<trainer.log_dir>/premem``).
        run_name: the run's name in the history file and reports (default: the last two parts of the log folder).
        log_histogram: log the per-example histogram to TensorBoard.
        log_dynamics: log the per-example dynamics image to TensorBoard.
        progress: show a progress bar while probing (rank 0, when the trainer shows one).
        perturbations: robustness probe (off when ``None``): prompt suffixes inserted right after the last
            ``"Answer:"`` of each probed prompt; ``"default"`` means the authors' ``(" First", " We know that")``.
            Each round then also samples ``num_samples`` completions per probed query and perturbation, grades
            them, logs ``premem/robust_accuracy`` and writes ``robust_accuracy [T, P, N]`` and
            ``perturbations [P]`` to the history file. Costs ``P`` times the round's sampling.
    """

    #: It hands each round's scores to a :class:`~lightning_premem.protocols.ScoreReceiver` datamodule.
    sends_premem_scores: ClassVar[bool] = True

    def __init__(
        self,
        *,
        threshold: float | None = None,
        train_examples: Sequence[Mapping[str, Any]] | None = None,
        test_examples: Sequence[Mapping[str, Any]] | None = None,
        validation_examples: Sequence[Mapping[str, Any]] | None = None,
        every_n_epochs: int = 1,
        max_examples: int | None = 1000,
        max_test_examples: int | None = 1000,
        max_time_fraction: float | None = None,
        skip_decided: bool = False,
        sampling: SamplingConfig | None = None,
        num_samples: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        generation_batch_size: int | None = None,
        answer_kind: Literal["gsm8k", "math"] | Callable[[str, str], bool | None] = "gsm8k",
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        target_template: str = DEFAULT_TARGET_TEMPLATE,
        max_batch_tokens: int = 8192,
        sampler: CompletionSampler | None = None,
        tokenizer: Any = None,
        model_attr: str = "model",
        seed: int = 0,
        history_dir: str | Path | None = None,
        run_name: str | None = None,
        log_histogram: bool = True,
        log_dynamics: bool = True,
        progress: bool = True,
        perturbations: Sequence[str] | Literal["default"] | None = None,
    ) -> None:
        super().__init__()
        self.threshold = check_threshold(
            loglog_threshold_to_perplexity(AUTHORS_LOGLOG_THRESHOLDS["gsm8k"]) if threshold is None else threshold
        )
        self.sampling = resolve_sampling(
            _OWNER,
            sampling,
            sampler,
            {
                "num_samples": num_samples,
                "temperature": temperature,
                "top_p": top_p,
                "max_new_tokens": max_new_tokens,
                "batch_size": generation_batch_size,
            },
        )
        check_int(every_n_epochs, "every_n_epochs", minimum=1)
        check_int(max_batch_tokens, "max_batch_tokens", minimum=1)
        for name, optional in (("max_examples", max_examples), ("max_test_examples", max_test_examples)):
            if optional is not None:
                check_int(optional, name, minimum=1)
        if max_time_fraction is not None and not 0 < check_real(max_time_fraction, "max_time_fraction") < 1:
            raise ValueError(
                f"`max_time_fraction` must be in (0, 1) (the probes' share of the time), got {max_time_fraction!r}."
            )
        check_answer_kind(answer_kind)
        for name, template, field in (
            ("prompt_template", prompt_template, "{question}"),
            ("target_template", target_template, "{solution}"),
        ):
            if field not in template:
                raise ValueError(f"`{name}` must contain {field}, got {template!r}.")
        self.every_n_epochs = every_n_epochs
        self.max_examples = max_examples
        self.max_test_examples = max_test_examples
        self.max_time_fraction = max_time_fraction
        self.skip_decided = bool(skip_decided)
        self.answer_kind = answer_kind
        self.prompt_template = prompt_template
        self.target_template = target_template
        self.max_batch_tokens = max_batch_tokens
        self.model_attr = model_attr
        self.seed = int(seed)
        self.history_dir = None if history_dir is None else Path(history_dir)
        self.run_name = run_name
        self.log_histogram = log_histogram
        self.log_dynamics = log_dynamics
        self.progress = progress
        self.perturbations = resolve_perturbations(perturbations)
        if self.perturbations:
            perturb_prompt(prompt_template, self.perturbations[0])  # the template must hold "Answer:"
        self._train_examples = None if train_examples is None else list(train_examples)
        self._test_examples = None if test_examples is None else list(test_examples)
        self._validation_examples = None if validation_examples is None else list(validation_examples)
        self._user_sampler = sampler
        self._tokenizer = tokenizer
        # built in setup()
        self._sampler: CompletionSampler | None = None
        self._probe: ProbeSet | None = None
        self._held_out: dict[str, ProbeSet] = {}  # "test", "validation"
        self._robust_probes: list[ProbeSet] = []
        self._num_train_examples = 0
        self._pad_token_id = 0
        self._metric: PreMemorizationAccuracy | None = None
        # the whole history, saved in checkpoints
        self._rounds: list[dict[str, Any]] = []
        self._pending_state: dict[str, Any] | None = None
        # wall clock of the training since the last probe round (or the start), and the last round's cost
        self._since_round: float | None = None
        self._last_probe_seconds: float | None = None

    # ------------------------------------------------------------------ Lightning hooks

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(threshold=self.threshold, max_examples=self.max_examples, seed=self.seed)

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        model = find_model(pl_module, self.model_attr, _OWNER)
        tokenizer = find_tokenizer(trainer, pl_module, self._tokenizer, _OWNER)
        self._pad_token_id = pad_token_id(tokenizer)
        train = self._train_examples if self._train_examples is not None else datamodule_examples(trainer, "train")
        if not train:
            raise ValueError(
                "no training examples to probe: pass train_examples=[{'id', 'question', 'solution'}, ...] to "
                "PreMemorizationCallback, or use a datamodule with a probe_examples(split) method."
            )
        self._num_train_examples = len(train)
        test = self._test_examples if self._test_examples is not None else datamodule_examples(trainer, "test")
        positions = max_positions(model)
        self._probe = self._probe_set(tokenizer, train, "train", self.max_examples, positions)
        self._held_out = {}
        if test:
            self._held_out["test"] = self._probe_set(tokenizer, test, "test", self.max_test_examples, positions)
        if self._validation_examples:
            validation = self._validation_examples
            self._held_out["validation"] = self._probe_set(
                tokenizer, validation, "validation", self.max_test_examples, positions
            )
        if self._user_sampler is not None:
            self._sampler = self._user_sampler
        else:
            if not callable(getattr(model, "generate", None)):
                raise TypeError(
                    f"the model ({type(model).__name__}) has no `generate`; use a Hugging Face causal LM or pass "
                    "sampler= (a CompletionSampler) to PreMemorizationCallback."
                )
            self._sampler = HFSampler.from_config(model, tokenizer, self.sampling or SamplingConfig())
        probe = self._probe
        self._robust_probes = [
            probe.with_prompts([perturb_prompt(prompt, suffix) for prompt in probe.prompts])
            for suffix in self.perturbations
        ]
        self._metric = PreMemorizationAccuracy(len(self._probe.ids), self.threshold, sync_on_compute=False)
        if self._pending_state is not None:
            self._restore(self._pending_state)

    def _probe_set(
        self, tokenizer: Any, examples: list[Mapping[str, Any]], split: str, limit: int | None, positions: int | None
    ) -> ProbeSet:
        return build_probe_set(
            tokenizer,
            examples,
            split=split,
            limit=limit,
            seed=self.seed,
            prompt_template=self.prompt_template,
            target_template=self.target_template,
            answer_kind=self.answer_kind,
            max_positions=positions,
        )

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._since_round = time.perf_counter()

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        if self._probe is None or self._metric is None or self._sampler is None:
            raise RuntimeError("PreMemorizationCallback.setup() did not run; it is set up by Trainer.fit().")
        if self._rounds and self._rounds[-1]["step"] == trainer.global_step:
            return  # this step was probed already (e.g. a resumed run re-entering the same epoch end)
        started = time.perf_counter()
        trained = started - (self._since_round if self._since_round is not None else started)
        if self._skip_round(trainer, trained):
            return
        record = self._probe_round(trainer, pl_module)
        probe_seconds = time.perf_counter() - started
        record["probe_seconds"] = probe_seconds
        record["probe_time_fraction"] = probe_seconds / (probe_seconds + trained) if probe_seconds + trained else 0.0
        self._last_probe_seconds = probe_seconds
        self._rounds.append(record)
        self._observe(len(self._rounds) - 1, record)
        self._push_scores(trainer, record)
        scalars = self._scalars(record)
        # identical on every rank (the round was gathered) but for probe_time_fraction (each rank's own clock:
        # averaged); sync_dist keeps Lightning's DDP bookkeeping exact
        pl_module.log_dict({f"premem/{k}": v for k, v in scalars.items()}, on_step=False, on_epoch=True, sync_dist=True)
        folder = (
            self.history_dir or Path(trainer.log_dir or trainer.default_root_dir) / "premem"
        )  # all ranks: broadcast
        if trainer.is_global_zero:
            self._log_tensorboard(trainer)
            write_history(
                folder,
                self._rounds,
                example_ids=self.probed_ids,
                threshold=self.threshold,
                perturbations=self.perturbations,
                run_name=self.run_name,
            )
        trainer.strategy.barrier("premem_round_written")
        rank_zero_info(
            f"[premem] epoch {trainer.current_epoch}: pre-memorization accuracy "
            f"{scalars['pre_memorization_accuracy']:.4f}, train accuracy {scalars['train_accuracy']:.4f}"
            + "".join(f", {split} accuracy {scalars[f'{split}_accuracy']:.4f}" for split in self._held_out)
            + f" (probe {probe_seconds:.1f} s, {record['probe_time_fraction']:.0%} of the time since the last round)"
        )
        self._since_round = time.perf_counter()

    def _skip_round(self, trainer: L.Trainer, trained: float) -> bool:
        """Whether to skip this due round to keep the probes within ``max_time_fraction`` (rank 0 decides)."""
        max_epochs = trainer.max_epochs
        last_epoch = max_epochs is not None and max_epochs > 0 and trainer.current_epoch + 1 >= max_epochs
        if self.max_time_fraction is None or self._last_probe_seconds is None or last_epoch:
            return False
        expected = self._last_probe_seconds
        share = expected / (expected + trained) if expected + trained else 0.0
        skip = bool(trainer.strategy.broadcast(share > self.max_time_fraction, src=0))
        if skip:
            rank_zero_info(
                f"[premem] epoch {trainer.current_epoch}: probe skipped: the last round took {expected:.1f} s against "
                f"{trained:.1f} s of training since, {share:.0%} > max_time_fraction {self.max_time_fraction:.0%}"
            )
        return skip

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
        ``num_unparseable`` (tensors in ``probed_ids`` order), ``test_accuracy`` (``None`` without held-out
        queries), ``validation_accuracy`` (``None`` without ``validation_examples``), ``probe_seconds`` and
        ``probe_time_fraction`` (the probe's wall time, and its share of the probe + training time since the
        previous round), with ``skip_decided`` ``sampled`` (``[N]`` bool) and, with ``perturbations``,
        ``robust_accuracy`` (``[P, N]``).
        """
        return list(self._rounds)

    # ------------------------------------------------------------------ the probe round

    def _probe_round(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, Any]:
        if self._probe is None or self._sampler is None:
            raise RuntimeError("setup() did not run")
        model = find_model(pl_module, self.model_attr, _OWNER)
        world, rank = trainer.world_size, trainer.global_rank
        num_samples = int(self._sampler.num_samples)
        mine = list(range(rank, len(self._probe.ids), world))
        held_mine = {split: list(range(rank, len(probe.ids), world)) for split, probe in self._held_out.items()}
        total_work = (2 + len(self._robust_probes)) * len(mine) + sum(len(m) for m in held_mine.values())
        bar = progress_bar(
            self.progress and trainer.is_global_zero and trainer.progress_bar_callback is not None,
            total_work,
            f"premem probe (epoch {trainer.current_epoch})",
        )
        was_training = model.training
        try:
            perplexity = target_perplexity(
                model,
                [self._probe.pairs[i] for i in mine],
                pad_token_id=self._pad_token_id,
                max_batch_tokens=self.max_batch_tokens,
                progress=bar.update,
            )
            sampled = self._undecided(mine, perplexity)
            at = [i for i, keep in zip(mine, sampled.tolist(), strict=True) if keep]
            correct, unparseable = torch.zeros(len(mine)), torch.zeros(len(mine))
            correct[sampled], unparseable[sampled] = self._sample_and_grade(
                self._probe, at, self._seeds(self._probe, at), bar
            )
            bar.update(len(mine) - len(at))
            held_correct = {}
            for split, probe in self._held_out.items():
                seeds = self._seeds(probe, held_mine[split], split)
                held_correct[split] = self._sample_and_grade(probe, held_mine[split], seeds, bar)[0]
            robust_correct = [
                self._sample_and_grade(
                    perturbed, mine, [perturbation_seed(self.seed, index, perturbed.ids[i]) for i in mine], bar
                )[0]
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
            "validation_accuracy": None,
        }
        if self.skip_decided:
            record["sampled"] = gather(sampled.double(), mine, size).round().to(torch.bool)
        if robust_correct:
            record["robust_accuracy"] = (
                torch.stack([gather(c, mine, size) for c in robust_correct]).round() / num_samples
            ).float()
        for split, probe in self._held_out.items():
            total = gather(held_correct[split], held_mine[split], len(probe.ids)).sum()
            record[f"{split}_accuracy"] = float(total) / (num_samples * len(probe.ids))
        return record

    def _undecided(self, positions: list[int], perplexity: Tensor) -> Tensor:
        """``[len(positions)]`` bool: the examples whose samples can change their pre-memorization value.

        With ``skip_decided``, an example memorized now whose best masked accuracy so far is 0 is decided:
        its value is ``min(max(0, 0), accuracy) = 0`` whatever it would sample.
        """
        keep = torch.ones(len(positions), dtype=torch.bool)
        if self.skip_decided and self._metric is not None and positions:
            best = self._metric.best_masked_accuracy()[positions]
            keep = ~((perplexity <= self.threshold) & (best == 0))
        return keep

    def _seeds(self, probe: ProbeSet, positions: list[int], split: str = "train") -> list[int]:
        """Return the seeds of the examples at ``positions``: one stream per example and split (``probes.seeds``)."""
        return [example_seed(self.seed, probe.ids[i], STREAMS[split]) for i in positions]

    def _sample_and_grade(
        self, probe: ProbeSet, positions: list[int], seeds: list[int], bar: Any
    ) -> tuple[Tensor, Tensor]:
        if self._sampler is None:
            raise RuntimeError("setup() did not run")
        return sample_and_grade(self._sampler, probe, positions, seeds, self.answer_kind, progress=bar.update)

    # ------------------------------------------------------------------ logging and files

    def _scalars(self, record: dict[str, Any]) -> dict[str, float]:
        if self._metric is None or self._probe is None:
            raise RuntimeError("setup() did not run")
        summary = {k: float(v) for k, v in self._metric.summary().items()}
        probed = len(self._probe.ids)
        sampled = record.get("sampled")
        num_sampled = probed if sampled is None else int(sampled.sum())
        scalars = {
            "pre_memorization_accuracy": summary["pre_memorization_accuracy"],
            "train_accuracy": summary["train_accuracy"],
            "memorized_fraction": summary["memorized_fraction"],
            "target_perplexity": float(record["perplexity"].double().mean()),
            "unparseable_fraction": float(
                record["num_unparseable"].double().sum() / max(1, num_sampled * record["num_samples"])
            ),
            "num_probed": float(probed),
        }
        if sampled is not None:  # skip_decided: accuracy is known for the sampled examples only
            scalars["train_accuracy"] = float(record["accuracy"][sampled].double().mean()) if num_sampled else 0.0
            scalars["samples_skipped_fraction"] = 1.0 - num_sampled / probed
        if probed < self._num_train_examples:
            scalars["pre_memorization_accuracy_stderr"] = subset_stderr(
                self._metric.per_example(), self._num_train_examples
            )
        for key in ("test_accuracy", "validation_accuracy", "probe_time_fraction"):
            if record.get(key) is not None:
                scalars[key] = float(record[key])
        if record.get("robust_accuracy") is not None:
            scalars["robust_accuracy"] = float(record["robust_accuracy"].double().mean())
        return scalars

    def _log_tensorboard(self, trainer: L.Trainer) -> None:
        boards = [logger for logger in trainer.loggers if isinstance(logger, TensorBoardLogger)]
        if not boards or not (self.log_histogram or self.log_dynamics):
            return
        accuracy = torch.stack([r["accuracy"] for r in self._rounds])
        perplexity = torch.stack([r["perplexity"] for r in self._rounds])
        for board in boards:
            writer = board.experiment
            if self.log_histogram:
                writer.add_histogram(
                    "premem/per_example_pre_memorization_accuracy",
                    pre_memorization_accuracy(accuracy, perplexity, self.threshold)[-1],
                    trainer.global_step,
                )
            if self.log_dynamics:
                image = dynamics_image(accuracy, perplexity, self.threshold)
                writer.add_image("premem/per_example_dynamics", image, trainer.global_step, dataformats="CHW")

    # ------------------------------------------------------------------ state and scores

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
        # the metric tracks the probe set: its example i is probed_ids[i]
        positions = torch.arange(len(self._probe.ids))
        self._metric.update(positions, record["accuracy"], record["perplexity"], step=index)

    def _push_scores(self, trainer: L.Trainer, record: dict[str, Any]) -> None:
        """Hand the round's per-example scores to a datamodule that takes them (a ``ScoreReceiver``)."""
        datamodule = getattr(trainer, "datamodule", None)
        if isinstance(datamodule, ScoreReceiver) and self._metric is not None:
            datamodule.update_premem_scores(
                self.probed_ids,
                {
                    "pre_memorization_accuracy": self._metric.per_example(),
                    "accuracy": record["accuracy"],
                    "perplexity": record["perplexity"],
                },
            )
