"""`premem replicate`: data-efficiency ratio, leave-one-run-out R², settings, and the quick run end to end."""

import dataclasses
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lightning_premem.cli import main
from lightning_premem.experiments.curation import CurationConfig
from lightning_premem.experiments.replication import (
    QUICK,
    ReplicationConfig,
    _base_rows,
    _base_settings,
    _curation_base,
    _curation_data,
    _epochs,
    _run_jobs,
    data_efficiency,
    run_replication,
)
from lightning_premem.experiments.replication_report import _loo_r2
from lightning_premem.history import RunHistory


def test_data_efficiency_reads_the_crossing_off_the_curve():
    iid = ([100, 200, 300], [0.1, 0.2, 0.3])
    # premem reaches iid's best (0.3 at 300 examples) between 100 (0.2) and 200 (0.4): at 150 -> 300 / 150
    result = data_efficiency(iid, ([100, 200, 300], [0.2, 0.4, 0.5]))
    assert result == {"iid_best": 0.3, "iid_examples": 300, "examples": pytest.approx(150.0), "ratio": 2.0}
    # iid peaks early: the examples it *needs* are the first size at its best
    assert data_efficiency(([100, 200, 300], [0.1, 0.3, 0.3]), ([100, 200, 300], [0.3, 0.3, 0.3]))["ratio"] == 2.0
    never = data_efficiency(iid, ([100, 200, 300], [0.1, 0.15, 0.29]))
    assert never["examples"] is None and never["ratio"] is None
    assert data_efficiency(iid, iid)["ratio"] == 1.0


@pytest.mark.parametrize(
    ("iid", "curated", "match"),
    [
        (([100, 200], [0.1]), ([100, 200], [0.1, 0.2]), "as many sizes as accuracies"),
        (([200, 100], [0.1, 0.2]), ([100, 200], [0.1, 0.2]), "sizes must increase"),
        (([], []), ([100], [0.1]), "at least one"),
    ],
)
def test_data_efficiency_rejects_malformed_curves(iid, curated, match):
    with pytest.raises(ValueError, match=match):
        data_efficiency(iid, curated)


def _run(name, test, validation, accuracy, perplexity):
    accuracy, perplexity = np.asarray(accuracy, dtype=np.float64), np.asarray(perplexity, dtype=np.float64)
    return RunHistory(
        name,
        np.arange(1, len(test) + 1),
        accuracy,
        perplexity,
        np.asarray(test, dtype=np.float64),
        np.arange(accuracy.shape[1]),
        Path(f"{name}.npz"),
        validation_accuracy=np.asarray(validation, dtype=np.float64),
    )


def _table(runs, name, values):
    return {
        "runs": [
            {
                "checkpoints": [
                    {name: float(x), "test_accuracy": float(y)} for x, y in zip(xs, run.test_accuracy, strict=True)
                ]
            }
            for run, xs in zip(runs, values, strict=True)
        ]
    }


def test_leave_one_run_out_matches_a_brute_force_loop():
    rng = np.random.default_rng(0)
    runs = [
        _run(f"r{i}", rng.uniform(0, 1, 4), rng.uniform(0, 1, 4), np.zeros((4, 2)), np.ones((4, 2)) * 2)
        for i in range(4)
    ]
    values = [rng.uniform(0, 1, 4) for _ in runs]
    predicted, truth = [], []
    for k in range(4):  # the reference: fit on the three others with a least-squares solve, predict run k
        x = np.concatenate([values[i] for i in range(4) if i != k])
        y = np.concatenate([runs[i].test_accuracy for i in range(4) if i != k])
        coef, *_ = np.linalg.lstsq(np.stack([x, np.ones_like(x)], axis=1), y, rcond=None)
        predicted.extend(coef[0] * values[k] + coef[1])
        truth.extend(runs[k].test_accuracy)
    truth, predicted = np.array(truth), np.array(predicted)
    expected = 1 - ((truth - predicted) ** 2).sum() / ((truth - truth.mean()) ** 2).sum()
    assert _loo_r2(runs, _table(runs, "train_accuracy", values), "train_accuracy") == pytest.approx(expected)


def test_leave_one_run_out_recalibrates_the_threshold():
    # two examples per checkpoint: one never memorized (perplexity 2) whose accuracy grows, one memorized from
    # the start (perplexity 1.01) with an erratic accuracy. Validation = test = the first one's share, i.e. the
    # pre-memorization accuracy at any p in [1.01, 2); below 1.01 the erratic example counts and the fit breaks.
    runs = []
    for i, (level, erratic) in enumerate([(0.2, [1, 0, 1]), (0.4, [0, 1, 1]), (0.5, [1, 1, 0])]):
        solved = level + np.array([0.0, 0.2, 0.3])
        accuracy = np.stack([solved, np.array(erratic, dtype=np.float64)], axis=1)
        runs.append(_run(f"r{i}", solved / 2, solved / 2, accuracy, np.tile([2.0, 1.01], (3, 1))))
    table = _table(runs, "pre_memorization_accuracy", [r.test_accuracy for r in runs])
    assert _loo_r2(runs, table, "pre_memorization_accuracy") == pytest.approx(1.0)
    # the reference: at a p below 1.01 the same left-out fits are far from exact
    low = [
        _run(r.name, r.test_accuracy, r.validation_accuracy, r.train_accuracy, r.train_perplexity * 0 + 3) for r in runs
    ]
    premem_low = [(r.train_accuracy.mean(axis=1)) for r in low]  # nothing memorized: premem = running accuracy
    assert _loo_r2(low, _table(low, "train_accuracy", premem_low), "train_accuracy") < 0.9


def test_sweep_epochs_give_the_probes_and_about_the_steps():
    config = ReplicationConfig()
    for size in config.sizes:
        epochs, every = _epochs(config, size)
        assert epochs == every * config.probes
        steps = epochs * -(-size // config.batch_size)
        assert abs(steps - config.steps) / config.steps < 0.15


@pytest.mark.parametrize(
    ("changes", "match"),
    [
        ({"sizes": ()}, "at least one value"),
        ({"steps": 0}, "`steps` must be an int >= 1, got 0"),
        ({"sizes": (100,), "probe_size": 200, "robustness_run": (100, 3e-3)}, "at least `probe_size`"),
        ({"robustness_run": (999, 3e-3)}, "`robustness_run`"),
        ({"sizes": (256,), "learning_rates": (1e-3,), "seeds": (0,), "robustness_run": (256, 1e-3)}, "at least 3"),
        ({"curation": CurationConfig(strategies=("iid", "random"))}, "must include 'premem' and 'iid'"),
        ({"atc_queries": "validation"}, "`atc_queries` must be 'train' or 'test'"),
        ({"curation": CurationConfig(model="path/to/model")}, "must then be a config mapping"),
        ({"curation_shares": (0.5,)}, "one share per template"),
        ({"curation_shares": (0.75, 0.5)}, "must sum to 1"),
        ({"curation_shares": (1.0, 0.0)}, r"in \(0, 1\]"),
    ],
)
def test_bad_settings_are_reported(changes, match):
    with pytest.raises(ValueError, match=match):
        dataclasses.replace(ReplicationConfig(), **changes)


@pytest.mark.slow
def test_quick_replication_writes_everything_and_resumes(tmp_path, capsys):
    assert main(["replicate", "--quick", "--output", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    runs = QUICK.sizes, QUICK.learning_rates, QUICK.seeds
    assert len(summary["sweep_runs"]) == len(runs[0]) * len(runs[1]) * len(runs[2])
    for record in summary["sweep_runs"]:
        with np.load(tmp_path / "prediction" / "runs" / record["name"] / "history.npz") as npz:
            assert str(npz["run_name"]) == record["name"]
            assert npz["validation_accuracy"].shape == npz["test_accuracy"].shape == (QUICK.probes,)
        assert (tmp_path / "prediction" / "runs" / record["name"] / "predictors.npz").is_file()
    robust = [r for r in summary["sweep_runs"] if r["robustness"]]
    assert [r["name"] for r in robust] == ["n32-lr0.01-s0"]
    curves = summary["curation"]["curves"]
    assert set(curves) == set(QUICK.curation.strategies)
    assert all(sizes == [16, 24] for sizes, _ in curves.values())
    assert set(summary["curation"]["premem_ratio_per_seed"]) == {str(s) for s in QUICK.curation.seeds}
    # what each strategy bought, by template: the shares of each acquisition over seeds (one of 8 per seed here)
    _, pool, _ = _curation_data(QUICK)
    template_of = {r["id"]: r["template"] for r in pool}
    for strategy, mixes in summary["curation"]["acquired_mix"].items():
        acquired = json.loads((tmp_path / "curation" / f"{strategy}-0" / "curation.json").read_text())
        assert len(acquired["runs"][f"{strategy}/0"][0]["acquired"]) == 8
        assert len(mixes) == QUICK.curation.rounds - 1
        assert sum(mixes[0].values()) == pytest.approx(1.0) and set(mixes[0]) <= set(QUICK.curation_templates)
    iid_counts = [
        template_of[i]
        for seed in QUICK.curation.seeds
        for i in json.loads((tmp_path / "curation" / f"iid-{seed}" / "curation.json").read_text())["runs"][
            f"iid/{seed}"
        ][0]["acquired"]
    ]
    for template, share in summary["curation"]["acquired_mix"]["iid"][0].items():
        assert share == pytest.approx(iid_counts.count(template) / len(iid_counts))
    # every round fine-tunes the base model pretrained in curation/base
    chain = json.loads((tmp_path / "curation" / "premem-0" / "curation.json").read_text())
    assert chain["config"]["model"] == str(tmp_path / "curation" / "base")
    assert (tmp_path / "curation" / "base" / "base.json").is_file()
    # the first round is shared: one trained first round per seed, not one per strategy
    assert len(list((tmp_path / "curation").glob("*/runs/*/0/history.npz"))) == len(QUICK.curation.seeds)
    report = (tmp_path / "replication.md").read_text()
    for heading in ("## 1. Pre-memorization", "## 2. Low pre-memorization", "## 3. Curation"):
        assert heading in report
    for figure in ("prediction/premem_vs_test.png", "prediction/robustness_0.png", "curation/curation.png"):
        assert (tmp_path / figure).read_bytes()[:4] == b"\x89PNG"
        assert figure in report

    # a rerun finds every run and round done: nothing is trained again; a stray run folder is not analysed
    shutil.copytree(tmp_path / "prediction" / "runs" / "n16-lr0.01-s0", tmp_path / "prediction" / "runs" / "stray")
    assert main(["replicate", "--quick", "--output", str(tmp_path), "--jobs", "1"]) == 0
    again = json.loads((tmp_path / "summary.json").read_text())
    assert again["sweep_runs"] == summary["sweep_runs"]  # the same records, wall times included
    assert again["curation"] == summary["curation"]
    assert again["prediction"]["runs"] == summary["prediction"]["runs"]
    assert "Trainer.fit" not in capsys.readouterr().err
    # other sweep settings do not silently reuse these runs, nor other base settings the base model
    with pytest.raises(ValueError, match="sweep run made with other settings"):
        other = dataclasses.replace(QUICK, sampling=dataclasses.replace(QUICK.sampling, temperature=0.5))
        run_replication(tmp_path, config=other, jobs=1)
    with pytest.raises(ValueError, match="base model made with other settings"):
        run_replication(tmp_path, config=dataclasses.replace(QUICK, curation_base_steps=5), jobs=1)


def test_curation_sets_have_the_templates_in_the_given_shares():
    train, pool, test = _curation_data(ReplicationConfig())  # shares (0.75, 0.25) of ("a+b*c", "a-b*c")
    for rows, n in ((train, 1024), (pool, 5000), (test, 400)):
        assert len(rows) == n and sum(r["template"] == "a-b*c" for r in rows) == n // 4
        assert sum(r["template"] == "a+b*c" for r in rows) == n - n // 4
        # shuffled, not one template after the other
        assert {r["template"] for r in rows[: n // 8]} == {"a+b*c", "a-b*c"}
    problems = [r["question"] for r in [*train, *pool, *test]]
    assert len(set(problems)) == len(problems)  # no problem in two sets, nor twice in one
    assert len({r["id"] for r in [*train, *pool, *test]}) == len(problems)
    # sizes the shares do not divide: largest remainders (6.75 + 3.25 -> 7 + 3, 5.4 + 2.6 -> 5 + 3)
    odd = dataclasses.replace(QUICK, curation_test_size=10, curation_pool_size=8, curation_shares=(0.675, 0.325))
    _, pool, ten = _curation_data(odd)
    assert [sum(r["template"] == t for r in ten) for t in ("a+b*c", "a-b*c")] == [7, 3]
    assert [sum(r["template"] == t for r in pool) for t in ("a+b*c", "a-b*c")] == [5, 3]
    uniform = dataclasses.replace(QUICK, curation_shares=None)
    assert {r["template"] for r in _curation_data(uniform)[1]} == {"a+b*c", "a-b*c"}


def test_the_base_model_is_pretrained_on_its_skills_and_never_on_a_test_problem(tmp_path):
    config = dataclasses.replace(QUICK, curation_base_size=24)
    record = _curation_base(config, tmp_path / "base")
    assert record["steps"] > 0 and (tmp_path / "base" / "config.json").is_file()
    assert _curation_base(config, tmp_path / "base") == record  # kept, not trained again
    base = {(r["template"], r["question"]) for r in _base_rows(config)}
    assert len(base) == 24 and {t for t, _ in base} == set(config.curation_base_templates)
    _, _, test = _curation_data(config)
    assert not base & {(r["template"], r["question"]) for r in test}
    assert _base_rows(dataclasses.replace(config, curation_base_templates=())) == []
    # the base's problems depend on the curation test set, so the kept model is checked by its problems too
    rows = _base_rows(config)
    assert _base_settings(config, rows) != _base_settings(config, rows[:-1])
    assert _base_settings(config, rows) == _base_settings(dataclasses.replace(config, jobs=1), rows)


def test_atc_thresholds_the_training_problems_by_default(tmp_path, monkeypatch):
    import lightning_premem.experiments.replication as replication

    seen = {}
    real = replication.BaselinePredictorsCallback

    def spy(**kwargs):
        seen.update(kwargs)
        return real(**kwargs)

    monkeypatch.setattr(replication, "BaselinePredictorsCallback", spy)
    record = replication._sweep_run(QUICK, 16, 1e-2, 0, tmp_path / "run")
    test, validation = replication._held_out(QUICK)
    train = replication._task(QUICK).generate(16, seed=0, exclude=[*test, *validation], unique=True)
    assert [q["id"] for q in seen["atc_queries"]] == [r["id"] for r in train[: QUICK.probe_size]]
    assert seen["atc_examples"] == validation
    assert record["name"] == "n16-lr0.01-s0"
    replication._sweep_run(dataclasses.replace(QUICK, atc_queries="test"), 16, 1e-2, 0, tmp_path / "other")
    assert seen["atc_queries"] == test


def _echo(value):
    return {"value": value}


def _fail(value):
    raise ValueError(f"job {value} failed")


def test_a_failing_job_is_raised_after_the_others_finish():
    lines = []
    jobs = [("bad", _fail, (1,)), ("good", _echo, (2,)), ("also good", _echo, (3,))]
    follow = lambda result: [("follow-up", _echo, (result["value"] * 10,))] if result["value"] == 2 else []  # noqa: E731
    with pytest.raises(ValueError, match="job 1 failed"):
        _run_jobs(jobs, 2, lines.append, follow_up=follow)
    assert any(line.startswith("failed: bad: job 1 failed") for line in lines)
    assert sum("done:" in line for line in lines) == 3  # good, also good and the follow-up all ran


def test_follow_up_jobs_jump_the_queue():
    lines = []
    jobs = [("a", _echo, (1,)), ("b", _echo, (2,)), ("c", _echo, (3,))]
    follow = lambda result: [("a then", _echo, (10,))] if result["value"] == 1 else []  # noqa: E731
    results = _run_jobs(jobs, 1, lines.append, follow_up=follow, total=4)
    assert [r["value"] for r in results] == [1, 10, 2, 3]
    assert lines[-1].startswith("4/4 done: c")
