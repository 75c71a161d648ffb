"""CausalLMModule: loss on targets only, the paper's schedule, model loading."""

import lightning as L  # noqa: N812
import pytest
import torch
from _tiny import examples, loader, model, tokenizer
from lightning.pytorch.callbacks import Callback

from lightning_premem import CausalLMModule


class RecordLR(Callback):
    def __init__(self):
        self.lrs = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_warmup_then_linear_decay_to_zero(tmp_path):
    tok = tokenizer()
    record = RecordLR()
    module = CausalLMModule(model(tok), tok, learning_rate=1e-3, warmup_ratio=0.2)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=5,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[record],
    )
    trainer.fit(module, loader(tok, examples(16), batch_size=8))  # 2 steps x 5 epochs = 10 steps, 2 warm-up
    total, warmup = 10, 2
    expected = [
        1e-3 * (s + 1) / (warmup + 1) if s < warmup else 1e-3 * (total - s) / (total - warmup) for s in range(10)
    ]
    assert record.lrs == pytest.approx(expected)


def test_loss_counts_target_tokens_only():
    tok = tokenizer()
    module = CausalLMModule(model(tok), tok)
    batch = next(iter(loader(tok, examples(4), batch_size=4)))
    with torch.no_grad():
        loss = module(batch["input_ids"], batch["attention_mask"], batch["labels"]).loss
        logits = module.model(input_ids=batch["input_ids"]).logits
    shift_logits, shift_labels = logits[:, :-1], batch["labels"][:, 1:]
    mask = shift_labels != -100
    manual = torch.nn.functional.cross_entropy(shift_logits[mask], shift_labels[mask])
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)
    # the prompt is masked: every labelled position is a target token
    assert (batch["labels"][:, :5] == -100).all()


def test_loads_a_saved_model_by_path_and_rejects_bad_input(tmp_path):
    tok = tokenizer()
    model(tok).save_pretrained(tmp_path / "tiny")
    tok.save_pretrained(tmp_path / "tiny")
    module = CausalLMModule(str(tmp_path / "tiny"), str(tmp_path / "tiny"))
    assert module.model.config.n_layer == 2 and module.tokenizer.pad_token_id == tok.pad_token_id
    with pytest.raises(ValueError, match="cannot load a causal LM from"):
        CausalLMModule(str(tmp_path / "missing"))
    with pytest.raises(TypeError, match="Hugging Face causal LM"):
        CausalLMModule(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="learning_rate"):
        CausalLMModule(model(tok), learning_rate=0)
    with pytest.raises(ValueError, match="warmup_ratio"):
        CausalLMModule(model(tok), warmup_ratio=1.0)
