"""PreMemorizationCallback end to end on a tiny GPT-2 (CPU, no downloads)."""

import csv
import logging
import time

import lightning as L  # noqa: N812
import numpy as np
import pytest
import torch
from _tiny import FrozenModule, SeedKeyedSampler, examples, loader, module, tokenizer
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import TensorBoardLogger
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lightning_premem import PreMemorizationCallback
from lightning_premem.callbacks import BaselinePredictorsCallback
from lightning_premem.cli import main
from lightning_premem.functional import pre_memorization_accuracy
from lightning_premem.history import load_run_histories
from lightning_premem.probes import SamplingConfig

pytestmark = pytest.mark.slow

FAST = {"num_samples": 3, "max_new_tokens": 12, "temperature": 1.0, "progress": False}


def _trainer(tmp_path, epochs, logger=True, callbacks=(), **kwargs):
    kwargs.setdefault("enable_checkpointing", False)
    return L.Trainer(
        default_root_dir=tmp_path,
        max_epochs=epochs,
        logger=TensorBoardLogger(tmp_path, name="tb") if logger else False,
        callbacks=list(callbacks),
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
        deterministic=True,
        **kwargs,
    )


def test_end_to_end_tensorboard_history_and_replay(tmp_path, capsys):
    tok = tokenizer()
    train, test = examples(12), examples(6, seed=1, start_id=100)
    callback = PreMemorizationCallback(train_examples=train, test_examples=test, **FAST)
    L.seed_everything(0)
    trainer = _trainer(tmp_path, 3, callbacks=[callback])
    trainer.fit(module(tok, learning_rate=1e-2), loader(tok, train))

    # TensorBoard: every documented tag, one value per epoch, plausible values
    events = EventAccumulator(str(trainer.logger.log_dir), size_guidance={"images": 0, "histograms": 0, "scalars": 0})
    events.Reload()
    scalars = set(events.Tags()["scalars"])
    for tag in (
        "pre_memorization_accuracy",
        "train_accuracy",
        "memorized_fraction",
        "test_accuracy",
        "target_perplexity",
        "unparseable_fraction",
        "num_probed",
    ):
        assert f"premem/{tag}" in scalars
        values = [e.value for e in events.Scalars(f"premem/{tag}")]
        assert len(values) == 3
    for tag in (
        "pre_memorization_accuracy",
        "train_accuracy",
        "memorized_fraction",
        "test_accuracy",
        "unparseable_fraction",
    ):
        assert all(0.0 <= e.value <= 1.0 for e in events.Scalars(f"premem/{tag}"))
    assert "premem/pre_memorization_accuracy_stderr" not in scalars  # everything was probed
    ppl = [e.value for e in events.Scalars("premem/target_perplexity")]
    assert ppl[-1] < ppl[0]  # training lowers the targets' perplexity
    assert "premem/per_example_pre_memorization_accuracy" in events.Tags()["histograms"]
    assert "premem/per_example_dynamics" in events.Tags()["images"]

    # the history file: replayable, consistent with the metric and the functional core
    (run,) = load_run_histories(tmp_path)
    assert run.example_ids.tolist() == list(range(12)) and run.num_checkpoints == 3
    assert run.test_accuracy is not None
    history = callback.history
    np.testing.assert_array_equal(run.train_accuracy, torch.stack([r["accuracy"] for r in history]).numpy())
    with np.load(run.source) as saved:
        premem = pre_memorization_accuracy(saved["train_accuracy"], saved["train_perplexity"], callback.threshold)
        np.testing.assert_array_equal(saved["pre_memorization_accuracy"], premem.numpy())
        np.testing.assert_array_equal(saved["pre_memorization_accuracy"][-1], callback.metric.per_example().numpy())
        np.testing.assert_array_equal(saved["num_correct"] / 3, saved["train_accuracy"])
        assert saved["steps"].tolist() == [r["step"] for r in history]
    assert [e.value for e in events.Scalars("premem/test_accuracy")] == pytest.approx(run.test_accuracy.tolist())
    logged = [e.value for e in events.Scalars("premem/pre_memorization_accuracy")]
    assert logged[-1] == pytest.approx(float(premem[-1].mean()), abs=1e-6)

    rows = list(csv.DictReader((run.source.parent / "round_002.csv").open()))
    assert len(rows) == 12 and rows[0]["epoch"] == "2"
    assert float(rows[5]["pre_memorization_accuracy"]) == pytest.approx(float(premem[-1, 5]), abs=1e-6)

    assert main(["replay", str(tmp_path), "--json"]) == 0
    assert '"name": "tb/version_0"' in capsys.readouterr().out


class EchoSampler:
    """Answers every prompt with its reference solution: train accuracy is exactly 1."""

    num_samples = 2

    def __init__(self, solutions):
        self.solutions = solutions

    def sample(self, prompts, seeds):
        return [[self.solutions[p]] * 2 for p in prompts]


def test_custom_sampler_subset_every_n_epochs_and_no_logger(tmp_path):
    tok = tokenizer()
    train = examples(10)
    solutions = {f"{e['question']}\nAnswer:": f" {e['solution']}" for e in train}
    callback = PreMemorizationCallback(
        train_examples=train,
        sampler=EchoSampler(solutions),
        every_n_epochs=2,
        max_examples=4,
        threshold=1.05,
        progress=False,
    )
    L.seed_everything(0)
    trainer = _trainer(tmp_path, 4, logger=False, callbacks=[callback])
    trainer.fit(module(tok), loader(tok, train))
    assert [r["epoch"] for r in callback.history] == [1, 3]
    assert len(callback.probed_ids) == 4 and callback.probed_ids == sorted(callback.probed_ids)
    assert all(bool((r["accuracy"] == 1).all()) for r in callback.history)
    metrics = trainer.callback_metrics
    assert metrics["premem/train_accuracy"].item() == 1.0
    assert "premem/pre_memorization_accuracy_stderr" in metrics
    # with every answer right, an example scores 1 unless it was memorized from its first probe on
    memorized_first = (callback.history[0]["perplexity"] <= 1.05).float()
    expected = (1 - memorized_first).mean().item()
    assert metrics["premem/pre_memorization_accuracy"].item() == pytest.approx(expected)
    assert (tmp_path / "premem" / "history.npz").exists()  # no logger: default_root_dir


def test_callable_answer_kind():
    callback = PreMemorizationCallback(train_examples=examples(2), answer_kind=lambda c, r: None)
    assert callable(callback.answer_kind)


def test_resume_logs_what_the_uninterrupted_run_logs(tmp_path):
    tok = tokenizer()
    train = examples(8)

    def run(folder, ckpt_path=None):
        callback = PreMemorizationCallback(train_examples=train, **FAST)
        every_epoch = ModelCheckpoint(dirpath=folder / "ckpt", save_top_k=-1, every_n_epochs=1)
        L.seed_everything(0)
        trainer = _trainer(folder, 4, callbacks=[callback, every_epoch], enable_checkpointing=True)
        trainer.fit(module(tok), loader(tok, train), ckpt_path=ckpt_path)
        return callback

    full = run(tmp_path / "full")
    (mid,) = (tmp_path / "full" / "ckpt").glob("epoch=1-*.ckpt")  # saved after 2 of the 4 epochs
    state = torch.load(mid, weights_only=False)["callbacks"]
    (key,) = [k for k in state if k.startswith("PreMemorizationCallback")]
    assert len(state[key]["rounds"]) == 2
    resumed = run(tmp_path / "resumed", ckpt_path=mid)
    assert [r["step"] for r in resumed.history] == [r["step"] for r in full.history]
    for a, b in zip(resumed.history, full.history, strict=True):
        torch.testing.assert_close(a["accuracy"], b["accuracy"], rtol=0, atol=0)
        torch.testing.assert_close(a["perplexity"], b["perplexity"], rtol=1e-5, atol=0)
    assert torch.equal(resumed.metric.per_example(), full.metric.per_example())
    (run_full,) = load_run_histories(tmp_path / "full")
    (run_resumed,) = load_run_histories(tmp_path / "resumed")
    np.testing.assert_array_equal(run_full.train_accuracy, run_resumed.train_accuracy)
    np.testing.assert_allclose(run_full.train_perplexity, run_resumed.train_perplexity, rtol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"train_examples": []}, "no training examples to probe"),
        ({"train_examples": [{"id": 0, "question": "q"}]}, "lack a non-empty string 'question' or 'solution'"),
        ({"train_examples": [{"id": -1, "question": "q", "solution": "#### 1"}]}, "no valid 'id'"),
        ({"train_examples": [{"id": 3, "question": "q", "solution": "#### 1"}] * 2}, "repeated: \\[3\\]"),
        ({"train_examples": [{"id": 0, "question": "q", "solution": "no answer"}]}, "have no final answer"),
        ({"train_examples": [{"id": 0, "question": "What is 1+1?" * 20, "solution": "#### 2"}]}, "longer than"),
    ],
)
def test_fails_early_at_setup(tmp_path, kwargs, match):
    tok = tokenizer()
    callback = PreMemorizationCallback(**kwargs, **FAST)
    trainer = _trainer(tmp_path, 1, logger=False, callbacks=[callback])
    model = FrozenModule(module(tok).model, tok)
    with pytest.raises(ValueError, match=match):
        trainer.fit(model, loader(tok, examples(4)))
    assert trainer.global_step == 0  # before any training


def test_fails_early_without_tokenizer_or_model(tmp_path):
    tok = tokenizer()
    callback = PreMemorizationCallback(train_examples=examples(2), **FAST)
    no_tokenizer = FrozenModule(module(tok).model, None)
    with pytest.raises(ValueError, match="needs the tokenizer"):
        _trainer(tmp_path, 1, logger=False, callbacks=[callback]).fit(no_tokenizer, loader(tok, examples(2)))
    with pytest.raises(ValueError, match="cannot find the language model"):
        callback = PreMemorizationCallback(train_examples=examples(2), model_attr="lm", **FAST)
        _trainer(tmp_path, 1, logger=False, callbacks=[callback]).fit(no_tokenizer, loader(tok, examples(2)))


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"num_samples": 0}, ValueError, "`num_samples` must be an int >= 1, got 0"),
        ({"every_n_epochs": 0}, ValueError, "`every_n_epochs`"),
        ({"max_examples": -2}, ValueError, "`max_examples`"),
        ({"threshold": 0.5}, ValueError, "threshold"),
        ({"answer_kind": "mmlu"}, ValueError, "answer_kind"),
        ({"sampler": object()}, TypeError, "CompletionSampler"),
        ({"prompt_template": "{q}"}, ValueError, "must contain \\{question\\}"),
    ],
)
def test_constructor_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        PreMemorizationCallback(**kwargs)


class _Echo:
    num_samples = 2

    def sample(self, prompts, seeds):
        return [[" #### 1"] * 2 for _ in prompts]


@pytest.mark.parametrize("callback_class", [PreMemorizationCallback, BaselinePredictorsCallback])
def test_sampling_settings_are_one_object_and_never_silently_dropped(callback_class):
    config = SamplingConfig(num_samples=3, temperature=0.5, max_new_tokens=9)
    assert callback_class(sampling=config).sampling == config
    assert callback_class(num_samples=3, temperature=0.5, max_new_tokens=9).sampling == config
    assert callback_class().sampling == SamplingConfig()  # the paper's settings
    assert callback_class(sampler=_Echo()).sampling is None
    with pytest.raises(ValueError, match=r"`sampler=` samples with its own settings, so `num_samples` would be"):
        callback_class(sampler=_Echo(), num_samples=3)
    with pytest.raises(ValueError, match=r"so `sampling` would be ignored"):
        callback_class(sampler=_Echo(), sampling=config)
    with pytest.raises(ValueError, match=r"either as `sampling=SamplingConfig\(...\)` or as flat arguments \(top_p\)"):
        callback_class(sampling=config, top_p=0.9)
    with pytest.raises(TypeError, match="`sampling` must be a SamplingConfig"):
        callback_class(sampling={"num_samples": 3})


def test_the_built_in_sampler_samples_with_the_settings(tmp_path):
    tok = tokenizer()
    config = SamplingConfig(num_samples=2, temperature=1.0, max_new_tokens=5, batch_size=3)
    callback = PreMemorizationCallback(train_examples=examples(4), sampling=config, progress=False)
    _trainer(tmp_path, 1, logger=False, callbacks=[callback]).fit(module(tok), loader(tok, examples(4)))
    assert callback._sampler.config == config and callback.history[-1]["num_samples"] == 2


def test_scores_are_pushed_to_a_datamodule_that_takes_them(tmp_path):
    from lightning_premem import ReasoningDataModule

    tok = tokenizer()
    received = []

    class Receiving(ReasoningDataModule):
        def update_premem_scores(self, example_ids, scores):
            received.append((list(example_ids), {k: v.clone() for k, v in scores.items()}))

    rows = examples(6)
    data = Receiving(rows, fields={"question": "question", "solution": "solution", "id": "id"}, tokenizer=tok)
    callback = PreMemorizationCallback(**FAST)
    L.seed_everything(0)
    _trainer(tmp_path, 2, logger=False, callbacks=[callback]).fit(module(tok), datamodule=data)
    assert len(received) == 2
    ids, scores = received[-1]
    assert ids == callback.probed_ids == list(range(6))
    assert torch.equal(scores["pre_memorization_accuracy"], callback.metric.per_example())
    assert torch.equal(scores["perplexity"], callback.history[-1]["perplexity"])


class _SlowEcho(_Echo):
    """Sampling that takes far longer than the tiny model's training epochs."""

    def sample(self, prompts, seeds):
        time.sleep(0.3)
        return super().sample(prompts, seeds)


def test_max_time_fraction_skips_rounds_but_never_the_first_or_the_last(tmp_path, caplog):
    tok = tokenizer()
    rows = examples(4)
    callback = PreMemorizationCallback(train_examples=rows, sampler=_SlowEcho(), max_time_fraction=0.5, progress=False)
    with caplog.at_level(logging.INFO, logger="lightning.pytorch.utilities.rank_zero"):
        trainer = _trainer(tmp_path, 4, logger=False, callbacks=[callback])
        trainer.fit(module(tok), loader(tok, rows))
    # epoch 0 probes (the first round); 1 and 2 would take most of the time and are skipped; 3 is the last epoch
    assert [r["epoch"] for r in callback.history] == [0, 3]
    assert all(0.5 < r["probe_time_fraction"] <= 1 and r["probe_seconds"] >= 0.3 for r in callback.history)
    assert sum("probe skipped" in m and "max_time_fraction 50%" in m for m in caplog.messages) == 2
    assert 0.5 < trainer.callback_metrics["premem/probe_time_fraction"].item() <= 1
    unbounded = PreMemorizationCallback(train_examples=rows, sampler=_SlowEcho(), progress=False)
    _trainer(tmp_path / "all", 3, logger=False, callbacks=[unbounded]).fit(module(tok), loader(tok, rows))
    assert [r["epoch"] for r in unbounded.history] == [0, 1, 2]
    with pytest.raises(ValueError, match=r"`max_time_fraction` must be in \(0, 1\)"):
        PreMemorizationCallback(max_time_fraction=1.5)


def test_a_seeded_subset_of_1000_is_probed_by_default(tmp_path):
    tok = tokenizer()
    rows = examples(1100)
    callback = PreMemorizationCallback(train_examples=rows, sampler=SeedKeyedSampler(), progress=False)
    trainer = _trainer(tmp_path, 1, logger=False, callbacks=[callback], limit_train_batches=1)
    trainer.fit(module(tok), loader(tok, rows))
    assert len(callback.probed_ids) == 1000 and set(callback.probed_ids) < {r["id"] for r in rows}
    again = PreMemorizationCallback(train_examples=rows, sampler=_Echo(), progress=False)
    _trainer(tmp_path / "again", 1, logger=False, callbacks=[again], limit_train_batches=1).fit(
        module(tok), loader(tok, rows)
    )
    assert again.probed_ids == callback.probed_ids  # seeded: the same subset every time
    # the logged standard error is the finite-population one of the subset mean, by hand
    values = callback.metric.per_example().double().numpy()
    expected = values.std(ddof=1) / np.sqrt(1000) * np.sqrt((1100 - 1000) / (1100 - 1))
    stderr = trainer.callback_metrics["premem/pre_memorization_accuracy_stderr"].item()
    assert stderr == pytest.approx(expected, rel=1e-5) and 0 < stderr < 0.02
    everything = PreMemorizationCallback(train_examples=rows[:1050], sampler=_Echo(), max_examples=None, progress=False)
    _trainer(tmp_path / "all", 1, logger=False, callbacks=[everything], limit_train_batches=1).fit(
        module(tok), loader(tok, rows)
    )
    assert len(everything.probed_ids) == 1050


class _RoundCoin:
    """Sample j is right with a chance of 1/3 from (seed, round, j); a quarter of the prompts only from round 4 on."""

    num_samples = 4

    def __init__(self):
        self.calls = 0
        self.prompts = 0

    def sample(self, prompts, seeds):
        self.calls += 1
        self.prompts += len(prompts)
        out = []
        for prompt, seed in zip(prompts, seeds, strict=True):
            a, b = (int(x) for x in prompt.split("What is ")[1].split("?")[0].split("+"))
            late = seed % 4 == 0 and self.calls < 4  # never right before they are memorized
            right = [not late and hash((seed, self.calls, j)) % 3 == 0 for j in range(self.num_samples)]
            out.append([f" #### {a + b if r else a + b + 1}" for r in right])
        return out


def test_skip_decided_gives_the_full_draws_values_on_a_run_that_memorizes(tmp_path):
    tok = tokenizer()
    rows = examples(16)
    runs = {}
    for skip in (False, True):
        L.seed_everything(0)
        sampler = _RoundCoin()
        callback = PreMemorizationCallback(
            train_examples=rows, sampler=sampler, threshold=10.0, skip_decided=skip, progress=False
        )
        trainer = _trainer(tmp_path / str(skip), 12, logger=False, callbacks=[callback])
        trainer.fit(module(tok, learning_rate=3e-2), loader(tok, rows, batch_size=4))
        runs[skip] = (callback, sampler, trainer)
    (full, full_sampler, _), (skipping, skip_sampler, trainer) = runs[False], runs[True]
    accuracy = torch.stack([r["accuracy"] for r in full.history])
    perplexity = torch.stack([r["perplexity"] for r in full.history])
    expected = pre_memorization_accuracy(accuracy, perplexity, 10.0)
    got = pre_memorization_accuracy(
        torch.stack([r["accuracy"] for r in skipping.history]),
        torch.stack([r["perplexity"] for r in skipping.history]),
        10.0,
    )
    memorized = perplexity <= 10.0
    assert memorized[0].float().mean() < 0.5 < memorized[-1].float().mean()  # the run memorizes as it trains
    assert torch.equal(got, expected)  # every round's per-example values are the full draw's
    assert torch.equal(skipping.metric.per_example(), full.metric.per_example())
    sampled = torch.stack([r["sampled"] for r in skipping.history])
    assert 0 < skip_sampler.prompts < full_sampler.prompts == 16 * 12
    assert skip_sampler.prompts == int(sampled.sum())
    # skipped exactly where memorized with a best masked accuracy of 0 so far
    best = torch.cummax(torch.where(memorized, torch.zeros_like(accuracy), accuracy), dim=0).values
    decided = memorized[1:] & (best[:-1] == 0)
    assert torch.equal(~sampled[1:], decided) and sampled[0].all()
    last = trainer.callback_metrics
    assert last["premem/samples_skipped_fraction"].item() == pytest.approx(1 - sampled[-1].float().mean().item())
    assert last["premem/train_accuracy"].item() == pytest.approx(
        skipping.history[-1]["accuracy"][sampled[-1]].double().mean().item()
    )
    (run,) = load_run_histories(tmp_path / "True")
    with np.load(run.source) as saved:
        np.testing.assert_array_equal(saved["sampled"], sampled.numpy())
