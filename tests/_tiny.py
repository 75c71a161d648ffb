"""A tiny GPT-2 and a toy arithmetic task for the callback tests (no downloads)."""

import random
import re
from functools import partial

import lightning as L  # noqa: N812
import torch
from torch.utils.data import DataLoader
from transformers import GPT2Config, GPT2LMHeadModel

from lightning_premem.data.batching import collate, tokenize_example
from lightning_premem.module import CausalLMModule
from lightning_premem.tokenization import DEFAULT_PROMPT_TEMPLATE, DEFAULT_TARGET_TEMPLATE, char_tokenizer

ALPHABET = "0123456789+=#?\n WhatisAnswerDone."


def tokenizer():
    return char_tokenizer("".join(dict.fromkeys(ALPHABET)))


def examples(n, seed=0, start_id=0):
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        out.append({"id": start_id + i, "question": f"What is {a}+{b}?", "solution": f"{a}+{b}={a + b}\n#### {a + b}"})
    return out


def model(tok, seed=0):
    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=len(tok),
        n_positions=96,
        n_embd=32,
        n_layer=2,
        n_head=2,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,  # deterministic: resumed runs match exactly
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    return GPT2LMHeadModel(config)


def module(tok, seed=0, learning_rate=3e-3):
    return CausalLMModule(model(tok, seed), tok, learning_rate=learning_rate, warmup_ratio=0.0)


def loader(tok, rows, batch_size=8):
    features = [tokenize_example(tok, r, DEFAULT_PROMPT_TEMPLATE, DEFAULT_TARGET_TEMPLATE) for r in rows]
    return DataLoader(
        features, batch_size=batch_size, shuffle=False, collate_fn=partial(collate, pad_token_id=tok.pad_token_id)
    )


class FrozenModule(CausalLMModule):
    """Trains nothing (zero loss gradient), so probes see the same model on any number of processes."""

    def training_step(self, batch, batch_idx):
        return 0.0 * super().training_step(batch, batch_idx)


class SeedKeyedSampler:
    """Answers "What is a+b?" right in sample j exactly when bit j of the prompt's seed is set.

    Its accuracy is a function of the seeds alone, so two probes agree on it only if they seed alike.
    """

    num_samples = 4

    def sample(self, prompts, seeds):
        out = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            a, b = re.search(r"What is (\d+)\+(\d+)\?", prompt).groups()
            total = int(a) + int(b)
            answers = [total if (seed >> j) & 1 else total + 1 for j in range(self.num_samples)]
            out.append([f" {a}+{b}={answer}\n#### {answer}" for answer in answers])
        return out

    @staticmethod
    def expected_accuracy(seeds):
        return sum(bin(seed & 0b1111).count("1") for seed in seeds) / (4 * len(seeds))


def fit_quietly(tmp_path, pl_module, train_loader, callbacks, epochs=1):
    """Fit on CPU with no logger, checkpoints, progress bar or model summary; return the trainer."""
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        logger=False,
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
    )
    trainer.fit(pl_module, train_loader)
    return trainer
