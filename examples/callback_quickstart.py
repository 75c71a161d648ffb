"""PreMemorizationCallback on a Trainer, end to end, on CPU with no downloads.

A tiny GPT-2 (built from a config, character tokens) learns two-number sums; the callback probes
the training questions after every epoch and logs pre-memorization accuracy to TensorBoard.

    python examples/callback_quickstart.py --output runs/quickstart
    tensorboard --logdir runs/quickstart

With a real model, swap the model and tokenizer for ``AutoModelForCausalLM.from_pretrained(...)``
and ``AutoTokenizer.from_pretrained(...)``; everything else stays.
"""

from __future__ import annotations

import argparse
import random

import lightning as L  # noqa: N812
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

from lightning_premem import CausalLMModule, PreMemorizationCallback
from lightning_premem.probes import encode_prompt_target
from lightning_premem.tokenization import char_tokenizer


def sums(n: int, seed: int, start_id: int = 0) -> list[dict]:
    """Toy reasoning data: ``{"id", "question", "solution"}`` rows with GSM8K-style final answers."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        a, b = rng.randint(1, 30), rng.randint(1, 30)
        rows.append({"id": start_id + i, "question": f"What is {a}+{b}?", "solution": f"{a}+{b}={a + b}\n#### {a + b}"})
    return rows


def batches(rows: list[dict], tokenizer, batch_size: int) -> DataLoader:
    """The batch format CausalLMModule trains on: the prompt is masked out of the labels (-100)."""
    features = []
    for row in rows:
        prompt_ids, target_ids = encode_prompt_target(
            tokenizer, f"{row['question']}\nAnswer:", f" {row['solution']}\nDone."
        )
        features.append((prompt_ids + target_ids, [-100] * len(prompt_ids) + target_ids))

    def collate(items):
        longest = max(len(ids) for ids, _ in items)
        input_ids = torch.full((len(items), longest), tokenizer.pad_token_id)
        labels = torch.full((len(items), longest), -100)
        for row, (ids, target) in enumerate(items):
            input_ids[row, : len(ids)], labels[row, : len(ids)] = torch.tensor(ids), torch.tensor(target)
        return {
            "input_ids": input_ids,
            "attention_mask": (labels != -100) | (input_ids != tokenizer.pad_token_id),
            "labels": labels,
        }

    return DataLoader(features, batch_size=batch_size, shuffle=True, collate_fn=collate)


def main(argv: list[str] | None = None) -> PreMemorizationCallback:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--output", default="runs/quickstart")
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--train-size", type=int, default=256)
    parser.add_argument("--probe-size", type=int, default=64, help="training examples probed each epoch")
    args = parser.parse_args(argv)

    L.seed_everything(0)
    tokenizer = char_tokenizer()
    train, test = sums(args.train_size, seed=0), sums(64, seed=1, start_id=10_000)
    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=4,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    module = CausalLMModule(GPT2LMHeadModel(config), tokenizer, learning_rate=1e-2)

    callback = PreMemorizationCallback(
        train_examples=train,  # the queries it samples answers for
        test_examples=test,  # held-out queries: premem/test_accuracy
        max_examples=args.probe_size,  # a fixed, seeded subset is enough to track the curve
        num_samples=4,
        max_new_tokens=24,
    )
    trainer = L.Trainer(
        max_epochs=args.epochs,
        accelerator="cpu",
        callbacks=[callback],
        logger=TensorBoardLogger(args.output, name="quickstart"),
        log_every_n_steps=5,
    )
    trainer.fit(module, batches(train, tokenizer, batch_size=32))
    print(f"history: {trainer.log_dir}/premem/history.npz\nview:    tensorboard --logdir {args.output}")
    return callback


if __name__ == "__main__":
    main()
