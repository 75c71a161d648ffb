"""``premem replicate``: the paper's three findings at CPU scale, with the package's own tools.

1. **Prediction.** A sweep of small GPTs trained from scratch on the synthetic task
   (:class:`~lightning_premem.data.synthetic.ArithmeticTask`), learning rates x training-set sizes x seeds,
   each probed at several checkpoints by :class:`~lightning_premem.PreMemorizationCallback` and
   :class:`~lightning_premem.callbacks.BaselinePredictorsCallback`. The memorization threshold is
   calibrated on a *validation* split of fresh problems (never the test split), then the R² of test
   accuracy on pre-memorization accuracy and on every baseline is measured over all checkpoints and
   leave-one-run-out.
2. **Robustness.** One run of the sweep also probes its training questions under prompt
   perturbations; the accuracy drop is binned by pre-memorization accuracy.
3. **Curation.** :func:`~lightning_premem.experiments.curation.run_curation` for every strategy and several
   seeds on a pool of templates of different difficulty; the data-efficiency ratio of ``premem`` over
   ``iid``.

Every unit of work (a sweep run, a curation chain) writes its results when it ends, so an interrupted
``replicate`` resumes where it stopped; units run in ``jobs`` single-threaded processes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import multiprocessing
import os
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import lightning as L  # noqa: N812  (the library's own convention)
import torch

from lightning_premem._checks import check_int
from lightning_premem.callbacks import BaselinePredictorsCallback, PreMemorizationCallback
from lightning_premem.data import ReasoningDataModule
from lightning_premem.data.curation import STRATEGIES
from lightning_premem.data.synthetic import ArithmeticTask
from lightning_premem.experiments.curation import (
    CURATION_FIELDS,
    CurationConfig,
    check_shares,
    run_curation,
    synthetic_curation_data,
)
from lightning_premem.experiments.demo import demo_threshold
from lightning_premem.experiments.recipe import gpt_config, quiet_trainer, training_module
from lightning_premem.experiments.replication_report import (
    analyse_curation,
    analyse_prediction,
    data_efficiency,
    markdown,
)
from lightning_premem.history import HISTORY_FILE, atomic_write, load_run_histories
from lightning_premem.probes.sampling import SamplingConfig
from lightning_premem.tokenization import char_tokenizer

__all__ = ["QUICK", "ReplicationConfig", "data_efficiency", "run_replication"]  # data_efficiency: see the report

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
    """Template of the prediction sweep's problems (see :data:`~lightning_premem.data.templates.TEMPLATES`)."""
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
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(num_samples=4, max_new_tokens=40, batch_size=64)
    )
    """How every probe of the sweep samples (4 answers per problem at temperature 0.8, up to 40 tokens)."""
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
    rule (:func:`~lightning_premem.experiments.demo.demo_threshold`), as for the sweep."""
    curation_pool_size: int = 5000
    curation_test_size: int = 400
    jobs: int = 2
    """Processes running sweep runs and curation chains side by side (one thread each)."""

    def __post_init__(self) -> None:
        for name in ("steps", "probes", "probe_size", "test_size", "validation_size", "batch_size",
                     "n_layer", "n_embd", "n_head", "curation_pool_size", "curation_test_size",
                     "curation_base_size", "curation_base_steps",
                     "jobs"):  # fmt: skip
            check_int(getattr(self, name), name, minimum=1)
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
            check_shares(self.curation_shares, self.curation_templates)
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
    sampling=SamplingConfig(num_samples=2, max_new_tokens=16, batch_size=64),
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
        sampling=SamplingConfig(num_samples=1, max_new_tokens=16, batch_size=64),
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
        train,
        test=test,
        fields=CURATION_FIELDS,
        tokenizer="char",
        batch_size=config.batch_size,
        max_length=128,
        seed=seed,
    )
    model = training_module(gpt_config(config.n_layer, config.n_embd, config.n_head), "char", lr)
    robust = (size, lr) == config.robustness_run and seed == config.seeds[0]
    premem = PreMemorizationCallback(
        threshold=demo_threshold(task, train, model.tokenizer),
        validation_examples=validation,  # validation accuracy: what the threshold is calibrated on
        max_examples=config.probe_size,
        every_n_epochs=every,
        sampling=config.sampling,
        seed=seed,
        history_dir=folder,
        run_name=_run_name(size, lr, seed),
        log_histogram=False,
        log_dynamics=False,
        progress=False,
        perturbations="default" if robust else None,
    )
    predictors = BaselinePredictorsCallback(
        every_n_epochs=every,
        atc_examples=validation,
        atc_queries=train[: config.probe_size] if config.atc_queries == "train" else test,
        sampling=config.sampling,
        seed=seed,
        history_dir=folder,
        run_name=_run_name(size, lr, seed),
    )
    trainer = quiet_trainer(epochs, [premem, predictors], accelerator="cpu")
    trainer.fit(model, datamodule=data)
    final = premem.history[-1]
    record = {
        "settings": settings,
        "name": _run_name(size, lr, seed),
        "size": size,
        "learning_rate": lr,
        "seed": seed,
        "steps": int(trainer.global_step),
        "robustness": robust,
        "seconds": time.perf_counter() - started,
        "final_train_accuracy": float(final["accuracy"].mean()),
        "final_test_accuracy": float(final["test_accuracy"]),
        "threads": torch.get_num_threads(),
    }
    atomic_write(marker, json.dumps(record, indent=1).encode())
    return record


_SWEEP_FIELDS = (
    "template", "trace_diversity", "sizes", "learning_rates", "seeds", "steps", "probes", "probe_size", "test_size",
    "validation_size", "atc_queries", "batch_size", "sampling", "n_layer",
    "n_embd", "n_head", "robustness_run",
)  # fmt: skip


def _sweep_settings(config: ReplicationConfig) -> dict[str, Any]:
    """Return the settings that make a sweep run what it is (a kept run must have been made with them)."""
    settings = {name: getattr(config, name) for name in _SWEEP_FIELDS}
    settings["sampling"] = config.sampling.as_dict()
    return json.loads(json.dumps(settings))  # type: ignore[no-any-return]


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
        rows, fields=CURATION_FIELDS, tokenizer="char", batch_size=config.curation.batch_size, max_length=128, seed=0
    )
    model = training_module(
        dict(config.curation.model),  # type: ignore[arg-type]  # a mapping: checked by ReplicationConfig
        "char",
        config.curation_base_learning_rate,
    )
    epochs = max(1, round(config.curation_base_steps * config.curation.batch_size / len(rows)))
    trainer = quiet_trainer(epochs, [], accelerator="cpu")
    trainer.fit(model, datamodule=data)
    model.model.save_pretrained(folder)
    record = {"settings": settings, "base": str(folder), "steps": int(trainer.global_step),
              "seconds": time.perf_counter() - started}  # fmt: skip
    atomic_write(marker, json.dumps(record, indent=1).encode())
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
    names = sorted(_run_name(*key) for key in sweep)  # only this sweep's runs, not stale folders
    histories = load_run_histories([output / "prediction" / "runs" / name / HISTORY_FILE for name in names])
    task_p = demo_threshold(_task(config), _held_out(config)[0], char_tokenizer())
    prediction = analyse_prediction(histories, task_p, output / "prediction")
    curation = analyse_curation(config.curation, curation_dir, chain_results, _curation_data(config)[1])
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
    path.write_text(markdown(config, summary, output))
    say(f"done in {seconds / 60:.1f} min: {path}")
    return path


