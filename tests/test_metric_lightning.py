"""The metric's state rides in a Lightning checkpoint and a resumed run continues exactly."""

import lightning as L  # noqa: N812  (the library's own convention)
import pytest
import torch
from lightning.pytorch.demos.boring_classes import BoringModel

from lightning_premem import PreMemorizationAccuracy

N = 16


def _observation(step, ids):
    acc = ((step + 3 * ids) % 6).float() / 5
    ppl = 1.0 + ((2 * step + ids) % 4).float() / 10
    return acc, ppl


class ProbedModel(BoringModel):
    def __init__(self):
        super().__init__()
        self.premem = PreMemorizationAccuracy(num_examples=N, threshold=1.1)

    def training_step(self, batch, batch_idx):
        ids = torch.arange(4 * (batch_idx % 4), 4 * (batch_idx % 4) + 4)
        self.premem.update(ids, *_observation(self.global_step, ids), step=self.global_step)
        return super().training_step(batch, batch_idx)


def _trainer(tmp_path, epochs):
    return L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        limit_train_batches=4,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )


def test_checkpoint_round_trip_and_resume(tmp_path):
    torch.manual_seed(0)
    full = ProbedModel()
    _trainer(tmp_path / "full", 4).fit(full)

    torch.manual_seed(0)
    half = ProbedModel()
    trainer = _trainer(tmp_path / "half", 2)
    trainer.fit(half)
    ckpt = tmp_path / "half.ckpt"
    trainer.save_checkpoint(ckpt)

    saved = torch.load(ckpt, weights_only=False)["state_dict"]
    assert {"premem.running_max", "premem.latest", "premem.clock"} <= set(saved)

    loaded = ProbedModel.load_from_checkpoint(ckpt)
    assert torch.equal(loaded.premem.latest, half.premem.latest)
    assert torch.equal(loaded.premem.running_max, half.premem.running_max)
    assert loaded.premem.summary()["num_observed"].item() == N

    resumed = ProbedModel()
    _trainer(tmp_path / "resumed", 4).fit(resumed, ckpt_path=ckpt)
    assert torch.equal(resumed.premem.latest, full.premem.latest)
    assert torch.equal(resumed.premem.per_example(), full.premem.per_example())
    assert resumed.premem.compute().item() == pytest.approx(full.premem.compute().item())
    # and the state really moved on after the resume
    assert not torch.equal(resumed.premem.latest, half.premem.latest)
