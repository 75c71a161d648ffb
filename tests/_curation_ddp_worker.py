"""One process of a 2-process CPU DDP fit with CuratedDataModule (see test_curation_ddp.py)."""

import os

import lightning as L  # noqa: N812
import torch
from _ddp import lightning_env
from _tiny import examples, module, tokenizer
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy

from lightning_premem import CuratedDataModule, PreMemorizationCallback


class Record(Callback):
    """Per epoch: the sampler's weights at the start and the example ids this rank trained on."""

    def __init__(self):
        self.epochs = {}

    def on_train_epoch_start(self, trainer, pl_module):
        weights = trainer.datamodule._sampler.weights.clone()
        self.epochs[trainer.current_epoch] = {"weights": weights, "ids": []}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.epochs[trainer.current_epoch]["ids"].extend(batch["example_ids"].tolist())


def run(rank, world, port, out_dir):
    lightning_env(rank, world, port)
    tok = tokenizer()
    dm = CuratedDataModule(
        examples(10),
        fields={"question": "question", "solution": "solution", "id": "id"},
        tokenizer=tok,
        batch_size=2,
        temperature=0.2,
        floor=0.05,
    )
    record = Record()
    premem = PreMemorizationCallback(
        num_samples=2, max_new_tokens=8, temperature=1.0, progress=False, answer_kind=lambda c, r: len(c) % 2 == 0
    )
    trainer = L.Trainer(
        default_root_dir=out_dir,
        max_epochs=3,
        devices=world,
        strategy=DDPStrategy(process_group_backend="gloo"),
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[premem, record],
    )
    L.seed_everything(0)
    trainer.fit(module(tok), datamodule=dm)
    torch.save({"epochs": record.epochs, "seed": dm.seed}, os.path.join(out_dir, f"rank{rank}.pt"))
