"""The training recipe every experiment shares: the small GPT, the optimiser settings, a quiet Trainer."""

from __future__ import annotations

from typing import Any

import lightning as L  # noqa: N812  (the library's own convention)

from lightning_premem.module import CausalLMModule

__all__ = ["gpt_config", "quiet_trainer", "training_module"]


def gpt_config(n_layer: int, n_embd: int, n_head: int, *, dropout: float = 0.0) -> dict[str, Any]:
    """Return the config mapping of a small GPT-2 trained from scratch on character tokens (128 positions).

    Example:
        >>> gpt_config(3, 96, 3)["n_positions"]
        128
    """
    return {
        "model_type": "gpt2",
        "n_layer": n_layer,
        "n_embd": n_embd,
        "n_head": n_head,
        "n_positions": 128,
        "resid_pdrop": dropout,
        "embd_pdrop": dropout,
        "attn_pdrop": dropout,
    }


def training_module(model: Any, tokenizer: Any, learning_rate: float) -> CausalLMModule:
    """Return the package's own training recipe (demo, sweep, base model, curation rounds).

    AdamW with betas (0.9, 0.95), 4 % linear warmup, then linear decay.
    """
    return CausalLMModule(model, tokenizer, learning_rate=learning_rate, warmup_ratio=0.04, betas=(0.9, 0.95))


def quiet_trainer(max_epochs: int, callbacks: list[Any], accelerator: str = "auto") -> L.Trainer:
    """Return a one-device Trainer for runs the caller reports on itself: no logger, checkpoints or progress bar."""
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=accelerator,
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        gradient_clip_val=1.0,
        num_sanity_val_steps=0,
        limit_val_batches=0,  # no validation loop: held-out queries are the callbacks' business
        callbacks=callbacks,
    )
