"""The ``premem`` command line.

User errors (a missing file, a malformed log, a bad option) print one line to stderr and
exit with status 2, without a traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from lightning_premem.functional import AUTHORS_LOGLOG_THRESHOLDS, loglog_threshold_to_perplexity

__all__ = ["main"]

_USER_ERRORS = (ValueError, TypeError, OSError, ImportError)


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="premem",
        description="Pre-memorization train accuracy (Kang et al., arXiv 2411.07681) for your runs.",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    replay = commands.add_parser(
        "replay",
        help="replay saved per-example histories: values per checkpoint and R² of test accuracy",
        description=(
            "Read run logs (.npz files or folders of them), print per run and checkpoint the train "
            "accuracy, pre-memorization accuracy, memorized fraction and test accuracy, then the R² of "
            "a linear fit of test accuracy on pre-memorization accuracy and on train accuracy."
        ),
    )
    replay.add_argument("paths", nargs="+", metavar="PATH", help="run log (.npz) or folder of them")
    gsm8k_tau = AUTHORS_LOGLOG_THRESHOLDS["gsm8k"]
    group = replay.add_mutually_exclusive_group()
    group.add_argument(
        "--threshold",
        type=float,
        metavar="P",
        help=f"perplexity threshold: memorized iff perplexity <= P (default: exp(exp({gsm8k_tau})), "
        "the authors' GSM8K value)",
    )
    group.add_argument(
        "--loglog-threshold",
        type=float,
        metavar="TAU",
        help="the authors' form of the threshold: P = exp(exp(TAU)) (GSM8K -2.3, MATH -1.7)",
    )
    replay.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    replay.add_argument("--plot", type=Path, metavar="FILE.png", help="draw pre-memorization vs test accuracy")
    replay.set_defaults(handler=_run_replay)

    report = commands.add_parser(
        "report",
        help="compare generalization predictors on runs: R² table, calibrated threshold, robustness, figures",
        description=(
            "Read run logs (.npz files or folders of them; the callback's history.npz, with predictors.npz next to "
            "it when BaselinePredictorsCallback ran) and write report.md plus PNG figures: the R² of test accuracy "
            "on each predictor, the memorization threshold calibrated without the test split (on a validation "
            "accuracy when every run has one, else on a seeded split of the runs), and the robustness relation."
        ),
    )
    report.add_argument("paths", nargs="+", metavar="RUN", help="run log (.npz) or folder of them")
    report.add_argument("--output", type=Path, default=Path("premem-report"), help="folder for report.md and figures")
    report_threshold = report.add_mutually_exclusive_group()
    report_threshold.add_argument(
        "--threshold", type=float, metavar="P", help="perplexity threshold of the table (default: the authors' GSM8K p)"
    )
    report_threshold.add_argument(
        "--loglog-threshold", type=float, metavar="TAU", help="the threshold in the authors' form: P = exp(exp(TAU))"
    )
    report_threshold.add_argument(
        "--calibrate", action="store_true", help="compute the table at the calibrated threshold instead"
    )
    report.add_argument("--no-calibration", action="store_true", help="skip the threshold calibration")
    report.add_argument(
        "--fit-fraction", type=float, default=0.5, help="share of runs to fit p on when runs are split (default 0.5)"
    )
    report.add_argument("--seed", type=int, default=0, help="seeds the run split and the bootstrap (default 0)")
    report.add_argument("--no-figures", action="store_true", help="write report.md only")
    report.add_argument("--json", action="store_true", help="also print the report as one JSON object")
    report.set_defaults(handler=_run_report)

    # parsed by LightningCLI, not here (see main); listed for `premem --help`
    commands.add_parser(
        "fit",
        help="train from a YAML config (LightningCLI): premem fit --config FILE.yaml [--trainer.max_epochs N ...]",
        add_help=False,
    )

    demo = commands.add_parser(
        "demo",
        help="the CPU demo: train a small model from scratch on the synthetic task with the callback; write a report",
        description=(
            "Train a 0.36 M-parameter GPT from scratch on the synthetic arithmetic task on CPU, with "
            "PreMemorizationCallback probing it; write TensorBoard logs and a Markdown report with figures."
        ),
    )
    demo.add_argument("--output", type=Path, default=Path("runs/demo"), help="folder for logs and the report")
    demo.add_argument("--train-size", type=int, default=None, help="training examples (default: the demo's)")
    demo.add_argument("--epochs", type=int, default=None, help="training epochs (default: the demo's)")
    demo.add_argument("--quick", action="store_true", help="a tiny run (seconds), for smoke tests")
    demo.set_defaults(handler=_run_demo)

    curate = commands.add_parser(
        "curate",
        help="compare curation strategies over rounds of train -> score -> acquire (Algorithm 1)",
        description=(
            "Run curation rounds for several strategies and seeds, on the synthetic task (default) or on your "
            "files, and write test accuracy against the number of training examples (curation.md, curation.png, "
            "curation.json). Rerunning with the same --output resumes an interrupted run."
        ),
    )
    curate.add_argument("--output", type=Path, default=Path("runs/curate"))
    curate.add_argument("--strategies", nargs="+", metavar="NAME", help="premem iid random high_loss low_accuracy")
    curate.add_argument("--seeds", nargs="+", type=int, metavar="SEED")
    curate.add_argument("--rounds", type=int)
    curate.add_argument("--initial-size", type=int, help="initial training examples (synthetic task)")
    curate.add_argument("--acquire", type=int, help="pool examples acquired per round")
    curate.add_argument("--threshold", type=float, help="t of Algorithm 1 (default 0.5)")
    curate.add_argument("--epochs", type=int, help="training epochs per round")
    curate.add_argument(
        "--steps-per-round", type=int, help="train each round for about N optimizer steps instead (equal compute)"
    )
    curate.add_argument("--train", type=Path, help="initial training examples (JSONL: id, question, solution, group)")
    curate.add_argument("--pool", type=Path, help="candidate pool (same fields)")
    curate.add_argument("--test", type=Path, help="test examples (JSONL: question, solution)")
    curate.add_argument("--group-key", help="the field that says which examples are alike (default: template)")
    curate.add_argument(
        "--model",
        help="a pretrained causal LM (local path or hub name) to fine-tune every round, as the paper does; "
        "default: a small GPT trained from scratch",
    )
    curate.add_argument(
        "--tokenizer", help="its tokenizer (path, hub name or 'char'; default: the model's own, else 'char')"
    )
    curate.add_argument("--learning-rate", type=float, help="peak learning rate of every round (default 1e-2)")
    curate.add_argument("--quick", action="store_true", help="a tiny run (seconds), for smoke tests")
    curate.set_defaults(handler=_run_curate)

    replicate = commands.add_parser(
        "replicate",
        help="reproduce the paper's three findings at CPU scale (prediction, robustness, curation); under an hour",
        description=(
            "Run a sweep of small GPTs on the synthetic task (R² of test accuracy on pre-memorization accuracy and "
            "on every baseline, the threshold calibrated on validation problems), a robustness probe and the "
            "curation strategies over rounds; write replication.md with our numbers beside the paper's, figures, "
            "summary.json and the raw histories. Rerunning with the same --output resumes an interrupted run."
        ),
    )
    replicate.add_argument("--output", type=Path, default=Path("runs/replicate"), help="folder for everything")
    replicate.add_argument("--jobs", type=int, default=None, help="processes side by side (default 2)")
    replicate.add_argument("--quick", action="store_true", help="a tiny run (a minute or two), for smoke tests")
    replicate.set_defaults(handler=_run_replicate)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``premem`` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["fit"]:
        return _run_fit(argv[1:])
    args = _build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except _USER_ERRORS as err:
        print(f"premem {args.command}: error: {err}", file=sys.stderr)
        return 2


def _run_replay(args: argparse.Namespace) -> int:
    from lightning_premem.analysis.replay import replay
    from lightning_premem.history import load_run_histories

    if args.threshold is not None:
        threshold, origin = args.threshold, "--threshold"
    else:
        tau = AUTHORS_LOGLOG_THRESHOLDS["gsm8k"] if args.loglog_threshold is None else args.loglog_threshold
        threshold = loglog_threshold_to_perplexity(tau)
        origin = f"exp(exp({tau}))" + (" (the authors' GSM8K value)" if args.loglog_threshold is None else "")
    runs = load_run_histories(args.paths)
    result = replay(runs, threshold)
    if args.plot is not None:
        from lightning_premem.analysis.plots import plot_replay

        plot_replay(result, args.plot)
    if args.json:
        print(
            json.dumps(
                {"runs": [{k: r[k] for k in ("name", "checkpoints")} for r in result["runs"]], "r2": result["r2"]}
            )
        )
    else:
        print(_format_replay(result, origin))
        if args.plot is not None:
            print(f"figure: {args.plot}")
    return 0


def _run_report(args: argparse.Namespace) -> int:
    from lightning_premem.analysis import build_report, write_report
    from lightning_premem.history import load_run_histories

    if args.calibrate and args.no_calibration:
        raise ValueError("--calibrate needs the calibration; drop --no-calibration.")
    threshold, origin = None, None
    if args.threshold is not None:
        threshold, origin = args.threshold, "--threshold"
    elif args.loglog_threshold is not None:
        threshold = loglog_threshold_to_perplexity(args.loglog_threshold)
        origin = f"exp(exp({args.loglog_threshold}))"
    runs = load_run_histories(args.paths)
    result = build_report(
        runs,
        threshold=threshold,
        threshold_origin=origin,
        calibrate=not args.no_calibration,
        use_calibrated=args.calibrate,
        fit_fraction=args.fit_fraction,
        seed=args.seed,
    )
    path = write_report(result, args.output, figures=not args.no_figures)
    if args.json:
        print(json.dumps({**result, "report": str(path)}))
    else:
        print(_format_report(result, path))
    return 0


def _format_report(result: dict[str, Any], path: Path) -> str:
    lines = [
        f"{result['num_runs']} run(s); memorized iff perplexity <= p = {result['threshold']:.4f} "
        f"({result['threshold_origin']})",
        "R² of test accuracy:",
    ]
    for name, value in result["r2"].items():
        points = result["num_points"][name]
        lines.append(f"  {name:<26} {_fmt(value, 3) if value is not None else 'n/a':>6}  ({points} checkpoints)")
    calibration = result["calibration"]
    if calibration is not None and calibration.get("threshold") is not None:
        held = calibration.get("held_out_r2")
        lines.append(
            f"calibrated p = {calibration['threshold']:.4f} on {calibration['target']} ({calibration['split']}); "
            f"fit R² {_fmt(calibration['fit_r2'], 3)}"
            + (f", held-out R² {_fmt(held, 3)}" if calibration["held_out_runs"] else "")
        )
    elif calibration is not None:
        lines.append(f"calibration skipped: {calibration['skipped']}")
    for relation in result["robustness"]:
        lines.append(
            f"robustness {relation['run']}: Spearman(pre-memorization accuracy, accuracy drop) = "
            f"{_fmt(relation['spearman'], 3)}"
        )
    lines.append(f"report: {path}")
    return "\n".join(lines)


def _run_fit(cli_args: list[str]) -> int:
    from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

    from lightning_premem.data import ReasoningDataModule
    from lightning_premem.module import CausalLMModule

    class _PremCLI(LightningCLI):
        def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
            # one tokenizer setting for the model and the data
            parser.link_arguments("model.tokenizer", "data.tokenizer")

    _PremCLI(
        CausalLMModule,
        ReasoningDataModule,
        args=["fit", *cli_args],
        seed_everything_default=0,
        save_config_kwargs={"overwrite": True},
        auto_configure_optimizers=False,
    )
    return 0


def _run_curate(args: argparse.Namespace) -> int:
    import dataclasses

    from lightning_premem.experiments.curation import QUICK, CurationConfig, run_curation, synthetic_curation_data

    config = QUICK if args.quick else CurationConfig()
    overrides = {
        "strategies": None if args.strategies is None else tuple(args.strategies),
        "seeds": None if args.seeds is None else tuple(args.seeds),
        "rounds": args.rounds,
        "initial_size": args.initial_size,
        "acquire_per_round": args.acquire,
        "threshold": args.threshold,
        "epochs": args.epochs,
        "steps_per_round": args.steps_per_round,
        "group_key": args.group_key,
        "model": args.model,
        "tokenizer": args.tokenizer or args.model,
        "learning_rate": args.learning_rate,
    }
    config = dataclasses.replace(config, **{k: v for k, v in overrides.items() if v is not None})
    files = (args.train, args.pool, args.test)
    if any(files) and not all(files):
        raise ValueError("pass --train, --pool and --test together (or none of them, for the synthetic task).")
    if all(files):
        train, pool, test = (_read_jsonl(path) for path in files)
    else:
        train, pool, test = synthetic_curation_data(
            config, pool_size=200 if args.quick else 3000, test_size=16 if args.quick else 300
        )
    state = run_curation(args.output, train, pool, test, config)
    print(f"curation: {args.output / 'curation.md'} ({len(state['runs'])} runs)")
    return 0


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with path.open() as handle:
        for number, line in enumerate(handle, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{path}:{number}: not a JSON object ({err.msg}).") from None
    if not rows:
        raise ValueError(f"{path}: no examples.")
    for index, row in enumerate(rows):
        row.setdefault("id", index)
    return rows


def _run_demo(args: argparse.Namespace) -> int:
    from lightning_premem.experiments.demo import run_demo

    run_demo(args.output, train_size=args.train_size, epochs=args.epochs, quick=args.quick)
    return 0


def _run_replicate(args: argparse.Namespace) -> int:
    from lightning_premem.experiments.replication import run_replication

    if args.jobs is not None and args.jobs < 1:
        raise ValueError(f"--jobs must be at least 1, got {args.jobs}.")
    run_replication(args.output, quick=args.quick, jobs=args.jobs)
    return 0


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _format_replay(result: dict[str, Any], origin: str) -> str:
    runs = result["runs"]
    lines = [f"{len(runs)} run(s); memorized iff perplexity <= p = {result['threshold']:.4f}, {origin}", ""]
    header = f"{'step':>8}  {'train_acc':>9}  {'premem_acc':>10}  {'memorized':>9}  {'test_acc':>8}"
    for run in runs:
        lines.append(f"{run['name']}  ({len(run['checkpoints'])} checkpoint(s), {run['num_examples']} examples)")
        lines.append(header)
        for c in run["checkpoints"]:
            lines.append(
                f"{c['step']:>8}  {_fmt(c['train_accuracy']):>9}  {_fmt(c['pre_memorization_accuracy']):>10}  "
                f"{_fmt(c['memorized_fraction']):>9}  {_fmt(c['test_accuracy']):>8}"
            )
        lines.append("")
    lines.append(f"R² of a linear fit of test accuracy, over {result['num_checkpoints']} checkpoint(s):")
    for key, label in (
        ("pre_memorization_accuracy", "pre-memorization accuracy"),
        ("train_accuracy", "train accuracy"),
    ):
        value = result["r2"][key]
        lines.append(
            f"  {label:<26} {_fmt(value, 3) if value is not None else 'n/a (needs 2+ checkpoints with varying values)'}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
