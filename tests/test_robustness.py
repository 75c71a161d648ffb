"""Robustness probe: perturbed prompts, per-example accuracy, and the callback option."""

import lightning as L  # noqa: N812
import numpy as np
import pytest
from _tiny import SeedKeyedSampler, examples, fit_quietly, loader, module, tokenizer

from lightning_premem import PreMemorizationCallback
from lightning_premem.analysis import build_report
from lightning_premem.history import load_run_histories
from lightning_premem.probes.robustness import (
    DEFAULT_PERTURBATIONS,
    perturb_prompt,
    resolve_perturbations,
    robustness_accuracy,
)


class ByPrompt:
    """Correct on clean prompts; on ' First' prompts right for even ids only; on others always wrong."""

    num_samples = 2

    def __init__(self, rows):
        self.answer = {f"{r['question']}\nAnswer:": r["solution"] for r in rows}
        self.calls = []

    def sample(self, prompts, seeds):
        self.calls.append((list(prompts), list(seeds)))
        out = []
        for prompt in prompts:
            for clean, solution in self.answer.items():
                if prompt == clean:
                    out.append([f" {solution}"] * 2)
                    break
                if prompt.startswith(clean):
                    first = prompt.endswith(" First") and int(solution.split()[-1]) % 2 == 0
                    out.append([f" {solution}", " #### -1"] if first else [" #### -1"] * 2)
                    break
            else:
                raise AssertionError(prompt)
        return out


def test_perturb_prompt_and_resolution():
    assert perturb_prompt("Q?\nAnswer:", " First") == "Q?\nAnswer: First"
    assert perturb_prompt("Answer: a\nAnswer: b", " X") == "Answer: a\nAnswer: X b"  # after the last anchor
    with pytest.raises(ValueError, match="has no 'Answer:'"):
        perturb_prompt("Q?", " First")
    assert resolve_perturbations(None) == () and resolve_perturbations("default") == DEFAULT_PERTURBATIONS
    assert DEFAULT_PERTURBATIONS == (" First", " We know that")
    for bad in (" First", [], [""], [" a", " a"]):
        with pytest.raises(ValueError, match="perturbations"):
            resolve_perturbations(bad)


def test_robustness_accuracy_per_example_and_perturbation():
    rows = examples(4)
    sampler = ByPrompt(rows)
    result = robustness_accuracy(sampler, rows, seed=3)
    assert result.shape == (2, 4)
    even = [int(r["solution"].split()[-1]) % 2 == 0 for r in rows]
    np.testing.assert_array_equal(result[0].numpy(), [0.5 if e else 0.0 for e in even])
    np.testing.assert_array_equal(result[1].numpy(), [0.0] * 4)
    (first_prompts, first_seeds), (second_prompts, second_seeds) = sampler.calls
    assert first_prompts[0].endswith("Answer: First") and second_prompts[0].endswith("Answer: We know that")
    assert len(set(first_seeds) | set(second_seeds)) == 8  # a stream per example and perturbation
    assert robustness_accuracy(ByPrompt(rows), rows, seed=3).equal(result)  # seeded


@pytest.mark.slow
def test_callback_option_writes_and_logs_robust_accuracy(tmp_path):
    tok = tokenizer()
    train = examples(6)
    callback = PreMemorizationCallback(
        train_examples=train, sampler=ByPrompt(train), perturbations="default", progress=False
    )
    L.seed_everything(0)
    trainer = fit_quietly(tmp_path, module(tok), loader(tok, train), [callback], epochs=2)
    even = np.array([int(r["solution"].split()[-1]) % 2 == 0 for r in train])
    record = callback.history[-1]
    np.testing.assert_array_equal(record["robust_accuracy"].numpy(), [np.where(even, 0.5, 0.0), np.zeros(6)])
    assert trainer.callback_metrics["premem/robust_accuracy"].item() == pytest.approx(even.mean() * 0.5 / 2)
    (run,) = load_run_histories(tmp_path)
    assert run.perturbations == DEFAULT_PERTURBATIONS and run.robust_accuracy.shape == (2, 2, 6)
    report = build_report([run], calibrate=False, num_resamples=50)
    (relation,) = report["robustness"]
    assert relation["clean_accuracy"] == 1.0 and relation["perturbed_accuracy"][" We know that"] == 0.0
    assert sum(b["count"] for b in relation["bins"]) == 6


@pytest.mark.slow
def test_callback_and_robustness_accuracy_draw_the_same_samples(tmp_path):
    # one seed function for both: with the same seed the callback's robust accuracy is robustness_accuracy's
    tok = tokenizer()
    train = examples(8)
    callback = PreMemorizationCallback(
        train_examples=train, sampler=SeedKeyedSampler(), perturbations="default", seed=5, progress=False
    )
    fit_quietly(tmp_path, module(tok), loader(tok, train), [callback])
    standalone = robustness_accuracy(SeedKeyedSampler(), train, seed=5)
    assert 0 < float(standalone.mean()) < 1  # the samples depend on the seeds
    np.testing.assert_array_equal(callback.history[-1]["robust_accuracy"].numpy(), standalone.numpy())
    assert not robustness_accuracy(SeedKeyedSampler(), train, seed=6).equal(standalone)


def test_callback_option_needs_an_answer_anchor():
    with pytest.raises(ValueError, match="has no 'Answer:'"):
        PreMemorizationCallback(train_examples=examples(2), perturbations="default", prompt_template="Q: {question}")
    with pytest.raises(ValueError, match="perturbations"):
        PreMemorizationCallback(train_examples=examples(2), perturbations=" First")
