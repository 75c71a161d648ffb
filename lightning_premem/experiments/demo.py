"""The CPU demo: memorization vs generalization, live, on a model trained from scratch.

A 0.36 M-parameter GPT (3 layers, 96 dims, character tokens) is trained on a small set of
synthetic arithmetic problems whose solution traces are randomly phrased
(:class:`~lightning_premem.data.synthetic.ArithmeticTask`). With few examples the model memorizes:
train accuracy races to 1 while test accuracy stays low, and pre-memorization accuracy stays
with test accuracy. :class:`~lightning_premem.PreMemorizationCallback` probes it every few epochs;
the run writes TensorBoard logs and a Markdown report with figures.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812  (the library's own convention)
import numpy as np
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_premem._checks import check_real
from lightning_premem.analysis.plots import plot_accuracy_curves, plot_dynamics
from lightning_premem.callbacks import PreMemorizationCallback
from lightning_premem.data import ReasoningDataModule
from lightning_premem.data.synthetic import ArithmeticTask
from lightning_premem.experiments.recipe import gpt_config, training_module
from lightning_premem.functional import pre_memorization_accuracy
from lightning_premem.history import HISTORY_FILE
from lightning_premem.probes.sampling import SamplingConfig

__all__ = ["QUICK", "DemoConfig", "demo_rows", "demo_threshold", "run_demo", "write_demo_data"]


@dataclass(frozen=True)
class DemoConfig:
    """Settings of the demo run (defaults: the memorization regime, about 5 minutes on 2 CPU cores)."""

    train_size: int = 500
    """Training problems (few: the model memorizes them)."""
    test_size: int = 200
    """Fresh test problems (never in the training set)."""
    probe_size: int = 200
    """Training problems probed each round (a fixed, seeded subset)."""
    epochs: int = 80
    """Training epochs (1,280 optimizer steps at the defaults)."""
    every_n_epochs: int = 8
    """Probe every this many epochs."""
    batch_size: int = 32
    learning_rate: float = 1e-2
    """Peak AdamW learning rate (betas 0.9/0.95, gradient norm clipped at 1, linear warmup and decay)."""
    sampling: SamplingConfig = dataclasses.field(
        default_factory=lambda: SamplingConfig(num_samples=4, max_new_tokens=48, batch_size=64)
    )
    """How the probes sample: 4 answers per probed question at temperature 0.8, up to 48 tokens."""
    n_layer: int = 3
    n_embd: int = 96
    n_head: int = 3
    dropout: float = 0.0
    """Dropout of the GPT (none: memorization shows within the demo's few minutes)."""
    templates: tuple[str, ...] = ("a+b*c+d",)
    """Synthetic task templates (see :data:`lightning_premem.data.templates.TEMPLATES`)."""
    trace_diversity: int = 3
    """Randomness of the solution traces (0-3): what separates solving from memorizing."""
    threshold: float | None = None
    """Memorization threshold ``p``; default: derived from the task's trace randomness (see :func:`demo_threshold`)."""
    seed: int = 0

    def __post_init__(self) -> None:
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if field.name in ("threshold", "seed", "dropout", "templates", "trace_diversity", "sampling"):
                continue
            if check_real(value, field.name) <= 0:
                raise ValueError(f"`{field.name}` must be a positive number, got {value!r}.")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"`dropout` must be in [0, 1), got {self.dropout!r}.")
        if self.probe_size > self.train_size:
            raise ValueError(f"`probe_size` ({self.probe_size}) cannot exceed `train_size` ({self.train_size}).")


QUICK = DemoConfig(
    train_size=24,
    test_size=8,
    probe_size=8,
    epochs=2,
    every_n_epochs=1,
    batch_size=8,
    sampling=SamplingConfig(num_samples=2, max_new_tokens=24, batch_size=64),
    n_layer=1,
    n_embd=32,
    n_head=2,
)


def demo_rows(config: DemoConfig) -> tuple[ArithmeticTask, list[dict[str, Any]], list[dict[str, Any]]]:
    """Return the demo's task, training problems and fresh test problems (none repeats a training problem)."""
    task = ArithmeticTask(templates=config.templates, trace_diversity=config.trace_diversity)
    train_rows = task.generate(config.train_size, seed=config.seed, unique=True)
    test_rows = task.generate(
        config.test_size, seed=config.seed + 1, start_id=config.train_size, exclude=train_rows, unique=True
    )
    return task, train_rows, test_rows


def write_demo_data(folder: str | Path, config: DemoConfig | None = None) -> tuple[Path, Path]:
    """Write the demo's problems to ``train.jsonl`` and ``test.jsonl`` (for ``premem fit``); return the paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _, train_rows, test_rows = demo_rows(config or DemoConfig())
    paths = folder / "train.jsonl", folder / "test.jsonl"
    for path, rows in zip(paths, (train_rows, test_rows), strict=True):
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return paths


def demo_threshold(task: ArithmeticTask, rows: list[dict[str, Any]], tokenizer: Any, fraction: float = 0.75) -> float:
    """Pick the memorization threshold from the task alone, before any training or test accuracy.

    A model that solves a problem but has not memorized its trace cannot predict the trace's random
    phrasing: its perplexity on the target is at least ``exp(H ln 2 / L)`` for ``H`` bits of trace
    randomness over ``L`` target tokens. "Memorized" must mean clearly below that floor; the demo uses
    ``floor ** fraction``. (A prototype on a similar task found the best thresholds at 0.7-0.85 of the
    floor's log.)
    """
    bits = [task.trace_entropy_bits(row) for row in rows]
    lengths = [len(tokenizer(f" {row['solution']}\nDone.", add_special_tokens=False)["input_ids"]) for row in rows]
    floor_log = float(np.mean([b * math.log(2) / n for b, n in zip(bits, lengths, strict=True)]))
    return math.exp(fraction * floor_log)


def run_demo(
    output: str | Path,
    *,
    config: DemoConfig | None = None,
    train_size: int | None = None,
    epochs: int | None = None,
    quick: bool = False,
) -> Path:
    """Train the demo model with the callback; write TensorBoard logs and ``report.md`` under ``output``.

    Args:
        output: folder for ``tensorboard/`` logs and the report (``report.md`` and figures).
        config: the settings (default :class:`DemoConfig`; ``quick=True`` uses a seconds-long variant).
        train_size: overrides ``config.train_size`` (more examples: the model starts to generalize).
        epochs: overrides ``config.epochs``.
        quick: run a tiny configuration (for smoke tests).

    Returns:
        The path of the report.
    """
    config = config or (QUICK if quick else DemoConfig())
    if train_size is not None:
        config = dataclasses.replace(config, train_size=train_size)
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    L.seed_everything(config.seed, verbose=False)

    task, train_rows, test_rows = demo_rows(config)
    data = ReasoningDataModule(
        train_rows,
        test=test_rows,
        fields={"question": "question", "solution": "solution", "id": "id"},
        tokenizer="char",
        batch_size=config.batch_size,
        max_length=128,
        seed=config.seed,
    )
    model = training_module(
        gpt_config(config.n_layer, config.n_embd, config.n_head, dropout=config.dropout), "char", config.learning_rate
    )
    threshold = config.threshold or demo_threshold(task, train_rows, model.tokenizer)
    callback = PreMemorizationCallback(
        threshold=threshold,
        max_examples=config.probe_size,
        every_n_epochs=config.every_n_epochs,
        sampling=config.sampling,
        seed=config.seed,
    )
    logger = TensorBoardLogger(output, name="tensorboard", version="")
    trainer = L.Trainer(
        max_epochs=config.epochs,
        accelerator="cpu",
        devices=1,
        logger=logger,
        callbacks=[callback],
        enable_checkpointing=False,
        gradient_clip_val=1.0,
        log_every_n_steps=10,
        num_sanity_val_steps=0,
        limit_val_batches=0,  # the demo has no validation split
    )
    trainer.fit(model, datamodule=data)
    report = _write_report(output, config, callback, threshold, time.perf_counter() - started, Path(logger.log_dir))
    print(
        f"\nreport:      {report}\n"
        f"history:     {Path(logger.log_dir) / 'premem' / HISTORY_FILE}\n"
        f"TensorBoard: tensorboard --logdir {output / 'tensorboard'}"
    )
    return report


def _write_report(
    output: Path, config: DemoConfig, callback: PreMemorizationCallback, threshold: float, seconds: float, log_dir: Path
) -> Path:
    history = callback.history
    epochs = [r["epoch"] for r in history]
    accuracy = torch.stack([r["accuracy"] for r in history])
    perplexity = torch.stack([r["perplexity"] for r in history])
    premem = pre_memorization_accuracy(accuracy, perplexity, threshold)
    memorized = (perplexity <= threshold).float().mean(dim=1)
    rows = [
        {
            "epoch": r["epoch"],
            "step": r["step"],
            "train_accuracy": float(accuracy[t].mean()),
            "pre_memorization_accuracy": float(premem[t].mean()),
            "test_accuracy": r["test_accuracy"],
            "memorized_fraction": float(memorized[t]),
            "target_perplexity": float(perplexity[t].mean()),
        }
        for t, r in enumerate(history)
    ]
    plot_accuracy_curves(
        epochs,
        {
            "train accuracy": [r["train_accuracy"] for r in rows],
            "pre-memorization accuracy": [r["pre_memorization_accuracy"] for r in rows],
            "test accuracy": [r["test_accuracy"] for r in rows],
            "memorized fraction": [r["memorized_fraction"] for r in rows],
        },
        output / "accuracy.png",
        title=f"{config.train_size} training problems, threshold p = {threshold:.3f}",
    )
    plot_dynamics(accuracy.numpy(), perplexity.numpy(), threshold, output / "dynamics.png", epochs=epochs)
    ids = callback.probed_ids
    with (output / "per_example.csv").open("w", newline="") as handle:
        table = csv.writer(handle)
        table.writerow(
            [
                "example_id",
                *(f"accuracy_e{e}" for e in epochs),
                *(f"perplexity_e{e}" for e in epochs),
                "pre_memorization_accuracy",
            ]
        )
        for i, example_id in enumerate(ids):
            table.writerow(
                [
                    example_id,
                    *(f"{float(a):.3g}" for a in accuracy[:, i]),
                    *(f"{float(p):.4g}" for p in perplexity[:, i]),
                    f"{float(premem[-1, i]):.3g}",
                ]
            )
    (output / "summary.json").write_text(
        json.dumps(
            {"config": dataclasses.asdict(config), "threshold": threshold, "seconds": seconds, "rounds": rows}, indent=2
        )
    )
    last = rows[-1]
    lines = [
        "# lightning-premem CPU demo",
        "",
        f"A {config.n_layer}-layer, {config.n_embd}-dim GPT trained from scratch on {config.train_size} synthetic "
        f"arithmetic problems (randomly phrased solution traces) for {config.epochs} epochs; "
        f"{len(ids)} training problems and {config.test_size} fresh test problems probed every "
        f"{config.every_n_epochs} epochs with {config.sampling.num_samples} samples each. Memorized means target "
        f"perplexity <= p = {threshold:.3f} (fixed from the task's trace randomness before training). "
        f"Wall time {seconds / 60:.1f} min.",
        "",
        f"At the end: train accuracy **{last['train_accuracy']:.3f}**, pre-memorization accuracy "
        f"**{last['pre_memorization_accuracy']:.3f}**, test accuracy **{last['test_accuracy']:.3f}**, "
        f"memorized fraction {last['memorized_fraction']:.3f}.",
        "",
        "![accuracy per epoch](accuracy.png)",
        "",
        "| epoch | step | train acc | pre-mem acc | test acc | memorized | mean target ppl |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        *(
            f"| {r['epoch']} | {r['step']} | {r['train_accuracy']:.3f} | {r['pre_memorization_accuracy']:.3f} | "
            f"{r['test_accuracy']:.3f} | {r['memorized_fraction']:.3f} | {r['target_perplexity']:.3f} |"
            for r in rows
        ),
        "",
        "## Per-example dynamics",
        "",
        "Each row a probed training problem, each column a probe round: sampled accuracy (left) and target "
        "perplexity (right; inside the cyan line: memorized).",
        "",
        "![per-example dynamics](dynamics.png)",
        "",
        "Per-example values of every round: `per_example.csv` (this folder) and "
        f"`{log_dir.name or log_dir}/premem/` (`history.npz`, replayable with `premem replay`).",
        "",
        f"TensorBoard: `tensorboard --logdir {output / 'tensorboard'}`",
        "",
    ]
    report = output / "report.md"
    report.write_text("\n".join(lines))
    return report
