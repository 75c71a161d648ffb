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
    from lightning_premem.history import load_run_histories
    from lightning_premem.replay import replay

    if args.threshold is not None:
        threshold, origin = args.threshold, "--threshold"
    else:
        tau = AUTHORS_LOGLOG_THRESHOLDS["gsm8k"] if args.loglog_threshold is None else args.loglog_threshold
        threshold = loglog_threshold_to_perplexity(tau)
        origin = f"exp(exp({tau}))" + (" (the authors' GSM8K value)" if args.loglog_threshold is None else "")
    runs = load_run_histories(args.paths)
    result = replay(runs, threshold)
    if args.plot is not None:
        from lightning_premem.plots import plot_replay

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


def _run_demo(args: argparse.Namespace) -> int:
    from lightning_premem.demo import run_demo

    run_demo(args.output, train_size=args.train_size, epochs=args.epochs, quick=args.quick)
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
