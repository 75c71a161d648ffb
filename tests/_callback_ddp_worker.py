"""One process of a 2-process CPU DDP fit with the callback (see test_callback_ddp.py)."""

import os

import lightning as L  # noqa: N812
import torch
from _ddp import lightning_env
from _tiny import FrozenModule, examples, loader, model, tokenizer
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.strategies import DDPStrategy

from lightning_premem import PreMemorizationCallback


def run(rank, world, port, out_dir):
    lightning_env(rank, world, port)
    fit(out_dir, devices=world, strategy=DDPStrategy(process_group_backend="gloo"))


def _parity(completion, reference):
    """A grader that depends on every sampled character: equal accuracies mean equal samples."""
    return sum(map(ord, completion)) % 2 == 0


def fit(out_dir, devices=1, strategy="auto"):
    tok = tokenizer()
    train, test = examples(11), examples(5, seed=1, start_id=100)  # odd sizes: uneven shards
    callback = PreMemorizationCallback(
        train_examples=train,
        test_examples=test,
        answer_kind=_parity,
        num_samples=3,
        max_new_tokens=10,
        temperature=1.0,
        progress=False,
    )
    trainer = L.Trainer(
        default_root_dir=out_dir,
        max_epochs=2,
        devices=devices,
        strategy=strategy,
        accelerator="cpu",
        logger=TensorBoardLogger(out_dir, name="tb"),  # the history goes to its log_dir, found on every rank
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[callback],
        use_distributed_sampler=True,
    )
    trainer.fit(FrozenModule(model(tok), tok), loader(tok, train, batch_size=4))
    if trainer.is_global_zero:
        torch.save(
            {"history": callback.history, "per_example": callback.metric.per_example()},
            os.path.join(out_dir, "result.pt"),
        )
