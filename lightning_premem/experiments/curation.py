"""Curation rounds (Algorithm 1 of Kang et al.) for several strategies and seeds: ``premem curate``.

Each (strategy, seed) run starts from the same initial training set and, for ``rounds`` rounds,
trains a model from scratch with :class:`~lightning_premem.PreMemorizationCallback`, records the
test accuracy of its last probe against the number of training examples, then acquires
``acquire_per_round`` candidate-pool examples chosen by the strategy
(:func:`~lightning_premem.data.curation.select_for_acquisition`) and adds them. Every finished round is
written to ``curation.json`` at once, so an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812  (the library's own convention)

from lightning_premem._checks import check_int
from lightning_premem.analysis.plots import plot_curation
from lightning_premem.callbacks import PreMemorizationCallback
from lightning_premem.data import ReasoningDataModule
from lightning_premem.data.curation import STRATEGIES, largest_remainders, select_for_acquisition
from lightning_premem.data.synthetic import ArithmeticTask
from lightning_premem.data.templates import TEMPLATES
from lightning_premem.experiments.recipe import gpt_config, quiet_trainer, training_module
from lightning_premem.history import atomic_write
from lightning_premem.probes.sampling import SamplingConfig

__all__ = [
    "CURATION_FIELDS",
    "QUICK",
    "CurationConfig",
    "check_shares",
    "run_curation",
    "synthetic_curation_data",
    "write_curation_outputs",
]

# settings that do not change how one round trains (they change which rounds there are)
_NOT_TRAINING = frozenset({"strategies", "seeds", "rounds", "acquire_per_round", "threshold"})
#: The ``fields`` of a ReasoningDataModule over the synthetic task's rows (they keep their own ids).
CURATION_FIELDS = {"question": "question", "solution": "solution", "id": "id"}


@dataclass(frozen=True)
class CurationConfig:
    """Settings of a curation comparison (defaults: a small synthetic study, roughly 10-20 min a run on CPU)."""

    strategies: tuple[str, ...] = STRATEGIES
    seeds: tuple[int, ...] = (0,)
    rounds: int = 3
    """Training rounds per run (acquisitions happen between them)."""
    initial_size: int = 200
    acquire_per_round: int = 200
    threshold: float = 0.5
    """``t`` of Algorithm 1: examples whose score is below it are the ones to find more of."""
    epochs: int = 30
    probe_every_n_epochs: int = 10
    steps_per_round: int | None = None
    """Train every round for about this many optimizer steps instead of ``epochs`` (equal compute per round,
    whatever the training-set size), probed ``probes_per_round`` times at even intervals, the last at the end."""
    probes_per_round: int = 4
    """With ``steps_per_round``: probes per round. Pre-memorization accuracy needs a history: from a single
    probe, every example already memorized at it scores 0."""
    max_probe_examples: int = 300
    sampling: SamplingConfig = field(
        default_factory=lambda: SamplingConfig(num_samples=4, max_new_tokens=48, batch_size=64)
    )
    """How the probes sample (4 answers per probed question, up to 48 tokens)."""
    batch_size: int = 32
    learning_rate: float = 1e-2
    memorization_threshold: float = 1.155
    """Perplexity ``p`` of the callback (the demo's value for the synthetic task)."""
    model: Mapping[str, Any] | str = field(default_factory=lambda: gpt_config(3, 96, 3))
    """A from-scratch config mapping, or a local path / hub name of a pretrained causal LM."""
    tokenizer: str = "char"
    group_key: str = "template"
    answer_kind: str = "gsm8k"

    def __post_init__(self) -> None:
        unknown = [s for s in self.strategies if s not in STRATEGIES]
        if unknown or not self.strategies:
            raise ValueError(f"`strategies` must be a non-empty subset of {STRATEGIES}, got {self.strategies!r}.")
        if not self.seeds:
            raise ValueError("`seeds` must name at least one seed.")
        for name in (
            "rounds",
            "initial_size",
            "epochs",
            "probe_every_n_epochs",
            "max_probe_examples",
            "batch_size",
            "probes_per_round",
        ):
            check_int(getattr(self, name), name, minimum=1)
        if self.steps_per_round is not None:
            check_int(self.steps_per_round, "steps_per_round", minimum=1)
        if not isinstance(self.sampling, SamplingConfig):
            raise TypeError(f"`sampling` must be a SamplingConfig, got {type(self.sampling).__name__}.")
        if self.acquire_per_round < 0:
            raise ValueError(f"`acquire_per_round` must be >= 0, got {self.acquire_per_round!r}.")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"`threshold` must be in [0, 1], got {self.threshold!r}.")


QUICK = CurationConfig(
    strategies=("premem", "iid"),
    rounds=2,
    initial_size=16,
    acquire_per_round=8,
    epochs=2,
    probe_every_n_epochs=1,
    max_probe_examples=16,
    sampling=SamplingConfig(num_samples=1, max_new_tokens=16, batch_size=64),
    batch_size=8,
    model=gpt_config(1, 32, 2),
)


def synthetic_curation_data(
    config: CurationConfig,
    *,
    pool_size: int = 3000,
    test_size: int = 300,
    seed: int = 0,
    templates: Sequence[str] | None = None,
    trace_diversity: int = 3,
    shares: Sequence[float] | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    """Make an initial training set, a candidate pool and a test set from the synthetic task, templates mixed.

    By default every template of :data:`~lightning_premem.data.templates.TEMPLATES` (from 2-step to 4-step
    problems) is in play, so strategies differ in which skills they acquire; ``templates`` picks others,
    ``trace_diversity`` sets the randomness of the solution traces. Each row's template is drawn uniformly
    (templates with fewer valid problems, the subtractions, come out a little rarer) unless ``shares`` gives
    each template's share of every set, in the order of ``templates`` (e.g. ``(0.75, 0.25)``: a quarter of the
    problems are of the second skill); the counts are then exact (largest remainders) and the rows shuffled.
    No problem appears twice across the three sets.

    Raises:
        ValueError: ``shares`` not one positive number per template summing to 1.
    """
    names = tuple(TEMPLATES if templates is None else templates)
    task = ArithmeticTask(templates=names, trace_diversity=trace_diversity)
    if shares is None:
        train = task.generate(config.initial_size, seed=seed, unique=True)
        pool = task.generate(pool_size, seed=seed + 1, start_id=100_000, exclude=train, unique=True)
        test = task.generate(test_size, seed=seed + 2, start_id=200_000, exclude=[*train, *pool], unique=True)
        return train, pool, test
    weights = check_shares(shares, names)
    train = _draw_mix(task, weights, config.initial_size, seed, 0, [])
    pool = _draw_mix(task, weights, pool_size, seed + 1, 100_000, train)
    test = _draw_mix(task, weights, test_size, seed + 2, 200_000, [*train, *pool])
    return train, pool, test


def check_shares(shares: Sequence[float], templates: Sequence[str]) -> dict[str, float]:
    """Return ``{template: share}`` for one positive share per template summing to 1, or raise ``ValueError``."""
    values = list(shares) if isinstance(shares, Sequence) and not isinstance(shares, str) else None
    if values is None or len(values) != len(templates):
        raise ValueError(
            f"`shares` must give one share per template ({len(templates)}: {', '.join(templates)}), got {shares!r}."
        )
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= 1 for v in values):
        raise ValueError(f"every share must be a number in (0, 1], got {values!r}.")
    if abs(sum(values) - 1) > 1e-6:
        raise ValueError(f"`shares` must sum to 1, got {values!r} (sum {sum(values):.6g}).")
    if len(set(templates)) != len(templates):
        raise ValueError(f"`templates` must not repeat a template when `shares` are given, got {list(templates)!r}.")
    return dict(zip(templates, (float(v) for v in values), strict=True))


def _draw_mix(
    task: ArithmeticTask,
    weights: Mapping[str, float],
    n: int,
    seed: int,
    start_id: int,
    exclude: Sequence[Mapping[str, Any]],
) -> list[dict[str, Any]]:
    """``n`` rows, ``share * n`` of each template rounded by largest remainders (the counts sum to ``n``), shuffled."""
    rows: list[dict[str, Any]] = []
    for name, count in largest_remainders(weights, n).items():
        rows += task.generate(
            count, seed=seed, start_id=start_id + len(rows), templates=[name], exclude=exclude, unique=True
        )
    random.Random(seed).shuffle(rows)
    return rows


def run_curation(
    output: str | Path,
    train: Sequence[Mapping[str, Any]],
    pool: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]],
    config: CurationConfig | None = None,
    *,
    round_cache: str | Path | None = None,
) -> dict[str, Any]:
    """Run the curation rounds for every strategy and seed; write ``curation.json``, ``curation.md`` and a plot.

    Args:
        output: the folder; an existing ``curation.json`` made with the same data and settings is resumed.
        train: the initial training examples (``id``, ``question``, ``solution`` and ``config.group_key``).
        pool: candidate examples, disjoint from ``train`` (same fields).
        test: held-out examples for test accuracy.
        config: the settings.
        round_cache: folder of trained rounds (default ``output/rounds``): a round with the same training set,
            test set, seed and training settings is read from it instead of trained again -- the first round is
            the same for every strategy of a seed. Runs in other folders may share one.

    Returns:
        ``{"config", "runs": {"<strategy>/<seed>": [{"round", "num_train", "test_accuracy", "acquired"}]}}``.
    """
    config = config or CurationConfig()
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    train, pool, test = [dict(r) for r in train], [dict(r) for r in pool], [dict(r) for r in test]
    ids = [int(r["id"]) for r in [*train, *pool]]
    if len(set(ids)) != len(ids):
        raise ValueError("training and pool examples must have distinct ids (an id names one example).")
    needed = config.acquire_per_round * (config.rounds - 1)
    if needed > len(pool):
        raise ValueError(
            f"{config.rounds - 1} acquisitions of {config.acquire_per_round} need {needed} pool examples, the pool "
            f"has {len(pool)}: enlarge the pool or lower acquire_per_round / rounds."
        )
    state_path = output / "curation.json"
    fingerprint = _fingerprint(config, train, pool, test)
    state: dict[str, Any] = {"fingerprint": fingerprint, "config": _jsonable(config), "runs": {}}
    if state_path.exists():
        saved = json.loads(state_path.read_text())
        if saved.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{state_path} holds a curation run with other data or settings: use another --output folder, or "
                "delete the file to start over."
            )
        state = saved
    cache = output / "rounds" if round_cache is None else Path(round_cache)
    by_id = {int(r["id"]): r for r in [*train, *pool]}
    started = time.perf_counter()
    for strategy in config.strategies:
        for seed in config.seeds:
            key = f"{strategy}/{seed}"
            rounds = state["runs"].setdefault(key, [])
            current = [*train, *(by_id[i] for r in rounds for i in r["acquired"])]
            for index in range(len(rounds), config.rounds):
                print(f"[premem curate] {key}: round {index + 1}/{config.rounds}, {len(current)} training examples")
                trained = _cached_round(
                    config, current, test, seed, output / "runs" / key.replace("/", "-") / str(index), cache
                )
                record: dict[str, Any] = {
                    "round": index,
                    "num_train": len(current),
                    "test_accuracy": trained["test_accuracy"],
                    "acquired": [],
                }
                if index < config.rounds - 1 and config.acquire_per_round:
                    taken = {int(r["id"]) for r in current}
                    candidates = [r for r in pool if int(r["id"]) not in taken]
                    chosen = select_for_acquisition(
                        strategy,  # type: ignore[arg-type]
                        current,
                        candidates,
                        config.acquire_per_round,
                        scores={int(i): v for i, v in trained["scores"].items()},
                        group_key=config.group_key,
                        threshold=config.threshold,
                        seed=seed * 1000 + index,
                    )
                    record["acquired"] = [int(r["id"]) for r in chosen]
                    current = [*current, *chosen]
                rounds.append(record)
                atomic_write(state_path, json.dumps(state, indent=1).encode())
    state["seconds"] = time.perf_counter() - started
    write_curation_outputs(output, state, config)
    return state


def _cached_round(
    config: CurationConfig,
    train: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]],
    seed: int,
    folder: Path,
    cache: Path,
) -> dict[str, Any]:
    """Train one round (or read it from ``cache``): ``{"test_accuracy", "scores": {id: {...}}}``."""
    settings = {k: v for k, v in _jsonable(config).items() if k not in _NOT_TRAINING}
    digest = hashlib.sha256(json.dumps([settings, seed], sort_keys=True).encode())
    _digest_rows(digest, train, test)  # in order: the order of the rows changes the batches
    path = cache / f"{digest.hexdigest()[:20]}.json"
    if path.is_file():
        return json.loads(path.read_text())  # type: ignore[no-any-return]
    callback = _train_round(config, train, test, seed, folder)
    trained = {"test_accuracy": callback.history[-1]["test_accuracy"], "scores": _scores(callback)}
    cache.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps(trained).encode())
    return trained


def _train_round(
    config: CurationConfig,
    train: Sequence[Mapping[str, Any]],
    test: Sequence[Mapping[str, Any]],
    seed: int,
    folder: Path,
) -> PreMemorizationCallback:
    L.seed_everything(seed, verbose=False)
    data = ReasoningDataModule(
        train,
        test=test,
        fields=CURATION_FIELDS,
        tokenizer=config.tokenizer,
        batch_size=config.batch_size,
        max_length=128 if config.tokenizer == "char" else 512,
        answer_kind=config.answer_kind,  # type: ignore[arg-type]
        seed=seed,
    )
    model = training_module(
        dict(config.model) if isinstance(config.model, Mapping) else config.model, data.tokenizer, config.learning_rate
    )
    epochs, every = _round_epochs(config, len(train))
    callback = PreMemorizationCallback(
        threshold=config.memorization_threshold,
        every_n_epochs=every,
        max_examples=config.max_probe_examples,
        sampling=config.sampling,
        answer_kind=config.answer_kind,  # type: ignore[arg-type]
        seed=seed,
        history_dir=folder,
        progress=False,
    )
    quiet_trainer(epochs, [callback]).fit(model, datamodule=data)
    return callback


def _round_epochs(config: CurationConfig, num_train: int) -> tuple[int, int]:
    """``(epochs, probe every n epochs)`` of one round's training; the last epoch is always probed."""
    if config.steps_per_round is not None:
        epochs = config.steps_per_round * config.batch_size / num_train
        every = max(1, round(epochs / config.probes_per_round))
        return every * config.probes_per_round, every
    every = config.probe_every_n_epochs
    return max(config.epochs - config.epochs % every, every), every


def _scores(callback: PreMemorizationCallback) -> dict[int, dict[str, float]]:
    if callback.metric is None or not callback.history:
        raise RuntimeError("the probe never ran: raise epochs to at least probe_every_n_epochs")
    premem = callback.metric.per_example()
    last = callback.history[-1]
    return {
        example_id: {
            "pre_memorization_accuracy": float(premem[i]),
            "accuracy": float(last["accuracy"][i]),
            "perplexity": float(last["perplexity"][i]),
        }
        for i, example_id in enumerate(callback.probed_ids)
    }


def write_curation_outputs(output: Path, state: Mapping[str, Any], config: CurationConfig) -> None:
    """Write ``curation.png`` (mean test accuracy per strategy against training examples) and ``curation.md``."""
    curves: dict[str, tuple[Sequence[int], Sequence[float]]] = {}
    for strategy in config.strategies:
        runs = [state["runs"][f"{strategy}/{seed}"] for seed in config.seeds]
        sizes = [r["num_train"] for r in runs[0]]
        means = [sum(run[i]["test_accuracy"] for run in runs) / len(runs) for i in range(len(sizes))]
        curves[strategy] = (sizes, means)
    plot_curation(curves, output / "curation.png", title=f"{len(config.seeds)} seed(s), t = {config.threshold}")
    lines = [
        "# Curation rounds",
        "",
        f"Strategies {', '.join(config.strategies)}; seeds {list(config.seeds)}; {config.rounds} rounds from "
        f"{config.initial_size} examples, +{config.acquire_per_round} per round; threshold t = {config.threshold}.",
        "",
        "![test accuracy against training examples](curation.png)",
        "",
        "| strategy | " + " | ".join(f"n = {n}" for n in next(iter(curves.values()))[0]) + " |",
        "| --- | " + " | ".join("---:" for _ in next(iter(curves.values()))[0]) + " |",
        *(f"| {s} | " + " | ".join(f"{a:.3f}" for a in means) + " |" for s, (_, means) in curves.items()),
        "",
        "Mean test accuracy over seeds after each round's training. Raw records: `curation.json`.",
        "",
    ]
    (output / "curation.md").write_text("\n".join(lines))


def _fingerprint(config: CurationConfig, *rows: Sequence[Mapping[str, Any]]) -> str:
    digest = hashlib.sha256(json.dumps(_jsonable(config), sort_keys=True).encode())
    _digest_rows(digest, *rows)
    return digest.hexdigest()[:16]


def _digest_rows(digest: Any, *rows: Sequence[Mapping[str, Any]]) -> None:
    for group in rows:
        digest.update(json.dumps([[r.get("id"), r.get("question"), r.get("solution")] for r in group]).encode())


def _jsonable(config: CurationConfig) -> dict[str, Any]:
    return json.loads(json.dumps(dataclasses.asdict(config), default=list))  # type: ignore[no-any-return]
