"""Baseline generalization predictors, to compare pre-memorization accuracy against.

Kang et al. (arXiv 2411.07681) compare pre-memorization train accuracy with other predictors of
test accuracy. Those that need training-time signals are computed here, by
:class:`BaselinePredictorsCallback` at the end of every ``every_n_epochs``-th epoch (the same
schedule as :class:`~lightning_premem.PreMemorizationCallback`, so the two join by step):

- **gradient variance** (:func:`gradient_variance`): on a fixed set of ``B`` training batches
  (captured once, at the start of training), the per-batch gradients ``g_b`` of the training loss at
  the current weights; ``sum_b ||g_b - mean_g||^2 / (B - 1)`` (the trace of their covariance).
- **distance from initialisation** (:func:`distance_from_init`): ``||theta_t - theta_0||_2`` over all
  trainable parameters, with ``theta_0`` kept on CPU (or ``state_device``) and streamed to the
  model's device one tensor at a time.
- **average thresholded confidence** (ATC, Garg et al. 2022; :func:`fit_atc_threshold`,
  :func:`atc_score`): confidence of a sampled answer = its mean token log-probability under the
  model; a threshold is fitted on held-out queries with known answers so that the fraction of
  their samples above it equals their accuracy; ATC is the fraction of the probe queries' samples
  above it.
- **epoch train loss**: the mean training loss over the epoch's steps.

Train accuracy and the checkpoint's train loss (mean log target perplexity) come from the
pre-memorization history itself (:func:`lightning_premem.analysis.predictor_table`). Costs are in
``docs/analysis.md``.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import lightning as L  # noqa: N812  (the library's own convention)
import numpy as np
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.utilities import rank_zero_info
from torch import Tensor
from typing_extensions import override

from lightning_premem._checks import check_int
from lightning_premem.answers import grade
from lightning_premem.callbacks.common import (
    check_answer_kind,
    datamodule_examples,
    find_model,
    find_tokenizer,
    resolve_sampling,
)
from lightning_premem.history import PREDICTOR_COLUMNS, write_predictors
from lightning_premem.probes.models import eval_mode
from lightning_premem.probes.perplexity import target_perplexity
from lightning_premem.probes.sampling import HFSampler, SamplingConfig
from lightning_premem.probes.seeds import STREAMS, example_seed
from lightning_premem.protocols import CompletionSampler, sample_completions
from lightning_premem.tokenization import DEFAULT_PROMPT_TEMPLATE, encode_prompt_target, pad_token_id

__all__ = [
    "BaselinePredictorsCallback",
    "atc_score",
    "completion_confidence",
    "distance_from_init",
    "fit_atc_threshold",
    "gradient_variance",
    "snapshot_parameters",
]

_OWNER = "BaselinePredictorsCallback"


# --------------------------------------------------------------------------- the predictors as functions


def gradient_variance(
    loss_fn: Callable[[Any], Tensor],
    batches: Sequence[Any],
    parameters: Iterable[Tensor],
    *,
    buffer_device: str | torch.device | None = "cpu",
) -> float:
    """Total variance of minibatch gradients: ``sum_b ||g_b - mean_g||^2 / (B - 1)``.

    ``g_b`` is the gradient of ``loss_fn(batches[b])`` with respect to ``parameters`` (all of them
    flattened into one vector; a parameter the loss does not reach has gradient 0). Gradients are
    taken with :func:`torch.autograd.grad`, so the parameters' ``.grad`` are left untouched.

    Memory: the running sum of the gradients, one float32 copy of ``parameters``, on
    ``buffer_device`` (``None``: each parameter's own device); the squared norms are scalars.

    Args:
        loss_fn: maps a batch to a scalar loss.
        batches: at least two batches.
        parameters: the tensors to differentiate (e.g. ``[p for p in model.parameters() if p.requires_grad]``).
        buffer_device: where the gradient sum lives.

    Example:
        >>> w = torch.tensor([1.0, 2.0], requires_grad=True)
        >>> # loss_b = x_b . w has gradient x_b: gradients (1, 0), (3, 0), (2, 3); mean (2, 1)
        >>> gradient_variance(lambda x: (x * w).sum(), [torch.tensor([1.0, 0]), torch.tensor([3.0, 0]),
        ...                   torch.tensor([2.0, 3])], [w])  # squared deviations 2 + 2 + 4, over B - 1 = 2
        4.0
    """
    params = [p for p in parameters]
    if not params:
        raise ValueError("`parameters` is empty: pass the trainable parameters of the model.")
    if len(batches) < 2:
        raise ValueError(f"gradient variance needs at least 2 batches, got {len(batches)}.")
    sums: list[Tensor] = [
        torch.zeros(p.shape, dtype=torch.float32, device=p.device if buffer_device is None else buffer_device)
        for p in params
    ]
    squared_norms = 0.0
    with torch.enable_grad():
        for batch in batches:
            loss = loss_fn(batch)
            if not isinstance(loss, Tensor) or loss.numel() != 1:
                raise TypeError(f"`loss_fn` must return a scalar tensor, got {type(loss).__name__}.")
            grads = torch.autograd.grad(loss, params, allow_unused=True)
            for total, grad in zip(sums, grads, strict=True):
                if grad is None:
                    continue
                g = grad.detach().float()
                squared_norms += float(g.double().pow(2).sum())
                total.add_(g.to(total.device))
    count = len(batches)
    sum_norm = sum(float(total.double().pow(2).sum()) for total in sums)
    return max(0.0, (squared_norms - sum_norm / count) / (count - 1))


def snapshot_parameters(module: torch.nn.Module, device: str | torch.device = "cpu") -> dict[str, Tensor]:
    """Copy a module's trainable parameters to ``device`` (default CPU): ``theta_0`` for :func:`distance_from_init`.

    The copy keeps each parameter's dtype; it costs one model's worth of ``device`` memory (CPU RAM by default).
    """
    return {name: p.detach().to(device=device, copy=True) for name, p in module.named_parameters() if p.requires_grad}


def distance_from_init(module: torch.nn.Module, initial: Mapping[str, Tensor]) -> float:
    """Euclidean distance ``||theta - theta_0||_2`` over the trainable parameters named in ``initial``.

    ``initial`` may live anywhere (CPU by default): each of its tensors is moved to its parameter's
    device on its own, so the extra device memory is one parameter tensor, never a model copy.

    Example:
        >>> layer = torch.nn.Linear(2, 1)
        >>> theta0 = snapshot_parameters(layer)
        >>> with torch.no_grad():
        ...     _ = layer.weight.add_(torch.tensor([[3.0, 0.0]])), layer.bias.add_(4.0)
        >>> round(distance_from_init(layer, theta0), 6)
        5.0
    """
    parameters = dict(module.named_parameters())
    missing = [name for name in initial if name not in parameters]
    if missing:
        raise ValueError(f"`initial` has parameters the module lacks (first {missing[:3]}); snapshot the same module.")
    total = 0.0
    with torch.no_grad():
        for name, start in initial.items():
            current = parameters[name].detach()
            if current.shape != start.shape:
                raise ValueError(
                    f"parameter {name!r} has shape {tuple(current.shape)}, its snapshot {tuple(start.shape)}."
                )
            diff = current.float() - start.to(device=current.device).float()
            total += float(diff.double().pow(2).sum())
    return math.sqrt(total)


def fit_atc_threshold(confidences: Any, correct: Any) -> float:
    """Fit the ATC threshold: ``t`` such that the share of confidences strictly above ``t`` is the accuracy.

    With ``n`` samples and ``m = round(n * mean(correct))`` correct ones, ``t`` is the ``(m+1)``-th
    largest confidence (``-inf`` when ``m = n``): exactly ``m`` samples lie above it when there are no
    ties at ``t``.

    Args:
        confidences: ``[n]`` confidence per held-out sample (e.g. mean token log-probability).
        correct: ``[n]`` whether each sample's answer was correct.

    Example:
        >>> fit_atc_threshold([-0.1, -0.5, -0.2, -2.0], [True, False, True, False])  # 2 of 4 correct
        -0.5
    """
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    hits = np.asarray(correct, dtype=np.float64).ravel()
    if conf.size == 0 or conf.size != hits.size:
        raise ValueError(
            f"`confidences` and `correct` must be non-empty and of the same length, got {conf.size} and {hits.size}."
        )
    if np.isnan(conf).any():
        raise ValueError("`confidences` must not hold NaN.")
    above = round(float(hits.mean()) * conf.size)
    if above >= conf.size:
        return -math.inf
    return float(np.sort(conf)[::-1][above])


def atc_score(confidences: Any, threshold: float) -> float:
    """ATC's predicted accuracy: the share of confidences strictly above ``threshold``.

    Example:
        >>> atc_score([-0.1, -0.3, -0.7, -0.05], threshold=-0.5)
        0.75
    """
    conf = np.asarray(confidences, dtype=np.float64).ravel()
    if conf.size == 0:
        raise ValueError("`confidences` is empty.")
    return float((conf > threshold).mean())


def completion_confidence(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    *,
    pad_token_id: int,
    max_batch_tokens: int = 8192,
) -> Tensor:
    """Mean token log-probability of each completion given its prompt: ``-log(perplexity)``, teacher-forced.

    Uses :func:`~lightning_premem.probes.target_perplexity` on ``(prompt, completion)`` pairs; a completion
    that encodes to no tokens gets ``-inf``. Costs one forward pass per completion (batched by token budget).

    Returns:
        ``[len(prompts)]`` float32 tensor (values <= 0).
    """
    if len(prompts) != len(completions):
        raise ValueError(f"one completion per prompt: got {len(prompts)} prompts and {len(completions)} completions.")
    out = torch.full((len(prompts),), -math.inf, dtype=torch.float32)
    pairs, rows = [], []
    for row, (prompt, completion) in enumerate(zip(prompts, completions, strict=True)):
        if tokenizer(completion, add_special_tokens=False)["input_ids"]:
            pairs.append(encode_prompt_target(tokenizer, prompt, completion))
            rows.append(row)
    if pairs:
        perplexity = target_perplexity(model, pairs, pad_token_id=pad_token_id, max_batch_tokens=max_batch_tokens)
        out[torch.tensor(rows, dtype=torch.long)] = -torch.log(perplexity)
    return out


# --------------------------------------------------------------------------- the callback


class BaselinePredictorsCallback(Callback):
    r"""Log baseline generalization predictors at probe rounds; write them to ``predictors.npz``.

    Runs at the end of every ``every_n_epochs``-th training epoch, logs under ``predictors/``
    (``epoch_train_loss``, ``gradient_variance``, ``distance_from_init``, ``atc``, ``atc_threshold``,
    ``atc_fit_accuracy``; each only when turned on) and rewrites ``<log_dir>/premem/predictors.npz``
    (rank 0, atomically; :func:`lightning_premem.history.write_predictors`): ``steps [T]``, ``epochs [T]`` and
    one ``[T]`` float array per column above (NaN when off). ``premem report`` joins it with ``history.npz``
    in the same folder by step. Use the same
    ``every_n_epochs`` as the :class:`~lightning_premem.PreMemorizationCallback`.

    Args:
        every_n_epochs: compute at the end of every n-th training epoch.
        gradient_batches: number of training batches (captured once from the train dataloader at the start of
            training, kept on CPU) for the gradient variance; ``0`` turns it off. At least 2.
        distance: log the distance from initialisation.
        initial_parameters: ``theta_0`` (name -> tensor, any device) instead of the weights at the start of
            ``fit`` -- pass the pretrained weights when resuming from a checkpoint.
        state_device: where ``theta_0`` and the gradient-variance buffer live (default CPU).
        loss_fn: ``(pl_module, batch) -> scalar loss`` for the gradients; default: the model called with the
            batch's ``input_ids``, ``attention_mask`` and ``labels`` (``.loss`` of the output).
        atc_examples: held-out queries with known answers (``id``, ``question``, ``solution``) to fit the
            ATC threshold on; ATC is off without them. Use a validation split, never the test split.
        atc_queries: the queries whose confidences ATC thresholds (``id`` and ``question``; answers are not
            used). Default: ``trainer.datamodule.probe_examples("test")``.
        sampling: ATC's sampling settings (a :class:`~lightning_premem.probes.SamplingConfig`; default the
            paper's). With the same settings and seed, ATC's fit samples of validation queries are those of
            ``PreMemorizationCallback(validation_examples=...)``.
        num_samples, temperature, top_p, max_new_tokens: the same settings as flat arguments (not with
            ``sampling``).
        sampler: another :class:`~lightning_premem.protocols.CompletionSampler` for ATC (with its own settings:
            not with ``sampling`` or the flat arguments).
        answer_kind: how ATC's held-out answers are graded (see :func:`~lightning_premem.answers.grade`).
        prompt_template: format of the ATC prompts.
        tokenizer: the tokenizer (default ``pl_module.tokenizer``, then ``trainer.datamodule.tokenizer``).
        model_attr: attribute of the LightningModule holding the causal LM (else the module itself).
        max_batch_tokens: token budget of the confidence passes.
        seed: seeds ATC's samples.
        history_dir: where ``predictors.npz`` goes (default ``<trainer.log_dir>/premem``).
        run_name: the run's name in ``predictors.npz`` (default: the last two parts of the log folder).
    """

    def __init__(
        self,
        *,
        every_n_epochs: int = 1,
        gradient_batches: int = 4,
        distance: bool = True,
        initial_parameters: Mapping[str, Tensor] | None = None,
        state_device: str | torch.device = "cpu",
        loss_fn: Callable[[L.LightningModule, Any], Tensor] | None = None,
        atc_examples: Sequence[Mapping[str, Any]] | None = None,
        atc_queries: Sequence[Mapping[str, Any]] | None = None,
        sampling: SamplingConfig | None = None,
        num_samples: int | None = None,
        temperature: float | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        sampler: CompletionSampler | None = None,
        answer_kind: Literal["gsm8k", "math"] | Callable[[str, str], bool | None] = "gsm8k",
        prompt_template: str = DEFAULT_PROMPT_TEMPLATE,
        tokenizer: Any = None,
        model_attr: str = "model",
        max_batch_tokens: int = 8192,
        seed: int = 0,
        history_dir: str | Path | None = None,
        run_name: str | None = None,
    ) -> None:
        super().__init__()
        check_int(every_n_epochs, "every_n_epochs", minimum=1)
        check_int(gradient_batches, "gradient_batches", minimum=0)
        check_int(max_batch_tokens, "max_batch_tokens", minimum=1)
        if gradient_batches == 1:
            raise ValueError("`gradient_batches` must be 0 (off) or at least 2: a variance needs two gradients.")
        self.sampling = resolve_sampling(
            _OWNER,
            sampling,
            sampler,
            {"num_samples": num_samples, "temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens},
        )
        check_answer_kind(answer_kind)
        if atc_examples is not None and not list(atc_examples):
            raise ValueError("`atc_examples` is empty: pass held-out queries with answers, or None to turn ATC off.")
        if "{question}" not in prompt_template:
            raise ValueError(f"`prompt_template` must contain {{question}}, got {prompt_template!r}.")
        self.every_n_epochs = every_n_epochs
        self.gradient_batches = gradient_batches
        self.distance = distance
        self.state_device = torch.device(state_device)
        self.loss_fn = loss_fn
        self.answer_kind = answer_kind
        self.prompt_template = prompt_template
        self.model_attr = model_attr
        self.max_batch_tokens = max_batch_tokens
        self.seed = int(seed)
        self.history_dir = None if history_dir is None else Path(history_dir)
        self.run_name = run_name
        self._user_sampler = sampler
        self._tokenizer = tokenizer
        self._atc_examples = None if atc_examples is None else list(atc_examples)
        self._atc_queries = None if atc_queries is None else list(atc_queries)
        self._initial: dict[str, Tensor] | None = (
            None
            if initial_parameters is None
            else {k: v.detach().to(self.state_device) for k, v in initial_parameters.items()}
        )
        self._batches: list[Any] | None = None
        self._sampler: CompletionSampler | None = None
        self._loss_sum, self._loss_count = 0.0, 0
        self._rounds: list[dict[str, float]] = []

    @property
    def history(self) -> list[dict[str, float]]:
        """One record per round: ``step``, ``epoch`` and the columns (NaN when off)."""
        return [dict(r) for r in self._rounds]

    # ------------------------------------------------------------------ Lightning hooks

    @override
    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit" or self._atc_examples is None:
            return
        if self._atc_queries is None:
            self._atc_queries = datamodule_examples(trainer, "test")
            if not self._atc_queries:
                raise ValueError(
                    "ATC needs probe queries: pass atc_queries=[{'id', 'question'}, ...] to BaselinePredictorsCallback "
                    "or use a datamodule with probe_examples('test')."
                )
        if self._user_sampler is not None:
            self._sampler = self._user_sampler
        else:
            self._sampler = HFSampler.from_config(
                find_model(pl_module, self.model_attr, _OWNER),
                find_tokenizer(trainer, pl_module, self._tokenizer, _OWNER),
                self.sampling or SamplingConfig(),
            )

    @override
    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.distance and self._initial is None:
            self._initial = snapshot_parameters(find_model(pl_module, self.model_attr, _OWNER), self.state_device)

    @override
    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.gradient_batches and self._batches is None:
            loader = trainer.train_dataloader
            if loader is None:
                raise ValueError("gradient variance needs the train dataloader; set gradient_batches=0 to turn it off.")
            self._batches = [_to_cpu(batch) for batch in itertools.islice(iter(loader), self.gradient_batches)]
            if len(self._batches) < 2:
                raise ValueError(
                    f"gradient variance needs at least 2 training batches, the train dataloader has "
                    f"{len(self._batches)}; set gradient_batches=0 to turn it off."
                )

    @override
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._loss_sum, self._loss_count = 0.0, 0

    @override
    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        loss = outputs.get("loss") if isinstance(outputs, Mapping) else outputs
        if isinstance(loss, Tensor) and loss.numel() == 1:
            self._loss_sum += float(loss.detach())
            self._loss_count += 1

    @override
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs != 0:
            return
        if self._rounds and self._rounds[-1]["step"] == trainer.global_step:
            return
        started = time.perf_counter()
        values = self._compute(pl_module)
        # every rank computed on its own data: average them, so all ranks log and write the same numbers
        names = sorted(values)
        local = torch.tensor([values[n] for n in names], dtype=torch.float64, device=pl_module.device)
        reduced: Tensor = trainer.strategy.reduce(local, reduce_op="mean")
        values = dict(zip(names, reduced.cpu().tolist(), strict=True))
        record = {"step": float(trainer.global_step), "epoch": float(trainer.current_epoch)}
        record.update({name: values.get(name, math.nan) for name in PREDICTOR_COLUMNS})
        self._rounds.append(record)
        logged = {f"predictors/{k}": v for k, v in values.items() if math.isfinite(v)}
        if logged:
            pl_module.log_dict(logged, on_step=False, on_epoch=True, sync_dist=False)
        if trainer.is_global_zero:
            folder = self.history_dir or Path(trainer.log_dir or trainer.default_root_dir) / "premem"
            write_predictors(folder, self._rounds, run_name=self.run_name)
        trainer.strategy.barrier("predictors_round_written")
        rank_zero_info(
            "[premem] predictors: "
            + ", ".join(f"{k} {v:.4g}" for k, v in values.items())
            + f" ({time.perf_counter() - started:.1f} s)"
        )

    @override
    def state_dict(self) -> dict[str, Any]:
        return {"rounds": [dict(r) for r in self._rounds]}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._rounds = [dict(r) for r in state_dict.get("rounds", [])]

    # ------------------------------------------------------------------ the computations

    def _compute(self, pl_module: L.LightningModule) -> dict[str, float]:
        values: dict[str, float] = {}
        if self._loss_count:
            values["epoch_train_loss"] = self._loss_sum / self._loss_count
        model = find_model(pl_module, self.model_attr, _OWNER)
        if self._batches is not None:
            params = [p for p in model.parameters() if p.requires_grad]
            device = next(iter(params)).device if params else torch.device("cpu")
            with eval_mode(model):
                values["gradient_variance"] = gradient_variance(
                    lambda batch: self._loss(pl_module, _to_device(batch, device)),
                    self._batches,
                    params,
                    buffer_device=self.state_device,
                )
        if self.distance and self._initial is not None:
            values["distance_from_init"] = distance_from_init(model, self._initial)
        if self._sampler is not None:
            values.update(self._atc(pl_module))
        return values

    def _loss(self, pl_module: L.LightningModule, batch: Any) -> Tensor:
        if self.loss_fn is not None:
            return self.loss_fn(pl_module, batch)
        if not isinstance(batch, Mapping) or "input_ids" not in batch or "labels" not in batch:
            raise ValueError(
                "the default gradient-variance loss needs batches with 'input_ids' and 'labels'; pass "
                "loss_fn=(pl_module, batch) -> loss to BaselinePredictorsCallback."
            )
        out = find_model(pl_module, self.model_attr, _OWNER)(
            input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"), labels=batch["labels"]
        )
        loss = out if isinstance(out, Tensor) else getattr(out, "loss", None)
        if not isinstance(loss, Tensor):
            raise TypeError("the model returned no loss; pass loss_fn=(pl_module, batch) -> loss.")
        return loss

    def _atc(self, pl_module: L.LightningModule) -> dict[str, float]:
        if self._sampler is None or self._atc_examples is None or self._atc_queries is None:
            raise RuntimeError("setup() did not run")
        model = find_model(pl_module, self.model_attr, _OWNER)
        tokenizer = find_tokenizer(pl_module.trainer, pl_module, self._tokenizer, _OWNER)
        pad = pad_token_id(tokenizer)
        # the fit set is validation queries: the validation stream, as PreMemorizationCallback samples them
        fit_conf, fit_correct = self._sample_confidences(model, tokenizer, pad, self._atc_examples, "validation")
        query_conf, _ = self._sample_confidences(model, tokenizer, pad, self._atc_queries, "atc_queries")
        threshold = fit_atc_threshold(fit_conf, fit_correct)
        return {
            "atc": atc_score(query_conf, threshold),
            "atc_threshold": threshold,
            "atc_fit_accuracy": float(np.mean(fit_correct)),
        }

    def _sample_confidences(
        self, model: Any, tokenizer: Any, pad: int, rows: list[Mapping[str, Any]], stream: str
    ) -> tuple[np.ndarray, np.ndarray]:
        if self._sampler is None:
            raise RuntimeError("setup() did not run")
        prompts = [self.prompt_template.format(**row) for row in rows]
        seeds = [example_seed(self.seed, int(row["id"]), STREAMS[stream]) for row in rows]
        was_training = model.training
        try:
            samples = sample_completions(self._sampler, prompts, seeds)
            flat_prompts = [p for p, texts in zip(prompts, samples, strict=True) for _ in texts]
            flat = [t for texts in samples for t in texts]
            confidence = completion_confidence(
                model, tokenizer, flat_prompts, flat, pad_token_id=pad, max_batch_tokens=self.max_batch_tokens
            )
        finally:
            model.train(was_training)
        correct = [
            grade(text, str(row["solution"]), self.answer_kind) == "correct" if "solution" in row else False
            for row, texts in zip(rows, samples, strict=True)
            for text in texts
        ]
        return confidence.double().numpy(), np.array(correct, dtype=bool)


def _to_cpu(batch: Any) -> Any:
    return _to_device(batch, torch.device("cpu"))


def _to_device(batch: Any, device: torch.device) -> Any:
    if isinstance(batch, Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, (list, tuple)):
        return type(batch)(_to_device(v, device) for v in batch)
    return batch
