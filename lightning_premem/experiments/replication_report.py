"""The analysis of ``premem replicate``: the three findings measured, judged and written as ``replication.md``."""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from lightning_premem.analysis.calibration import calibrate_threshold, premem_means
from lightning_premem.analysis.report import (
    LABELS,
    PREDICTORS,
    build_report,
    fmt,
    predictor_table,
    robustness_table,
    write_report,
)
from lightning_premem.analysis.statistics import r2_or_none
from lightning_premem.experiments.curation import CurationConfig, write_curation_outputs
from lightning_premem.functional import AUTHORS_LOGLOG_THRESHOLDS, loglog_threshold_to_perplexity
from lightning_premem.history import RunHistory

if TYPE_CHECKING:
    from lightning_premem.experiments.replication import ReplicationConfig

__all__ = ["analyse_curation", "analyse_prediction", "data_efficiency", "markdown"]


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
            means = premem_means(runs, p)
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


def analyse_prediction(runs: Sequence[RunHistory], task_p: float, folder: Path) -> dict[str, Any]:
    """Measure the prediction finding on the sweep's ``runs``: each predictor's R² (all checkpoints, leave-one-run-out).

    ``task_p`` is the threshold of the task's trace-randomness rule, used when calibration is impossible.
    Writes ``premem report``'s files into ``folder``.
    """
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
            "r2": None if not pairs or any(None in pair for pair in pairs) else r2_or_none(*zip(*pairs, strict=True)),
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


def analyse_curation(
    config: CurationConfig, folder: Path, chains: Sequence[Mapping[str, Any]], pool: Sequence[Mapping[str, Any]]
) -> dict[str, Any]:
    """Measure the curation finding: mean curves, data efficiency over i.i.d. (per seed too), acquisition mixes."""
    merged = {"runs": {f"{c['strategy']}/{c['seed']}": c["rounds"] for c in chains}}
    write_curation_outputs(folder, merged, config)
    curves: dict[str, tuple[list[int], list[float]]] = {}
    for strategy in config.strategies:
        per_seed = [merged["runs"][f"{strategy}/{seed}"] for seed in config.seeds]
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
        for seed in config.seeds
    }  # fmt: skip
    group_of = {int(r["id"]): r[config.group_key] for r in pool}
    acquired_mix = {}  # strategy -> one {group: share} per acquisition (over seeds)
    for strategy in config.strategies:
        records = [merged["runs"][f"{strategy}/{seed}"] for seed in config.seeds]
        acquired_mix[strategy] = [
            _shares(Counter(group_of[i] for chain in records for i in chain[index]["acquired"]))
            for index in range(config.rounds - 1)
        ]
    return {
        "curves": curves,
        "efficiency": {s: data_efficiency(curves["iid"], curves[s]) for s in config.strategies if s != "iid"},
        "premem_ratio_per_seed": per_seed_ratio,
        "acquired_mix": acquired_mix,
    }


def _shares(counts: Counter[Any]) -> dict[Any, float]:
    """``{group: share}`` of a count, groups sorted; empty for no counts."""
    total = sum(counts.values())
    return {g: counts[g] / total for g in sorted(counts)} if total else {}


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


def markdown(config: ReplicationConfig, summary: Mapping[str, Any], output: Path) -> str:
    """``replication.md``: our numbers beside the paper's, with the verdict on each target."""
    pred, cur = summary["prediction"], summary["curation"]
    r2, loo = pred["r2"], pred["loo_r2"]
    premem_r2, train_r2 = r2["pre_memorization_accuracy"], r2["train_accuracy"]
    baselines = [r2[n] for n in PREDICTORS if n != "pre_memorization_accuracy" and r2[n] is not None]
    beaten = [
        f"{LABELS[n]} {r2[n]:.3f}"
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
        f"problems with {config.sampling.num_samples} samples at T = {config.sampling.temperature}.",
        "",
        (
            "Threshold rule: p is calibrated on the **validation** problems' accuracy over all runs (the "
            f"R²-maximising p; `premem report`'s calibration), never on test accuracy: p = {pred['threshold']:.4f} "
            f"(validation R² {fmt(calibration.get('fit_r2'))}). Leave-one-run-out re-calibrates p without the run."
            if calibration.get("threshold") is not None
            else f"Threshold p = {pred['threshold']:.4f}, from {pred['threshold_origin']}."
        ),
        "",
        "| predictor | R², all checkpoints | R², leave one run out | paper |",
        "| --- | ---: | ---: | ---: |",
        *(f"| {LABELS[n]} | {fmt(r2[n])} | {fmt(loo[n])} | {_PAPER.get(n, '')} |" for n in PREDICTORS),
        f"| *reference:* validation accuracy | {fmt(reference.get('r2'))} | {fmt(reference.get('loo_r2'))} | |",
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
        f"(`premem demo`'s rule) gives R² {fmt(pred['r2_at_task_threshold'])}; the authors' GSM8K p = "
        f"{pred['authors_threshold']:.4f} gives {fmt(pred['r2_at_authors_threshold'])}.",
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
            f"| {run['name']} | {fmt(final['train_accuracy'])} | {fmt(final['pre_memorization_accuracy'])} | "
            f"{fmt(final['test_accuracy'])} | {seconds.get(run['name'], math.nan):.0f} |"
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
            *robustness_table(relation),
            "",
            f"Spearman correlation of pre-memorization accuracy with the drop: {fmt(relation['spearman'])}"
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
            + (fmt(eff["ratio"], 2) if eff else "1")
            + " |"
        )
    ratio = premem_eff["ratio"]
    lines += [
        "",
        f"Data efficiency of `premem` over `iid` (examples iid needs for its best accuracy "
        f"{premem_eff['iid_best']:.3f} / examples premem needs for the same): **{fmt(ratio, 2)}** "
        f"(per seed: {', '.join(f'{s}: {fmt(v, 2)}' for s, v in cur['premem_ratio_per_seed'].items())}). "
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
