"""Callback overhead: wall time of the probes as a share of training time in ``premem demo``.

Runs the CPU demo (:func:`lightning_premem.experiments.demo.run_demo`) with the callback instrumented and splits
each probe round into sampling, target perplexity, grading and logging/history files. From the
measured per-round costs it estimates the probe share for other knob settings (probed subset,
samples, ``every_n_epochs``). A second run probes *every* training example, to measure how the
error of the dataset-level pre-memorization accuracy shrinks with the probed-subset size, against
the callback's finite-population standard error (``premem/pre_memorization_accuracy_stderr``).

    python benchmarks/callback_overhead.py            # about 6 minutes on 2 CPU cores
    python benchmarks/callback_overhead.py --quick    # smoke run, seconds
"""

from __future__ import annotations

import dataclasses
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, parser, setup, write_results

NAME = "callback_overhead"


class _Clock:
    """Accumulates wall time per named part."""

    def __init__(self) -> None:
        self.parts: dict[str, float] = {}
        self.rounds: list[float] = []

    def add(self, name: str, seconds: float) -> None:
        self.parts[name] = self.parts.get(name, 0.0) + seconds


def _instrumented_run(config: Any, folder: Path) -> tuple[dict[str, Any], Any]:
    """Run the demo with ``config``; return timings and the callback."""
    import lightning as L  # noqa: N812

    from lightning_premem.callbacks import common as common_module
    from lightning_premem.callbacks import premem as callback_module
    from lightning_premem.experiments import demo as demo_module
    from lightning_premem.probes import HFSampler

    clock = _Clock()
    made: list[Any] = []

    def timed(name: str, fn: Any) -> Any:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                clock.add(name, time.perf_counter() - start)

        return wrapper

    class Timed(callback_module.PreMemorizationCallback):
        def __init__(self, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            made.append(self)

        def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
            start = time.perf_counter()
            super().on_train_epoch_end(trainer, pl_module)
            if (trainer.current_epoch + 1) % self.every_n_epochs == 0:
                clock.rounds.append(time.perf_counter() - start)

    patches = [
        (demo_module, "PreMemorizationCallback", Timed),
        (HFSampler, "sample", timed("sampling", HFSampler.sample)),
        (callback_module, "target_perplexity", timed("perplexity", callback_module.target_perplexity)),
        (common_module, "grade", timed("grading", common_module.grade)),
        (
            callback_module.PreMemorizationCallback,
            "_log_tensorboard",
            timed("tensorboard", callback_module.PreMemorizationCallback._log_tensorboard),
        ),
        (callback_module, "write_history", timed("history files", callback_module.write_history)),
        (L.Trainer, "fit", timed("fit", L.Trainer.fit)),
    ]
    saved = [(owner, name, owner.__dict__[name]) for owner, name, _ in patches]
    try:
        for owner, name, value in patches:
            setattr(owner, name, value)
        demo_module.run_demo(folder, config=config)
    finally:
        for owner, name, value in saved:
            setattr(owner, name, value)
    fit = clock.parts.pop("fit")
    probes = sum(clock.rounds)
    other = probes - sum(clock.parts.values())
    return {
        "fit_s": fit,
        "probe_s": probes,
        "train_s": fit - probes,
        "probe_fraction": probes / fit,
        "rounds": len(clock.rounds),
        "round_s": clock.rounds,
        "parts_s": {**clock.parts, "other (metric, logging)": other},
    }, made[0]


def _knob_estimates(config: Any, measured: dict[str, Any]) -> list[dict[str, Any]]:
    """Estimate the probe share for other settings from the measured per-round costs (linear model)."""
    rounds = measured["rounds"]
    parts = {k: v / rounds for k, v in measured["parts_s"].items()}
    queries = config.probe_size + config.test_size
    per_sample_query = (parts["sampling"] + parts["grading"]) / (queries * config.sampling.num_samples)
    per_train_query = parts["perplexity"] / config.probe_size
    fixed = parts["tensorboard"] + parts["history files"] + parts["other (metric, logging)"]
    train_s = measured["train_s"]
    rows = []
    settings = [(config.probe_size, config.test_size, config.sampling.num_samples, config.every_n_epochs)]
    if config.train_size >= 500:  # the grid is for the real demo; the quick run keeps its own row only
        settings += [
            (300, 300, 4, 16),
            (300, 300, 2, 8),
            (150, 150, 4, 8),
            (100, 100, 4, 8),
            (150, 150, 2, 8),
            (300, 300, 4, 20),
            (500, 300, 4, 8),
        ]
    for probe_size, test_size, samples, every in settings:
        n_rounds = config.epochs // every
        round_s = per_sample_query * (probe_size + test_size) * samples + per_train_query * probe_size + fixed
        probe_s = n_rounds * round_s
        rows.append(
            {
                "probe_size": probe_size,
                "test_size": test_size,
                "num_samples": samples,
                "every_n_epochs": every,
                "rounds": n_rounds,
                "est_round_s": round_s,
                "est_probe_fraction": probe_s / (train_s + probe_s),
            }
        )
    return rows


def _subset_error(callback: Any, sizes: list[int], draws: int, seed: int = 0) -> list[dict[str, Any]]:
    """RMS error of the subset estimate of the dataset-level value vs probing all, per subset size."""
    from lightning_premem.callbacks.common import subset_stderr

    per_example = callback.metric.per_example().double()
    population = per_example.numel()
    full = float(per_example.mean())
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for n in sizes:
        if n >= population:
            continue
        errors, stderrs = [], []
        for _ in range(draws):
            subset = per_example[torch.randperm(population, generator=generator)[:n]]
            errors.append(float(subset.mean()) - full)
            stderrs.append(subset_stderr(subset.float(), population))
        rms = math.sqrt(sum(e * e for e in errors) / draws)
        rows.append(
            {
                "subset_size": n,
                "population": population,
                "full_value": full,
                "rms_error": rms,
                "mean_reported_stderr": sum(stderrs) / draws,
                "max_abs_error": max(abs(e) for e in errors),
            }
        )
    return rows


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables and write the JSON."""
    from lightning_premem.experiments.demo import QUICK, DemoConfig

    args = parser(__doc__.splitlines()[0]).parse_args(argv)

    setup(args)
    default = QUICK if args.quick else DemoConfig()
    with tempfile.TemporaryDirectory() as tmp:
        measured, _ = _instrumented_run(default, Path(tmp) / "defaults")
        everything = dataclasses.replace(default, probe_size=default.train_size)
        if not args.quick:
            everything = dataclasses.replace(everything, every_n_epochs=16)
        full_run, callback = _instrumented_run(everything, Path(tmp) / "all")
    knobs = _knob_estimates(default, measured)
    sizes = [4, 8, 16] if args.quick else [25, 50, 100, 150, 200, 300, 400]
    errors = _subset_error(callback, sizes, draws=50 if args.quick else 400)

    parts = [
        {"part": name, "seconds": seconds, "share_of_probe": seconds / measured["probe_s"]}
        for name, seconds in measured["parts_s"].items()
    ]
    print(f"## Demo at its defaults ({'quick' if args.quick else 'DemoConfig()'})\n")
    print(
        markdown_table(
            [
                {
                    "fit_s": measured["fit_s"],
                    "train_s": measured["train_s"],
                    "probe_s": measured["probe_s"],
                    "rounds": measured["rounds"],
                    "median_round_s": sorted(measured["round_s"])[len(measured["round_s"]) // 2],
                    "probe_fraction": measured["probe_fraction"],
                }
            ]
        )
    )
    print("\n## Where the probe time goes\n")
    print(markdown_table(parts))
    print("\n## Estimated probe share for other knob settings (linear in the measured per-round costs)\n")
    print(markdown_table(knobs))
    print(f"\n## Subset error vs probing all {callback.metric.num_examples} training examples\n")
    print(markdown_table(errors))
    payload = {
        "config": dataclasses.asdict(default),
        "defaults": measured,
        "knob_estimates": knobs,
        "probe_all": {"config": dataclasses.asdict(everything), **full_run},
        "subset_error": errors,
    }
    write_results(args.output, NAME, payload, args.quick)
    return payload


if __name__ == "__main__":
    main()
