"""`premem curate`: curation rounds per strategy and seed, outputs, resume, user files."""

import dataclasses
import json

import pytest

from lightning_premem.cli import main
from lightning_premem.experiments.curation import QUICK, run_curation, synthetic_curation_data

pytestmark = pytest.mark.slow


def test_quick_curation_outputs_and_resume(tmp_path, capsys):
    assert main(["curate", "--quick", "--output", str(tmp_path)]) == 0
    state = json.loads((tmp_path / "curation.json").read_text())
    assert set(state["runs"]) == {"premem/0", "iid/0"}
    train, pool, _ = synthetic_curation_data(QUICK, pool_size=200, test_size=16)
    pool_ids, train_ids = {r["id"] for r in pool}, {r["id"] for r in train}
    for rounds in state["runs"].values():
        assert [r["num_train"] for r in rounds] == [16, 24]
        acquired = rounds[0]["acquired"]
        assert len(set(acquired)) == 8 and set(acquired) <= pool_ids and not set(acquired) & train_ids
        assert rounds[1]["acquired"] == []  # no acquisition after the last round
        assert all(0.0 <= r["test_accuracy"] <= 1.0 for r in rounds)
    assert (tmp_path / "curation.png").read_bytes()[:4] == b"\x89PNG"
    assert "| premem |" in (tmp_path / "curation.md").read_text()

    # an interruption after premem's first round: the rerun redoes only what is missing, identically
    interrupted = json.loads(json.dumps(state))
    interrupted["runs"]["premem/0"] = interrupted["runs"]["premem/0"][:1]
    del interrupted["runs"]["iid/0"]
    (tmp_path / "curation.json").write_text(json.dumps(interrupted))
    assert main(["curate", "--quick", "--output", str(tmp_path)]) == 0
    resumed = json.loads((tmp_path / "curation.json").read_text())
    assert resumed["runs"] == state["runs"]


def test_other_settings_do_not_resume_a_run(tmp_path):
    train, pool, test = synthetic_curation_data(QUICK, pool_size=60, test_size=4)
    run_curation(tmp_path, train, pool, test, dataclasses.replace(QUICK, strategies=("random",), rounds=1))
    with pytest.raises(ValueError, match="other data or settings"):
        run_curation(tmp_path, train, pool, test, dataclasses.replace(QUICK, strategies=("random",), rounds=2))


def test_user_files_and_errors(tmp_path, capsys):
    train, pool, test = synthetic_curation_data(QUICK, pool_size=40, test_size=4)
    paths = {}
    for name, rows in (("train", train), ("pool", pool), ("test", test)):
        paths[name] = tmp_path / f"{name}.jsonl"
        paths[name].write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = ["curate", "--quick", "--strategies", "low_accuracy", "--output", str(tmp_path / "out")]
    files = ["--train", str(paths["train"]), "--pool", str(paths["pool"]), "--test", str(paths["test"])]
    assert main([*args, *files]) == 0
    assert set(json.loads((tmp_path / "out" / "curation.json").read_text())["runs"]) == {"low_accuracy/0"}
    assert main([*args[:-1], str(tmp_path / "steps"), *files, "--steps-per-round", "3"]) == 0
    assert json.loads((tmp_path / "steps" / "curation.json").read_text())["config"]["steps_per_round"] == 3
    assert main([*args, *files, "--steps-per-round", "0"]) == 2
    assert "`steps_per_round` must be an int >= 1, got 0" in capsys.readouterr().err
    assert main([*args, "--train", str(paths["train"])]) == 2
    assert "--train, --pool and --test together" in capsys.readouterr().err
    assert main([*args, *files, "--acquire", "500", "--output", str(tmp_path / "big")]) == 2
    assert "need 500 pool examples, the pool has 40" in capsys.readouterr().err
    assert main([*args, *files, "--strategies", "bald"]) == 2
    assert "strategies" in capsys.readouterr().err


def test_round_length_in_epochs_or_in_steps():
    from lightning_premem.experiments.curation import _round_epochs

    assert _round_epochs(dataclasses.replace(QUICK, epochs=30, probe_every_n_epochs=10), 100) == (30, 10)
    assert _round_epochs(dataclasses.replace(QUICK, epochs=25, probe_every_n_epochs=10), 100) == (20, 10)
    assert _round_epochs(dataclasses.replace(QUICK, epochs=5, probe_every_n_epochs=10), 100) == (10, 10)
    steps = dataclasses.replace(QUICK, steps_per_round=100, batch_size=8)  # 100 steps of 8 = 800 examples seen
    assert _round_epochs(steps, 40) == (20, 5)  # 20 epochs, probed every 5 (4 probes per round)
    assert _round_epochs(steps, 80) == (8, 2)  # 10 epochs -> 2.5 per probe, rounded (to even) to 2
    assert _round_epochs(steps, 5000) == (4, 1)  # at least one epoch per probe
    assert _round_epochs(dataclasses.replace(steps, probes_per_round=1), 40) == (20, 20)
    with pytest.raises(ValueError, match="`steps_per_round` must be an int >= 1, got 0"):
        dataclasses.replace(QUICK, steps_per_round=0)


def test_the_shared_first_round_is_trained_once(tmp_path):
    train, pool, test = synthetic_curation_data(QUICK, pool_size=60, test_size=4)
    config = dataclasses.replace(QUICK, strategies=("premem", "iid", "random"))
    state = run_curation(tmp_path, train, pool, test, config)
    trained = sorted(p.parent.parent.name for p in tmp_path.glob("runs/*/0/history.npz"))
    assert trained == ["premem-0"]  # iid and random read premem's first round from the cache
    first = {key: rounds[0]["test_accuracy"] for key, rounds in state["runs"].items()}
    assert len(set(first.values())) == 1
    # another folder sharing the cache trains nothing for a round it holds
    other = run_curation(
        tmp_path / "other",
        train,
        pool,
        test,
        dataclasses.replace(config, strategies=("low_accuracy",), rounds=1),
        round_cache=tmp_path / "rounds",
    )
    assert other["runs"]["low_accuracy/0"][0]["test_accuracy"] == first["premem/0"]
    assert not (tmp_path / "other" / "runs").exists()


def test_rounds_fine_tune_a_given_pretrained_model(tmp_path):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from lightning_premem.probes import encode_prompt_target, target_perplexity
    from lightning_premem.tokenization import char_tokenizer

    tokenizer = char_tokenizer()
    torch.manual_seed(123)  # not the weights a from-scratch round (seeded 0) would start from
    config = AutoConfig.for_model(**QUICK.model, vocab_size=len(tokenizer))
    base = AutoModelForCausalLM.from_config(config).eval()
    base.save_pretrained(tmp_path / "base")
    # a learning rate of ~0 leaves the weights as loaded: the round's probed perplexities are the base model's
    args = ["curate", "--quick", "--strategies", "iid", "--rounds", "1", "--output", str(tmp_path / "out")]
    model_args = ["--model", str(tmp_path / "base"), "--tokenizer", "char", "--learning-rate", "1e-30"]
    assert main([*args, *model_args]) == 0
    state = json.loads((tmp_path / "out" / "curation.json").read_text())
    assert state["config"]["model"] == str(tmp_path / "base") and state["config"]["learning_rate"] == 1e-30
    (cached,) = (tmp_path / "out" / "rounds").glob("*.json")
    scores = json.loads(cached.read_text())["scores"]
    train, _, _ = synthetic_curation_data(QUICK, pool_size=200, test_size=16)
    rows = [r for r in train if str(r["id"]) in scores]
    pairs = [encode_prompt_target(tokenizer, f"{r['question']}\nAnswer:", f" {r['solution']}\nDone.") for r in rows]
    expected = target_perplexity(base, pairs, pad_token_id=0)
    recorded = torch.tensor([scores[str(r["id"])]["perplexity"] for r in rows])
    assert torch.allclose(recorded, expected.float(), rtol=1e-4)
