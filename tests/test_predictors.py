"""Baseline predictors: gradient variance, distance from init, ATC, and their callback (hand-computed values)."""

import math

import lightning as L  # noqa: N812
import numpy as np
import pytest
import torch
from _tiny import SeedKeyedSampler, examples, fit_quietly, loader, module, tokenizer

from lightning_premem import PreMemorizationCallback
from lightning_premem.analysis import predictor_table
from lightning_premem.callbacks.predictors import (
    BaselinePredictorsCallback,
    atc_score,
    completion_confidence,
    distance_from_init,
    fit_atc_threshold,
    gradient_variance,
    snapshot_parameters,
)
from lightning_premem.history import load_run_histories
from lightning_premem.probes import encode_prompt_target, target_perplexity
from lightning_premem.probes.seeds import STREAMS, example_seed


def test_gradient_variance_on_known_gradients():
    # loss_b = x_b . w + 0.5 * c_b * v^2: gradients (x_b, c_b * v)
    w = torch.zeros(2, requires_grad=True)
    v = torch.tensor(2.0, requires_grad=True)
    batches = [(torch.tensor([1.0, 0.0]), 1.0), (torch.tensor([3.0, 0.0]), 0.0), (torch.tensor([2.0, 3.0]), 2.0)]
    w.grad = torch.full((2,), 7.0)
    value = gradient_variance(lambda b: (b[0] * w).sum() + 0.5 * b[1] * v**2, batches, [w, v])
    # gradients (1, 0, 2), (3, 0, 0), (2, 3, 4); mean (2, 1, 2); squared deviations 2 + 6 + 8 = 16 -> 16 / 2
    assert value == pytest.approx(8.0)
    assert torch.equal(w.grad, torch.full((2,), 7.0)) and v.grad is None  # .grad untouched


def test_gradient_variance_unused_parameter_and_errors():
    w, unused = torch.ones(1, requires_grad=True), torch.ones(3, requires_grad=True)
    assert gradient_variance(lambda x: x * w.sum(), [1.0, 3.0], [w, unused]) == pytest.approx(2.0)  # (1-2)² + (3-2)²
    assert gradient_variance(lambda x: x * w.sum(), [2.0, 2.0], [w]) == 0.0
    with pytest.raises(ValueError, match="at least 2 batches"):
        gradient_variance(lambda x: x * w.sum(), [1.0], [w])
    with pytest.raises(TypeError, match="scalar tensor"):
        gradient_variance(lambda x: w * torch.ones(2), [1.0, 2.0], [w])


def test_distance_from_init_keeps_theta0_on_cpu():
    torch.manual_seed(0)
    layer = torch.nn.Linear(3, 2)
    theta0 = snapshot_parameters(layer)
    assert all(t.device.type == "cpu" for t in theta0.values())
    assert theta0["weight"].data_ptr() != layer.weight.data_ptr()
    assert distance_from_init(layer, theta0) == 0.0
    with torch.no_grad():
        layer.weight[0, 0] += 1.0
        layer.weight[1, 2] -= 2.0
        layer.bias[1] += 2.0
    assert distance_from_init(layer, theta0) == pytest.approx(3.0)  # sqrt(1 + 4 + 4)
    layer.bias.requires_grad_(False)
    assert set(snapshot_parameters(layer)) == {"weight"}
    with pytest.raises(ValueError, match="lacks"):
        distance_from_init(torch.nn.Linear(3, 2, bias=False), theta0)


def test_atc_threshold_and_score_by_hand():
    conf = [-0.1, -0.9, -0.3, -0.5, -2.0]
    # 3 of 5 correct: the threshold is the 4th largest confidence, -0.9; exactly 3 lie above it
    assert fit_atc_threshold(conf, [1, 0, 1, 1, 0]) == -0.9
    assert atc_score(conf, -0.9) == pytest.approx(3 / 5)
    assert fit_atc_threshold(conf, [0] * 5) == -0.1 and atc_score(conf, -0.1) == 0.0
    assert fit_atc_threshold(conf, [1] * 5) == -math.inf and atc_score(conf, -math.inf) == 1.0
    assert atc_score([-0.2, -0.4, -0.6, -1.0], threshold=-0.5) == 0.5  # queries: the share above the threshold
    with pytest.raises(ValueError, match="same length"):
        fit_atc_threshold([0.1], [1, 0])


def test_completion_confidence_is_minus_log_perplexity():
    tok = tokenizer()
    model = module(tok).model
    prompts = ["What is 1+2?\nAnswer:", "What is 3+4?\nAnswer:", "What is 5+5?\nAnswer:"]
    completions = [" 1+2=3\n#### 3", "", " 7"]
    conf = completion_confidence(model, tok, prompts, completions, pad_token_id=tok.pad_token_id)
    ppl = target_perplexity(
        model, [encode_prompt_target(tok, prompts[i], completions[i]) for i in (0, 2)], pad_token_id=tok.pad_token_id
    )
    torch.testing.assert_close(conf[[0, 2]], -torch.log(ppl))
    assert conf[1] == -math.inf


def test_callback_arguments_are_checked():
    with pytest.raises(ValueError, match="0 \\(off\\) or at least 2"):
        BaselinePredictorsCallback(gradient_batches=1)
    with pytest.raises(ValueError, match="`atc_examples` is empty"):
        BaselinePredictorsCallback(atc_examples=[])
    with pytest.raises(TypeError, match="CompletionSampler"):
        BaselinePredictorsCallback(sampler=object())


@pytest.mark.slow
def test_callback_on_the_tiny_model_writes_values_the_report_joins(tmp_path):
    tok = tokenizer()
    train, held, queries = examples(8), examples(3, seed=1, start_id=100), examples(3, seed=2, start_id=200)
    fast = {"num_samples": 2, "max_new_tokens": 6, "temperature": 1.0}
    premem = PreMemorizationCallback(train_examples=train, test_examples=queries, progress=False, **fast)
    predictors = BaselinePredictorsCallback(gradient_batches=2, atc_examples=held, atc_queries=queries, **fast)
    L.seed_everything(0)
    pl_module = module(tok, learning_rate=1e-2)
    theta0 = snapshot_parameters(pl_module.model)
    trainer = L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=2,
        logger=False,
        callbacks=[premem, predictors],
        enable_progress_bar=False,
        enable_model_summary=False,
        enable_checkpointing=False,
        accelerator="cpu",
        deterministic=True,
    )
    trainer.fit(pl_module, loader(tok, train, batch_size=4))

    history = predictors.history
    assert [r["step"] for r in history] == [r["step"] for r in premem.history] == [2, 4]
    last = history[-1]
    # recompute from the final weights: the distance from the snapshot taken before fit, the variance on the batches
    assert last["distance_from_init"] == pytest.approx(distance_from_init(pl_module.model, theta0), rel=1e-6)
    assert last["distance_from_init"] > history[0]["distance_from_init"] > 0
    batches = predictors._batches
    assert len(batches) == 2 and batches[0]["input_ids"].device.type == "cpu"
    pl_module.model.eval()
    expected = gradient_variance(
        lambda b: (
            pl_module.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"], labels=b["labels"]).loss
        ),
        batches,
        [p for p in pl_module.model.parameters() if p.requires_grad],
    )
    assert last["gradient_variance"] == pytest.approx(expected, rel=1e-4)
    assert 0.0 <= last["atc"] <= 1.0 and 0.0 <= last["atc_fit_accuracy"] <= 1.0
    assert last["epoch_train_loss"] > 0
    assert trainer.callback_metrics["predictors/distance_from_init"].item() == pytest.approx(last["distance_from_init"])

    folder = tmp_path / "premem"
    with np.load(folder / "predictors.npz") as saved:
        assert saved["steps"].tolist() == [2, 4]
        np.testing.assert_allclose(saved["gradient_variance"], [r["gradient_variance"] for r in history])
    (run,) = load_run_histories(tmp_path)  # predictors.npz is not mistaken for a run log
    table = predictor_table([run], premem.threshold)
    assert table["num_points"]["distance_from_init"] == 2 and table["num_points"]["atc"] == 2
    assert table["runs"][0]["checkpoints"][1]["gradient_variance"] == pytest.approx(last["gradient_variance"])


@pytest.mark.slow
def test_atc_fit_samples_are_the_validation_probe_samples(tmp_path):
    # same validation queries, same seed: ATC's fit accuracy is the callback's validation accuracy, sample for sample
    tok = tokenizer()
    train, held = examples(4), examples(12, seed=1, start_id=100)
    premem = PreMemorizationCallback(
        train_examples=train, validation_examples=held, sampler=SeedKeyedSampler(), seed=7, progress=False
    )
    predictors = BaselinePredictorsCallback(
        gradient_batches=0, distance=False, atc_examples=held, atc_queries=train, sampler=SeedKeyedSampler(), seed=7
    )
    fit_quietly(tmp_path, module(tok), loader(tok, train, batch_size=4), [premem, predictors])
    expected = SeedKeyedSampler.expected_accuracy([example_seed(7, r["id"], STREAMS["validation"]) for r in held])
    assert 0 < expected < 1
    assert premem.history[-1]["validation_accuracy"] == pytest.approx(expected)
    assert predictors.history[-1]["atc_fit_accuracy"] == pytest.approx(expected)
    (run,) = load_run_histories(tmp_path / "premem")
    assert run.validation_accuracy.tolist() == pytest.approx([expected])
