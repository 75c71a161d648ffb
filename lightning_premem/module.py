"""``CausalLMModule``: a minimal LightningModule for supervised fine-tuning of a causal LM.

The loss is the model's own token cross-entropy on batches whose ``labels`` hold ``-100`` on
prompt and padding positions, so only the target trace is learned. Optimiser as in the paper:
AdamW with linear warmup then linear decay to 0 over the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import lightning as L  # noqa: N812  (the library's own convention)
import torch
from torch import Tensor

from lightning_premem.tokenization import load_tokenizer

__all__ = ["CausalLMModule", "model_from_config"]


class CausalLMModule(L.LightningModule):
    """Fine-tune a Hugging Face causal LM on prompt/target batches.

    Args:
        model: a Hugging Face causal LM (``PreTrainedModel`` with ``generate``); a local path or hub
            name to load with ``AutoModelForCausalLM.from_pretrained``; or a config mapping for a model
            trained from scratch, e.g. ``{"model_type": "gpt2", "n_layer": 3, "n_embd": 96, "n_head": 3}``
            (``vocab_size`` defaults to the tokenizer's size).
        tokenizer: the model's tokenizer, a path / hub name for ``AutoTokenizer``, or ``"char"`` for
            :func:`~lightning_premem.tokenization.char_tokenizer`; the
            :class:`~lightning_premem.PreMemorizationCallback` finds it here.
        learning_rate: peak AdamW learning rate.
        weight_decay: AdamW weight decay.
        warmup_ratio: fraction of the run's optimizer steps spent warming up linearly from 0.
        betas: AdamW betas.

    Batches are mappings with ``input_ids``, ``attention_mask`` and ``labels`` (``-100`` where no
    loss is taken); other keys (``example_ids``) are ignored.
    """

    def __init__(
        self,
        model: Any,
        tokenizer: Any = None,
        *,
        learning_rate: float = 2e-5,
        weight_decay: float = 0.0,
        warmup_ratio: float = 0.03,
        betas: tuple[float, float] = (0.9, 0.999),
    ) -> None:
        super().__init__()
        if not learning_rate > 0:
            raise ValueError(f"`learning_rate` must be > 0, got {learning_rate!r}.")
        if weight_decay < 0:
            raise ValueError(f"`weight_decay` must be >= 0, got {weight_decay!r}.")
        if not 0 <= warmup_ratio < 1:
            raise ValueError(f"`warmup_ratio` must be in [0, 1), got {warmup_ratio!r}.")
        self.save_hyperparameters(
            ignore=[
                name
                for name, value in (("model", model), ("tokenizer", tokenizer))
                if not isinstance(value, (str, dict))
            ]
        )
        self.tokenizer = None if tokenizer is None else load_tokenizer(tokenizer)
        self.model = _load_model(model, self.tokenizer)
        self.model.train()  # from_pretrained returns eval mode (dropout off); training starts in train mode
        if getattr(self.model, "loss_type", "") is None:
            # transformers could not tell the loss from the class name (GPT-2's LMHeadModel) and would warn on
            # every run that it falls back to the causal-LM loss: name that loss, which is this module's
            self.model.loss_type = "ForCausalLM"

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None, labels: Tensor | None = None) -> Any:
        """Run the wrapped model."""
        return self.model(input_ids=input_ids, attention_mask=attention_mask, labels=labels)

    def training_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Compute the token cross-entropy of the target traces."""
        loss: Tensor = self(batch["input_ids"], batch.get("attention_mask"), batch["labels"]).loss
        self.log("train/loss", loss, on_step=True, on_epoch=True, prog_bar=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def validation_step(self, batch: dict[str, Tensor], batch_idx: int) -> Tensor:
        """Compute the validation token cross-entropy of the target traces."""
        loss: Tensor = self(batch["input_ids"], batch.get("attention_mask"), batch["labels"]).loss
        self.log("val/loss", loss, on_epoch=True, prog_bar=True, sync_dist=True, batch_size=batch["input_ids"].shape[0])
        return loss

    def configure_optimizers(self) -> Any:
        """AdamW with linear warmup and linear decay to 0 over ``trainer.estimated_stepping_batches``."""
        decay: list[torch.nn.Parameter] = []
        no_decay: list[torch.nn.Parameter] = []
        for name, param in self.model.named_parameters():
            if param.requires_grad:
                (no_decay if param.ndim < 2 or "norm" in name.lower() else decay).append(param)
        optimizer = torch.optim.AdamW(
            [
                {"params": decay, "weight_decay": self.hparams["weight_decay"]},
                {"params": no_decay, "weight_decay": 0.0},
            ],
            lr=self.hparams["learning_rate"],
            betas=tuple(self.hparams["betas"]),
        )
        total = max(1, int(self.trainer.estimated_stepping_batches))
        warmup = int(self.hparams["warmup_ratio"] * total)

        def factor(step: int) -> float:
            if step < warmup:
                return (step + 1) / (warmup + 1)
            return max(0.0, (total - step) / max(1, total - warmup))

        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}


def _load_model(model: Any, tokenizer: Any) -> Any:
    if isinstance(model, Mapping):
        return model_from_config(model, tokenizer)
    if isinstance(model, str):
        from transformers import AutoModelForCausalLM

        try:
            return AutoModelForCausalLM.from_pretrained(model)
        except OSError as err:
            raise ValueError(
                f"cannot load a causal LM from {model!r} ({err}). Pass a local folder holding a saved model, a hub "
                "name on a machine that can reach the hub, or a model object."
            ) from None
    if not (isinstance(model, torch.nn.Module) and callable(getattr(model, "generate", None))):
        raise TypeError(
            f"`model` must be a Hugging Face causal LM (a torch module with `generate`) or a path/hub name, "
            f"got {type(model).__name__}."
        )
    return model


def model_from_config(config: Mapping[str, Any], tokenizer: Any = None) -> Any:
    """Build an untrained causal LM from a config mapping (``model_type`` and that model's fields).

    ``vocab_size`` and the special-token ids default to the tokenizer's.
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    config = dict(config)

    model_type = config.pop("model_type", None)
    if not isinstance(model_type, str):
        raise ValueError(
            "a model config mapping needs 'model_type' (e.g. 'gpt2', 'llama') and that model's config fields, "
            f"got keys {sorted(config)}."
        )
    if "vocab_size" not in config:
        if tokenizer is None:
            raise ValueError("a model built from a config needs 'vocab_size' or a tokenizer to take it from.")
        config["vocab_size"] = len(tokenizer)
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if key not in config and getattr(tokenizer, key, None) is not None:
            config[key] = getattr(tokenizer, key)
    try:
        hf_config = AutoConfig.for_model(model_type, **config)
    except (ValueError, TypeError) as err:
        raise ValueError(f"cannot build a {model_type!r} config from {config}: {err}") from None
    return AutoModelForCausalLM.from_config(hf_config)  # type: ignore[no-untyped-call]
