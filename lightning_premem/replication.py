"""``premem replicate``: the paper's three findings at CPU scale, with the package's own tools.

1. **Prediction.** A sweep of small GPTs trained from scratch on the synthetic task
   (:class:`~lightning_premem.synthetic.ArithmeticTask`), learning rates x training-set sizes x seeds,
   each probed at several checkpoints by :class:`~lightning_premem.PreMemorizationCallback` and
   :class:`~lightning_premem.predictors.BaselinePredictorsCallback`. The memorization threshold is
   calibrated on a *validation* split of fresh problems (never the test split), then the R² of test
   accuracy on pre-memorization accuracy and on every baseline is measured over all checkpoints and
   leave-one-run-out.
2. **Robustness.** One run of the sweep also probes its training questions under prompt
   perturbations; the accuracy drop is binned by pre-memorization accuracy.
3. **Curation.** :func:`~lightning_premem.acquisition.run_curation` for every strategy and several
   seeds on a pool of templates of different difficulty; the data-efficiency ratio of ``premem`` over
   ``iid``.

Every unit of work (a sweep run, a curation chain) writes its results when it ends, so an interrupted
``replicate`` resumes where it stopped; units run in ``jobs`` single-threaded processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import itertools
import json
import logging
import math
import multiprocessing
import os
import time
import warnings
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import lightning as L  # noqa: N812  (the library's own convention)
import numpy as np
import torch

from lightning_premem.acquisition import (
    _FIELDS,
    CurationConfig,
    _check_shares,
    _quiet_trainer,
    _write_outputs,
    run_curation,
    synthetic_curation_data,
)
from lightning_premem.callback import HISTORY_FILE, PreMemorizationCallback, _atomic_write
from lightning_premem.curation import STRATEGIES
from lightning_premem.data import ReasoningDataModule
from lightning_premem.demo import _training_module, demo_threshold, gpt_config
from lightning_premem.predictors import PREDICTORS_FILE, BaselinePredictorsCallback
from lightning_premem.synthetic import ArithmeticTask
from lightning_premem.tokenization import char_tokenizer

__all__ = ["QUICK", "ReplicationConfig", "data_efficiency", "run_replication"]

_TEST_SEED, _VALIDATION_SEED = 10_001, 10_002  # the held-out problems are the same for every run
_TEST_START, _VALIDATION_START = 1_000_000, 2_000_000  # their ids
_BASE_SEED, _BASE_START = 10_003, 3_000_000  # the curation base model's pretraining problems


def _default_curation() -> CurationConfig:
    return CurationConfig(
        strategies=STRATEGIES,
        seeds=(0, 1, 2),
        rounds=3,
        initial_size=1024,
        acquire_per_round=1536,  # 1,024 -> 2,560 -> 4,096 examples
        steps_per_round=1024,
        max_probe_examples=200,
        learning_rate=1e-3,  # fine-tuning the base model: a third of its pretraining rate
    )


@dataclass(frozen=True)
class ReplicationConfig:
    """Settings of ``premem replicate`` (defaults: the full replication, under an hour on 2 CPU cores)."""

    template: str = "a+b*c"
    """Template of the prediction sweep's problems (see :data:`~lightning_premem.synthetic.TEMPLATES`)."""
    trace_diversity: int = 3
    sizes: tuple[int, ...] = (256, 1024, 4096)
    """Training-set sizes of the sweep: few examples memorize, many generalize."""
    learning_rates: tuple[float, ...] = (1e-3, 3e-3)
    seeds: tuple[int, ...] = (0, 1)
    steps: int = 2048
    """Optimizer steps per sweep run (about; rounded to whole epochs)."""
    probes: int = 8
    """Checkpoints probed per sweep run."""
    probe_size: int = 200
    """Training problems probed at every checkpoint (a fixed, seeded subset)."""
    test_size: int = 200
    validation_size: int = 200
    """Fresh problems for calibrating the threshold and fitting ATC (disjoint from the test problems)."""
    atc_queries: str = "train"
    """Whose confidences ATC thresholds: ``"train"`` (the first ``probe_size`` training problems: the paper's
    setting, a predictor from the training set like the others) or ``"test"`` (the test problems: Garg et al.'s
    setting, which with a validation split drawn like the test set measures validation accuracy)."""
    batch_size: int = 32
    num_samples: int = 4
    temperature: float = 0.8
    max_new_tokens: int = 40
    n_layer: int = 3
    n_embd: int = 96
    n_head: int = 3
    robustness_run: tuple[int, float] = (1024, 3e-3)
    """``(size, learning rate)`` of the sweep run (first seed) that also probes prompt perturbations."""
    curation: CurationConfig = field(default_factory=_default_curation)
    curation_templates: tuple[str, ...] = ("a+b*c", "a-b*c")
    """Templates of the curation pool and test problems: the base model's skill and a new one."""
    curation_shares: tuple[float, ...] | None = (0.75, 0.25)
    """Each curation template's share of the initial training set, the pool and the test problems (same order):
    most of the task is the skill the base model has, a quarter is new. ``None``: templates drawn uniformly."""
    curation_base_templates: tuple[str, ...] = ("a+b*c",)
    """Skills of the base model that every curation round fine-tunes, as the paper fine-tunes a pretrained LLM that
    already solves part of its data; empty: every round trains from scratch."""
    curation_base_size: int = 4096
    curation_base_steps: int = 2048
    curation_base_learning_rate: float = 3e-3
    curation_threshold: float | None = None
    """Memorization threshold ``p`` of the curation rounds' scores; default: the curation task's trace-randomness
    rule (:func:`~lightning_premem.demo.demo_threshold`), as for the sweep."""
    curation_pool_size: int = 5000
    curation_test_size: int = 400
    jobs: int = 2
    """Processes running sweep runs and curation chains side by side (one thread each)."""

    def __post_init__(self) -> None:
        for name in ("steps", "probes", "probe_size", "test_size", "validation_size", "batch_size", "num_samples",
                     "max_new_tokens", "n_layer", "n_embd", "n_head", "curation_pool_size", "curation_test_size",
                     "curation_base_size", "curation_base_steps",
                     "jobs"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"`{name}` must be a positive int, got {value!r}.")
        for name in ("sizes", "learning_rates", "seeds"):
            if not getattr(self, name):
                raise ValueError(f"`{name}` must name at least one value.")
        if min(self.sizes) < self.probe_size:
            raise ValueError(
                f"every training-set size must be at least `probe_size` ({self.probe_size}), got {min(self.sizes)}."
            )
        if len(self.sizes) * len(self.learning_rates) * len(self.seeds) < 3:
            raise ValueError("the sweep needs at least 3 runs (leave-one-run-out needs 2 to fit on).")
        size, lr = self.robustness_run
        if size not in self.sizes or lr not in self.learning_rates:
            raise ValueError(f"`robustness_run` {self.robustness_run!r} must be one of the sweep's (size, lr) pairs.")
        if self.atc_queries not in ("train", "test"):
            raise ValueError(f"`atc_queries` must be 'train' or 'test', got {self.atc_queries!r}.")
        if self.curation_base_templates and not isinstance(self.curation.model, Mapping):
            raise ValueError(
                "a curation base model is pretrained from `curation.model`, which must then be a config mapping "
                f"(got {self.curation.model!r}); set curation_base_templates=() to fine-tune that model instead."
            )
        if self.curation_shares is not None:
            _check_shares(self.curation_shares, self.curation_templates)
        if "premem" not in self.curation.strategies or "iid" not in self.curation.strategies:
            raise ValueError("the curation strategies must include 'premem' and 'iid' (their ratio is the result).")


#: A seconds-long variant (``premem replicate --quick``): everything is produced, nothing is meaningful.
QUICK = ReplicationConfig(
    sizes=(16, 32),
    learning_rates=(1e-2,),
    seeds=(0, 1),
    steps=8,
    probes=2,
    probe_size=8,
    test_size=8,
    validation_size=8,
    batch_size=8,
    num_samples=2,
    max_new_tokens=16,
    n_layer=1,
    n_embd=32,
    n_head=2,
    robustness_run=(32, 1e-2),
    curation=CurationConfig(
        strategies=STRATEGIES,
        seeds=(0, 1, 2),
        rounds=2,
        initial_size=16,
        acquire_per_round=8,
        steps_per_round=4,
        max_probe_examples=8,
        num_samples=1,
        max_new_tokens=16,
        batch_size=8,
        model=gpt_config(1, 32, 2),
    ),
    curation_base_size=16,
    curation_base_steps=4,
    curation_pool_size=40,
    curation_test_size=8,
)


# --------------------------------------------------------------------------- the units of work


def _task(config: ReplicationConfig) -> ArithmeticTask:
    return ArithmeticTask(templates=(config.template,), trace_diversity=config.trace_diversity)


def _held_out(config: ReplicationConfig) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the sweep's test and validation problems: fixed, disjoint, the same for every run."""
    task = _task(config)
    test = task.generate(config.test_size, seed=_TEST_SEED, start_id=_TEST_START, unique=True)
    validation = task.generate(
        config.validation_size, seed=_VALIDATION_SEED, start_id=_VALIDATION_START, exclude=test, unique=True
    )
    return test, validation


def _sweep_keys(config: ReplicationConfig) -> list[tuple[int, float, int]]:
    """Return the sweep's ``(size, learning rate, seed)`` triples, largest training sets first."""
    return [
        (n, lr, seed)
        for n in sorted(config.sizes, reverse=True)
        for lr in config.learning_rates
        for seed in config.seeds
    ]


def _run_name(size: int, lr: float, seed: int) -> str:
    return f"n{size}-lr{lr:g}-s{seed}"


def _epochs(config: ReplicationConfig, size: int) -> tuple[int, int]:
    """Return ``(epochs, probe every n epochs)``: about ``config.steps`` steps, ``config.probes`` probes."""
    steps_per_epoch = math.ceil(size / config.batch_size)
    every = max(1, round(config.steps / steps_per_epoch / config.probes))
    return every * config.probes, every


def _kept(marker: Path, settings: Mapping[str, Any], what: str) -> dict[str, Any] | None:
    """Return the record of work already done (``marker``), or None; refuse work made with other settings."""
    if not marker.is_file():
        return None
    record: dict[str, Any] = json.loads(marker.read_text())
    if record.get("settings") != settings:
        raise ValueError(
            f"{marker.parent} holds {what} made with other settings: use another --output folder, or delete the "
            "folder to start over."
        )
    return record


def _sweep_run(config: ReplicationConfig, size: int, lr: float, seed: int, folder: Path) -> dict[str, Any]:
    """Train one sweep run with both callbacks; write ``history.npz``, ``predictors.npz`` and ``run.json``."""
    marker = folder / "run.json"
    settings = _sweep_settings(config)
    kept = _kept(marker, settings, "a sweep run")
    if kept is not None:
        return kept
    started = time.perf_counter()
    task = _task(config)
    test, validation = _held_out(config)
    train = task.generate(size, seed=seed, exclude=[*test, *validation], unique=True)
    epochs, every = _epochs(config, size)
    L.seed_everything(seed, verbose=False)
    data = ReasoningDataModule(
        train, test=test, fields=_FIELDS, tokenizer="char", batch_size=config.batch_size, max_length=128, seed=seed
    )
    model = _training_module(gpt_config(config.n_layer, config.n_embd, config.n_head), "char", lr)
    sampling: dict[str, Any] = {
        "num_samples": config.num_samples,
        "temperature": config.temperature,
        "max_new_tokens": config.max_new_tokens,
    }
    robust = (size, lr) == config.robustness_run and seed == config.seeds[0]
    premem = PreMemorizationCallback(
        threshold=demo_threshold(task, train, model.tokenizer),
        max_examples=config.probe_size,
        every_n_epochs=every,
        generation_batch_size=64,
        seed=seed,
        history_dir=folder,
        log_histogram=False,
        log_dynamics=False,
        progress=False,
        perturbations="default" if robust else None,
        **sampling,
    )
    predictors = BaselinePredictorsCallback(
        every_n_epochs=every,
        atc_examples=validation,
        atc_queries=train[: config.probe_size] if config.atc_queries == "train" else test,
        seed=seed,
        history_dir=folder,
        **sampling,
    )
    trainer = _quiet_trainer(epochs, [premem, predictors], accelerator="cpu")
    trainer.fit(model, datamodule=data)
    # ATC's fit accuracy is the sampled accuracy on the validation problems: record it as the run's
    # validation accuracy (what the threshold is calibrated on) and name the run.
    with np.load(folder / HISTORY_FILE, allow_pickle=False) as npz:
        arrays = {key: npz[key] for key in npz.files}
    with np.load(folder / PREDICTORS_FILE, allow_pickle=False) as npz:
        by_step = dict(zip(npz["steps"].tolist(), npz["atc_fit_accuracy"].tolist(), strict=True))
    arrays["validation_accuracy"] = np.array([by_step[float(s)] for s in arrays["steps"]], dtype=np.float64)
    arrays["run_name"] = np.array(_run_name(size, lr, seed))
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays)
    _atomic_write(folder / HISTORY_FILE, buffer.getvalue())
    record = {
        "settings": settings,
        "name": _run_name(size, lr, seed),
        "size": size,
        "learning_rate": lr,
        "seed": seed,
        "steps": int(trainer.global_step),
        "robustness": robust,
        "seconds": time.perf_counter() - started,
        "final_train_accuracy": float(arrays["train_accuracy"][-1].mean()),
        "final_test_accuracy": float(arrays["test_accuracy"][-1]),
        "threads": torch.get_num_threads(),
    }
    _atomic_write(marker, json.dumps(record, indent=1).encode())
    return record


_SWEEP_FIELDS = (
    "template", "trace_diversity", "sizes", "learning_rates", "seeds", "steps", "probes", "probe_size", "test_size",
    "validation_size", "atc_queries", "batch_size", "num_samples", "temperature", "max_new_tokens", "n_layer",
    "n_embd", "n_head", "robustness_run",
)  # fmt: skip


def _sweep_settings(config: ReplicationConfig) -> dict[str, Any]:
    """Return the settings that make a sweep run what it is (a kept run must have been made with them)."""
    return json.loads(json.dumps({name: getattr(config, name) for name in _SWEEP_FIELDS}))  # type: ignore[no-any-return]


def _base_rows(config: ReplicationConfig) -> list[dict[str, Any]]:
    """Return the problems the curation base model is pretrained on (none without base templates).

    Never a curation test problem. Pool and training problems may recur (with other trace phrasings, as a
    pretrained LLM has seen problems like its fine-tuning data): a base skill's problem space is too small to
    keep both the pretraining set and the pool apart.
    """
    if not config.curation_base_templates:
        return []
    task = ArithmeticTask(templates=config.curation_base_templates, trace_diversity=config.trace_diversity)
    _, _, test = _curation_data(config)
    return task.generate(config.curation_base_size, seed=_BASE_SEED, start_id=_BASE_START, exclude=test, unique=True)


def _curation_data(
    config: ReplicationConfig,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    return synthetic_curation_data(
        config.curation,
        pool_size=config.curation_pool_size,
        test_size=config.curation_test_size,
        templates=config.curation_templates,
        trace_diversity=config.trace_diversity,
        shares=config.curation_shares,
    )


def _curation_base(config: ReplicationConfig, folder: Path) -> dict[str, Any]:
    """Pretrain the base model the curation rounds fine-tune; saved in ``folder`` (``save_pretrained``)."""
    marker = folder / "base.json"
    rows = _base_rows(config)
    settings = _base_settings(config, rows)
    kept = _kept(marker, settings, "a base model")
    if kept is not None:
        return kept
    started = time.perf_counter()
    L.seed_everything(0, verbose=False)
    data = ReasoningDataModule(
        rows, fields=_FIELDS, tokenizer="char", batch_size=config.curation.batch_size, max_length=128, seed=0
    )
    model = _training_module(
        dict(config.curation.model),  # type: ignore[arg-type]  # a mapping: checked by ReplicationConfig
        "char",
        config.curation_base_learning_rate,
    )
    epochs = max(1, round(config.curation_base_steps * config.curation.batch_size / len(rows)))
    trainer = _quiet_trainer(epochs, [], accelerator="cpu")
    trainer.fit(model, datamodule=data)
    model.model.save_pretrained(folder)
    record = {"settings": settings, "base": str(folder), "steps": int(trainer.global_step),
              "seconds": time.perf_counter() - started}  # fmt: skip
    _atomic_write(marker, json.dumps(record, indent=1).encode())
    return record


def _base_settings(config: ReplicationConfig, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Return what makes the base model what it is: its training settings and (a digest of) its problems."""
    names = ("curation_base_steps", "curation_base_learning_rate")
    settings: dict[str, Any] = {name: getattr(config, name) for name in names}
    settings["model"], settings["batch_size"] = config.curation.model, config.curation.batch_size
    rows_json = json.dumps([[r["id"], r["question"], r["solution"]] for r in rows])
    settings["rows"] = hashlib.sha256(rows_json.encode()).hexdigest()[:16]  # they depend on the curation test set
    return json.loads(json.dumps(settings, default=list))  # type: ignore[no-any-return]


def _curation_chain(config: ReplicationConfig, strategy: str, seed: int, rounds: int, folder: Path) -> dict[str, Any]:
    """One strategy and seed of the curation comparison (``rounds=1``: only the shared first round)."""
    train, pool, test = _curation_data(config)
    threshold = config.curation_threshold or demo_threshold(
        ArithmeticTask(templates=config.curation_templates, trace_diversity=config.trace_diversity),
        train,
        char_tokenizer(),
    )
    chain = dataclasses.replace(
        config.curation, strategies=(strategy,), seeds=(seed,), rounds=rounds, memorization_threshold=threshold
    )
    if config.curation_base_templates:
        chain = dataclasses.replace(chain, model=str(folder / "base"))
    name = f"{strategy}-{seed}" if rounds > 1 else f"first-round-{seed}"
    state = run_curation(folder / name, train, pool, test, chain, round_cache=folder / "rounds")
    return {
        "strategy": strategy,
        "seed": seed,
        "first_round": rounds == 1,
        "rounds": state["runs"][f"{strategy}/{seed}"],
    }


def _init_worker() -> None:
    torch.set_num_threads(1)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)  # no per-run banners from the workers
    warnings.filterwarnings("ignore", message=".*(Total length of|does not have many workers|LeafSpec).*")


_Job: TypeAlias = "tuple[str, Callable[..., dict[str, Any]], tuple[Any, ...]]"  # (label, function, args)


def _run_jobs(
    jobs: Sequence[_Job],
    processes: int,
    log: Callable[[str], None],
    follow_up: Callable[[dict[str, Any]], list[_Job]] = lambda result: [],
    total: int | None = None,
) -> list[dict[str, Any]]:
    """Run jobs in ``processes`` spawned single-thread processes (inline when 1); return their results.

    ``follow_up(result)`` names jobs that may start once a job has returned ``result``; they go to the front of
    the queue (they continue a chain of dependent jobs, the longest path). ``total`` is the number of jobs to
    expect in all, for the progress lines.
    """
    results: list[dict[str, Any]] = []
    failures: list[tuple[str, BaseException]] = []
    started = time.perf_counter()
    queue = list(jobs)

    def finished(label: str, result: dict[str, Any]) -> None:
        results.append(result)
        queue[:0] = follow_up(result)
        log(f"{len(results)}/{max(total or 0, len(results) + len(queue))} done: {label} "
            f"({time.perf_counter() - started:.0f} s)")  # fmt: skip

    if processes == 1:
        while queue:
            label, function, args = queue.pop(0)
            finished(label, function(*args))
        return results
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=_init_worker) as pool:
        pending: dict[Any, str] = {}
        while queue or pending:
            while queue and len(pending) < processes:  # submit only what can run now: follow-ups jump the queue
                label, function, args = queue.pop(0)
                pending[pool.submit(function, *args)] = label
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                label = pending.pop(future)
                if future.exception() is not None:  # the others go on and are kept; the first failure is raised
                    failures.append((label, future.exception()))  # type: ignore[arg-type]
                    log(f"failed: {label}: {future.exception()}")
                    continue
                finished(label, future.result())
    if failures:
        label, error = failures[0]
        raise error
    return results


# --------------------------------------------------------------------------- the analyses


def data_efficiency(
    iid: tuple[Sequence[int], Sequence[float]], curated: tuple[Sequence[int], Sequence[float]]
) -> dict[str, Any]:
    """Return the data-efficiency ratio of a curation strategy over i.i.d. acquisition (Kang et al., Figure 6).

    ``iid`` and ``curated`` (``premem`` or another strategy) are ``(training-set sizes, test accuracies)``
    curves. The ratio is the number of examples i.i.d. acquisition needs to reach its best accuracy divided by
    the number the curated strategy needs to reach the same accuracy, read off its curve by linear
    interpolation between rounds.

    Returns:
        ``{"iid_best", "iid_examples", "examples", "ratio"}``; ``examples`` (the curated strategy's) and
        ``ratio`` are ``None`` when its curve never reaches i.i.d.'s best.

    Example:
        >>> data_efficiency(([100, 200, 300], [0.1, 0.2, 0.3]), ([100, 200, 300], [0.2, 0.4, 0.5]))["ratio"]
        2.0
    """
    (iid_sizes, iid_acc), (sizes, acc) = iid, curated
    for name, (n, a) in (("iid", iid), ("curated", curated)):
        if len(n) != len(a) or not len(n):
            raise ValueError(
                f"the {name} curve needs as many sizes as accuracies (at least one), got {len(n)}, {len(a)}."
            )
        if any(later <= earlier for earlier, later in itertools.pairwise(n)):
            raise ValueError(f"the {name} curve's sizes must increase, got {list(n)}.")
    best_index = int(np.argmax(iid_acc))
    best, needed = float(iid_acc[best_index]), int(iid_sizes[best_index])
    reached: float | None = None
    for i, value in enumerate(acc):
        if value >= best:
            if i == 0 or acc[i - 1] >= value:
                reached = float(sizes[i])
            else:  # the curve crosses `best` between round i-1 and round i
                share = (best - acc[i - 1]) / (value - acc[i - 1])
                reached = float(sizes[i - 1] + share * (sizes[i] - sizes[i - 1]))
            break
    return {
        "iid_best": best,
        "iid_examples": needed,
        "examples": reached,
        "ratio": None if reached is None else needed / reached,
    }


def _loo_r2(runs: Sequence[Any], table: Mapping[str, Any], name: str) -> float | None:
    """Leave-one-run-out R² of test accuracy on predictor ``name``: fit a line on the other runs, predict the run.

    For pre-memorization accuracy the threshold is also re-calibrated (on validation accuracy) without the run.
    """
    from lightning_premem.analysis import _premem_means, calibrate_threshold

    points = [[(c[name], c["test_accuracy"]) for c in run["checkpoints"]] for run in table["runs"]]
    if any(x is None or y is None for run in points for x, y in run):
        return None
    predicted: list[float] = []
    truth: list[float] = []
    for k in range(len(points)):
        others = [i for i in range(len(points)) if i != k]
        if name == "pre_memorization_accuracy":
            try:
                p = calibrate_threshold([runs[i] for i in others], target="validation_accuracy").threshold
            except ValueError:  # validation accuracy constant on the other runs
                return None
            means = _premem_means(runs, p)
            bounds = np.cumsum([0, *(run.num_checkpoints for run in runs)])
            x_of = [means[bounds[i] : bounds[i + 1]] for i in range(len(runs))]
        else:
            x_of = [np.array([x for x, _ in run], dtype=np.float64) for run in points]
        x_fit = np.concatenate([x_of[i] for i in others])
        y_fit = np.concatenate([[y for _, y in points[i]] for i in others])
        if np.ptp(x_fit) == 0:
            return None
        slope, intercept = np.polyfit(x_fit, y_fit, 1)
        predicted.extend(slope * x_of[k] + intercept)
        truth.extend(y for _, y in points[k])
    y = np.asarray(truth, dtype=np.float64)
    total = float(((y - y.mean()) ** 2).sum())
    if total == 0:
        return None
    return 1.0 - float(((y - np.asarray(predicted)) ** 2).sum()) / total


def _prediction(config: ReplicationConfig, folder: Path) -> dict[str, Any]:
    from lightning_premem.analysis import PREDICTORS, _r2_or_none, build_report, predictor_table, write_report
    from lightning_premem.functional import AUTHORS_LOGLOG_THRESHOLDS, loglog_threshold_to_perplexity
    from lightning_premem.history import load_run_histories

    names = sorted(_run_name(*key) for key in _sweep_keys(config))  # only this sweep's runs, not stale folders
    runs = load_run_histories([folder / "runs" / name / HISTORY_FILE for name in names])
    task_p = demo_threshold(_task(config), _held_out(config)[0], char_tokenizer())
    origin = "the task's trace randomness (`premem demo`'s rule)"
    try:
        report = build_report(runs, threshold=task_p, calibrate=True, use_calibrated=True, seed=0)
    except ValueError as err:  # validation accuracy never varied (a --quick run): keep the task's rule
        report = build_report(
            runs, threshold=task_p, threshold_origin=f"{origin}; calibration impossible: {str(err).rstrip('.')}"
        )
    write_report(report, folder)
    authors_p = loglog_threshold_to_perplexity(AUTHORS_LOGLOG_THRESHOLDS["gsm8k"])
    pairs = [(c["validation_accuracy"], c["test_accuracy"]) for run in report["runs"] for c in run["checkpoints"]]
    return {
        "threshold": report["threshold"],
        "threshold_origin": report["threshold_origin"],
        "r2": report["r2"],
        "loo_r2": {name: _loo_r2(runs, report, name) for name in PREDICTORS},
        # a reference, not a predictor from the training set: accuracy measured on labeled held-out problems
        "validation_accuracy": {
            "r2": None if not pairs or any(None in pair for pair in pairs) else _r2_or_none(*zip(*pairs, strict=True)),
            "loo_r2": _loo_r2(runs, report, "validation_accuracy"),
        },
        "r2_at_task_threshold": predictor_table(runs, task_p)["r2"]["pre_memorization_accuracy"],
        "task_threshold": task_p,
        "r2_at_authors_threshold": predictor_table(runs, authors_p)["r2"]["pre_memorization_accuracy"],
        "authors_threshold": authors_p,
        "calibration": report["calibration"],
        "robustness": report["robustness"],
        "runs": [
            {"name": run["name"], "final": run["checkpoints"][-1], "num_checkpoints": len(run["checkpoints"])}
            for run in report["runs"]
        ],
        "num_checkpoints": sum(len(run["checkpoints"]) for run in report["runs"]),
    }


def _curation(config: ReplicationConfig, folder: Path, chains: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    merged = {"runs": {f"{c['strategy']}/{c['seed']}": c["rounds"] for c in chains}}
    _write_outputs(folder, merged, config.curation)
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for strategy in config.curation.strategies:
        per_seed = [merged["runs"][f"{strategy}/{seed}"] for seed in config.curation.seeds]
        sizes = [r["num_train"] for r in per_seed[0]]
        curves[strategy] = (
            sizes,
            [float(np.mean([run[i]["test_accuracy"] for run in per_seed])) for i in range(len(sizes))],
        )
    per_seed_ratio = {
        seed: data_efficiency(
            *(
                ([r["num_train"] for r in merged["runs"][f"{s}/{seed}"]],
                 [r["test_accuracy"] for r in merged["runs"][f"{s}/{seed}"]])
                for s in ("iid", "premem")
            )
        )["ratio"]
        for seed in config.curation.seeds
    }  # fmt: skip
    _, pool, _ = _curation_data(config)
    group_of = {int(r["id"]): r[config.curation.group_key] for r in pool}
    acquired_mix = {}  # strategy -> one {group: share} per acquisition (over seeds)
    for strategy in config.curation.strategies:
        records = [merged["runs"][f"{strategy}/{seed}"] for seed in config.curation.seeds]
        acquired_mix[strategy] = [
            _shares(Counter(group_of[i] for chain in records for i in chain[index]["acquired"]))
            for index in range(config.curation.rounds - 1)
        ]
    return {
        "curves": curves,
        "efficiency": {s: data_efficiency(curves["iid"], curves[s]) for s in config.curation.strategies if s != "iid"},
        "premem_ratio_per_seed": per_seed_ratio,
        "acquired_mix": acquired_mix,
    }


def _shares(counts: Counter[Any]) -> dict[Any, float]:
    """``{group: share}`` of a count, groups sorted; empty for no counts."""
    total = sum(counts.values())
    return {g: counts[g] / total for g in sorted(counts)} if total else {}


# --------------------------------------------------------------------------- the command


def run_replication(
    output: str | Path,
    *,
    config: ReplicationConfig | None = None,
    quick: bool = False,
    jobs: int | None = None,
    log: Callable[[str], None] = print,
) -> Path:
    """Run the three replications; write ``replication.md``, ``summary.json``, figures and raw histories.

    Args:
        output: the folder (an interrupted run in it resumes: finished runs and rounds are kept).
        config: the settings (default :class:`ReplicationConfig`; ``quick=True``: :data:`QUICK`).
        quick: the seconds-long smoke variant.
        jobs: overrides ``config.jobs`` (processes side by side).
        log: where progress lines go.

    Returns:
        The path of ``replication.md``.
    """
    config = config or (QUICK if quick else ReplicationConfig())
    if jobs is not None:
        config = dataclasses.replace(config, jobs=jobs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()

    def say(message: str) -> None:
        log(f"[premem replicate] {message}")

    sweep = _sweep_keys(config)
    curation_dir = output / "curation"
    first = [(f"curation first round, seed {seed}", _curation_chain, (config, "iid", seed, 1, curation_dir))
             for seed in config.curation.seeds]  # fmt: skip
    base = [("curation base model", _curation_base, (config, curation_dir / "base"))]
    runs = [(f"sweep {_run_name(*key)}", _sweep_run, (config, *key, output / "prediction" / "runs" / _run_name(*key)))
            for key in sweep]  # fmt: skip

    def chains(result: dict[str, Any]) -> list[_Job]:  # base model -> a seed's shared first round -> its chains
        if "base" in result:
            return first
        if not result.get("first_round"):
            return []
        seed = result["seed"]
        return [
            (f"curation {strategy}, seed {seed}", _curation_chain,
             (config, strategy, seed, config.curation.rounds, curation_dir))
            for strategy in config.curation.strategies
        ]  # fmt: skip

    num_chains = len(config.curation.strategies) * len(config.curation.seeds)
    say(
        f"{len(runs)} sweep runs and {num_chains} curation chains "
        f"of {config.curation.rounds} rounds in {config.jobs} process(es); results are kept as they finish (rerun "
        "the same command to resume)"
    )
    work: list[_Job] = [*(base if config.curation_base_templates else first), *runs]
    total = len(runs) + len(first) + num_chains + (len(base) if config.curation_base_templates else 0)
    results = _run_jobs(work, config.jobs, say, follow_up=chains, total=total)
    sweep_records = [r for r in results if "name" in r]
    chain_results = [r for r in results if "strategy" in r and not r["first_round"]]
    say("analysing")
    prediction = _prediction(config, output / "prediction")
    curation = _curation(config, curation_dir, chain_results)
    seconds = time.perf_counter() - started
    summary = {
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=list)),
        "seconds": seconds,
        "cpu_count": os.cpu_count(),
        "sweep_runs": sorted(sweep_records, key=lambda r: r["name"]),
        "prediction": prediction,
        "curation": curation,
    }
    (output / "summary.json").write_text(json.dumps(summary, indent=1, default=float))
    path = output / "replication.md"
    path.write_text(_markdown(config, summary, output))
    say(f"done in {seconds / 60:.1f} min: {path}")
    return path


#: The paper's numbers (Kang et al., arXiv 2411.07681): our replay of the authors' GSM8K logs, and (†) the
#: squared correlations printed in their baselines notebook (``gsm8k_orig_line_baselines.ipynb``: train accuracy
#: minus the predictor against the generalization gap, 9 checkpoints of 3 Llama3-8B runs).
_PAPER = {
    "pre_memorization_accuracy": "0.94 (GSM8K); 0.97 †",
    "train_accuracy": "0.40 (GSM8K)",
    "gradient_variance": "0.52 †",
    "distance_from_init": "0.34 †",
    "atc": "0.00 †",
}
_TARGETS = {"premem_r2": 0.85, "train_r2": 0.3, "efficiency": 1.5}


def _verdict(ok: bool | None) -> str:
    return "not measurable" if ok is None else ("met" if ok else "**missed**")


def _image(output: Path, relative: str, alt: str) -> list[str]:
    """Markdown lines showing a figure, or nothing when the figure was not made."""
    return [f"![{alt}]({relative})", ""] if (output / relative).is_file() else []


def _markdown(config: ReplicationConfig, summary: Mapping[str, Any], output: Path) -> str:
    from lightning_premem.analysis import _LABELS, PREDICTORS, _fmt, _robustness_table

    pred, cur = summary["prediction"], summary["curation"]
    r2, loo = pred["r2"], pred["loo_r2"]
    premem_r2, train_r2 = r2["pre_memorization_accuracy"], r2["train_accuracy"]
    baselines = [r2[n] for n in PREDICTORS if n != "pre_memorization_accuracy" and r2[n] is not None]
    beaten = [
        f"{_LABELS[n]} {r2[n]:.3f}"
        for n in PREDICTORS
        if n != "pre_memorization_accuracy" and r2[n] is not None and premem_r2 is not None and r2[n] >= premem_r2
    ]
    calibration = pred["calibration"] or {}
    reference = pred.get("validation_accuracy") or {}
    lines = [
        "# Replication of Kang et al. (arXiv 2411.07681) at CPU scale",
        "",
        f"Made by `premem replicate` in {summary['seconds'] / 60:.1f} min with {config.jobs} process(es) on a "
        f"machine with {summary['cpu_count']} CPU(s) (the time of this invocation: a resumed one counts only what "
        "it redid). Raw histories under `prediction/runs/`, curation records "
        "under `curation/`, every number below in `summary.json`.",
        "",
        "## 1. Pre-memorization accuracy predicts test accuracy",
        "",
        f"{len(summary['sweep_runs'])} runs of a {config.n_layer}-layer, {config.n_embd}-dim GPT trained from "
        f"scratch on `{config.template}` problems (training sets {', '.join(map(str, config.sizes))}; learning "
        f"rates {', '.join(f'{lr:g}' for lr in config.learning_rates)}; seeds {list(config.seeds)}; about "
        f"{config.steps} steps each), {pred['num_checkpoints']} checkpoints in all, each probing "
        f"{config.probe_size} training problems, {config.test_size} test and {config.validation_size} validation "
        f"problems with {config.num_samples} samples at T = {config.temperature}.",
        "",
        (
            "Threshold rule: p is calibrated on the **validation** problems' accuracy over all runs (the "
            f"R²-maximising p; `premem report`'s calibration), never on test accuracy: p = {pred['threshold']:.4f} "
            f"(validation R² {_fmt(calibration.get('fit_r2'))}). Leave-one-run-out re-calibrates p without the run."
            if calibration.get("threshold") is not None
            else f"Threshold p = {pred['threshold']:.4f}, from {pred['threshold_origin']}."
        ),
        "",
        "| predictor | R², all checkpoints | R², leave one run out | paper |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {_LABELS[n]} | {_fmt(r2[n])} | {_fmt(loo[n])} | {_PAPER.get(n, '')} |" for n in PREDICTORS),
        f"| *reference:* validation accuracy | {_fmt(reference.get('r2'))} | {_fmt(reference.get('loo_r2'))} | |",
        "",
        "ATC (Garg et al.) thresholds the confidence (mean token log-probability) of sampled answers; its threshold "
        "is fitted at every checkpoint on the validation problems, and it is applied to "
        + (
            f"the first {config.probe_size} training problems, as in the authors' notebook (which fits one "
            "threshold against one run's test accuracy): a predictor from the training set, like the others."
            if config.atc_queries == "train"
            else "the test problems (Garg et al.'s setting)."
        )
        + " The reference row is not a predictor from the training set: accuracy measured on labeled held-out "
        "problems drawn like the test problems (what ATC on the test problems amounts to here). † the authors' "
        "baselines notebook: squared correlation of train accuracy minus the predictor with the generalization gap "
        "(9 checkpoints of 3 Llama3-8B runs on GSM8K).",
        "",
        f"At other thresholds: p = {pred['task_threshold']:.4f} from the task's trace randomness "
        f"(`premem demo`'s rule) gives R² {_fmt(pred['r2_at_task_threshold'])}; the authors' GSM8K p = "
        f"{pred['authors_threshold']:.4f} gives {_fmt(pred['r2_at_authors_threshold'])}.",
        "",
        f"- pre-memorization R² >= {_TARGETS['premem_r2']}: "
        + _verdict(None if premem_r2 is None else premem_r2 >= _TARGETS["premem_r2"]),
        "- above every baseline: "
        + _verdict(None if premem_r2 is None or not baselines else premem_r2 > max(baselines))
        + ("" if premem_r2 is None or not beaten else f" ({', '.join(beaten)} at or above it)"),
        f"- train-accuracy R² <= {_TARGETS['train_r2']}: "
        + _verdict(None if train_r2 is None else train_r2 <= _TARGETS["train_r2"]),
        "",
        *_image(output, "prediction/calibration.png", "R² against the threshold p"),
        *_image(output, "prediction/premem_vs_test.png", "test accuracy against pre-memorization accuracy"),
        *_image(output, "prediction/predictors.png", "test accuracy against each predictor"),
        "| run | train accuracy | pre-memorization accuracy | test accuracy | seconds |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    seconds = {r["name"]: r["seconds"] for r in summary["sweep_runs"]}
    for run in pred["runs"]:
        final = run["final"]
        lines.append(
            f"| {run['name']} | {_fmt(final['train_accuracy'])} | {_fmt(final['pre_memorization_accuracy'])} | "
            f"{_fmt(final['test_accuracy'])} | {seconds.get(run['name'], math.nan):.0f} |"
        )
    lines += ["", "Last checkpoint of each run. Full report: [prediction/report.md](prediction/report.md).", ""]
    lines += ["## 2. Low pre-memorization accuracy marks brittle solutions", ""]
    for relation in pred["robustness"]:
        bins = [b for b in relation["bins"] if b["count"]]
        low, high = bins[0], bins[-1]
        ci = relation["spearman_ci95"]
        lines += [
            f"Run {relation['run']} at step {relation['step']}: {relation['num_examples']} training questions, "
            f"clean accuracy {relation['clean_accuracy']:.3f}, under each perturbation "
            + ", ".join(f"{p!r} {v:.3f}" for p, v in relation["perturbed_accuracy"].items())
            + ".",
            "",
            *_robustness_table(relation),
            "",
            f"Spearman correlation of pre-memorization accuracy with the drop: {_fmt(relation['spearman'])}"
            + (f" (95% bootstrap interval {ci[0]:.3f} to {ci[1]:.3f})." if ci else "."),
            f"Target, the lowest non-empty bin drops more than the highest: {low['accuracy_drop']:.3f} vs "
            f"{high['accuracy_drop']:.3f}, "
            + _verdict(None if low is high else low["accuracy_drop"] > high["accuracy_drop"])
            + ". Paper: examples with low pre-memorization accuracy lose more accuracy under perturbation.",
            "",
            *_image(output, "prediction/robustness_0.png", "accuracy drop by pre-memorization accuracy"),
        ]
    cc = config.curation
    premem_eff = cur["efficiency"]["premem"]
    sizes = next(iter(cur["curves"].values()))[0]
    lines += [
        "## 3. Curation by pre-memorization accuracy",
        "",
        f"Pool of {config.curation_pool_size} problems of templates "
        + (
            ", ".join(
                f"`{t}` ({share:.0%})"
                for t, share in zip(config.curation_templates, config.curation_shares, strict=True)
            )
            if config.curation_shares
            else ", ".join(f"`{t}`" for t in config.curation_templates)
        )
        + " (the initial set and the test problems have the same mix); "
        f"{cc.rounds} rounds from {cc.initial_size} examples, +{cc.acquire_per_round} per round; each round "
        + (
            f"fine-tunes a base model (pretrained on {config.curation_base_size} "
            f"{', '.join(f'`{t}`' for t in config.curation_base_templates)} problems for about "
            f"{config.curation_base_steps} steps, none of them a test problem) "
            if config.curation_base_templates
            else "trains a model from scratch "
        )
        + f"for about {cc.steps_per_round or 'n/a'} steps at learning rate {cc.learning_rate:g}; seeds "
        f"{list(cc.seeds)}; test on {config.curation_test_size} fresh problems of all templates. Mean test "
        "accuracy over seeds:",
        "",
        "| strategy | " + " | ".join(f"n = {n}" for n in sizes) + " | examples to reach iid's best | ratio |",
        "| --- | " + " | ".join("---:" for _ in sizes) + " | ---: | ---: |",
    ]
    for strategy, (_, accuracy) in cur["curves"].items():
        eff = cur["efficiency"].get(strategy)
        reach = f"{eff['examples']:.0f}" if eff and eff["examples"] is not None else (
            "n/a" if eff else f"{cur['efficiency']['premem']['iid_examples']}")  # fmt: skip
        lines.append(
            f"| {strategy} | "
            + " | ".join(f"{a:.3f}" for a in accuracy)
            + f" | {reach} | "
            + (_fmt(eff["ratio"], 2) if eff else "1")
            + " |"
        )
    ratio = premem_eff["ratio"]
    lines += [
        "",
        f"Data efficiency of `premem` over `iid` (examples iid needs for its best accuracy "
        f"{premem_eff['iid_best']:.3f} / examples premem needs for the same): **{_fmt(ratio, 2)}** "
        f"(per seed: {', '.join(f'{s}: {_fmt(v, 2)}' for s, v in cur['premem_ratio_per_seed'].items())}). "
        f"Paper: 1.5-2x. Target >= {_TARGETS['efficiency']}: "
        + _verdict(None if ratio is None else ratio >= _TARGETS["efficiency"])
        + "."
        + (
            " iid's best is its first round, which every strategy shares: more data did not raise iid's test "
            "accuracy at this compute, so the ratio cannot exceed 1 and says nothing about the strategies."
            if premem_eff["iid_examples"] == sizes[0] and len(sizes) > 1
            else ""
        ),
        "",
        "What each strategy acquired (each acquisition's mix, over seeds): "
        + "; ".join(
            f"{strategy} "
            + " then ".join("(" + ", ".join(f"`{g}` {share:.0%}" for g, share in mix.items()) + ")" for mix in mixes)
            for strategy, mixes in cur.get("acquired_mix", {}).items()
            if any(mixes)
        )
        + ".",
        "",
        *_image(output, "curation/curation.png", "test accuracy against training examples"),
    ]
    return "\n".join(lines)
