"""Analysis: predictors' R² table, threshold calibration, rank correlation, premem report (hand-computed values)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from _reference import r2_normal_equations

from lightning_premem.analysis import (
    DEFAULT_CANDIDATES,
    PREDICTORS,
    build_report,
    calibrate_threshold,
    predictor_table,
    spearman,
    split_runs,
    write_report,
)
from lightning_premem.analysis.calibration import premem_means
from lightning_premem.analysis.plots import plot_calibration
from lightning_premem.analysis.statistics import _average_ranks
from lightning_premem.cli import main
from lightning_premem.functional import loglog_threshold_to_perplexity, pre_memorization_accuracy
from lightning_premem.history import RunHistory, load_run_histories

P_GSM8K = math.exp(math.exp(-2.3))

# A constructed history: 4 checkpoints x 2 examples. Example 1 has perplexity 1.02 throughout; example 0's
# falls 1.5 -> 1.3 -> 1.15 -> 1.05. Dataset-level pre-memorization accuracy, by hand:
#   p = 1.01: [0.6, 0.7, 0.8, 0.9]   p = 1.1: [0.1, 0.2, 0.3, 0.3]
#   p = 1.2:  [0.1, 0.2, 0.2, 0.2]   p = 1.4: [0.1, 0.1, 0.1, 0.1] (constant: R² undefined)
ACC = np.array([[0.2, 1.0], [0.4, 1.0], [0.6, 1.0], [0.8, 1.0]])
PPL = np.array([[1.5, 1.02], [1.3, 1.02], [1.15, 1.02], [1.05, 1.02]])
BY_HAND = {1.01: [0.6, 0.7, 0.8, 0.9], 1.1: [0.1, 0.2, 0.3, 0.3], 1.2: [0.1, 0.2, 0.2, 0.2], 1.4: [0.1] * 4}
VALIDATION = np.array([0.15, 0.2, 0.25, 0.25])  # exactly 0.1 + 0.5 x (the p = 1.1 curve)


def _run(name="r", acc=ACC, ppl=PPL, steps=None, test=None, validation=None, source=None, **extra):
    steps = np.arange(1, len(acc) + 1) * 10 if steps is None else np.asarray(steps)
    return RunHistory(
        name=name,
        steps=steps,
        train_accuracy=np.asarray(acc, dtype=np.float64),
        train_perplexity=np.asarray(ppl, dtype=np.float64),
        test_accuracy=None if test is None else np.asarray(test, dtype=np.float64),
        example_ids=np.arange(np.asarray(acc).shape[1]),
        source=Path(source or f"{name}.npz"),
        validation_accuracy=None if validation is None else np.asarray(validation, dtype=np.float64),
        **extra,
    )


# --------------------------------------------------------------------------- rank correlation


def test_average_ranks_and_spearman_with_ties_by_hand():
    np.testing.assert_array_equal(_average_ranks(np.array([3.0, 1.0, 3.0, 2.0])), [3.5, 1.0, 3.5, 2.0])
    # ranks x = [1, 2.5, 2.5, 4], y = [1, 2, 3, 4]: sum dx dy = 4.5, sxx = 4.5, syy = 5
    assert spearman([1, 2, 2, 3], [10, 20, 30, 40]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert spearman([1, 2, 3, 4], [1, 4, 9, 16]) == pytest.approx(1.0)
    assert spearman([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("x", "y", "match"),
    [
        ([1, 2], [1], "same length"),
        ([1], [1], "at least 2"),
        ([1, 1], [1, 2], "constant"),
        ([1, math.nan], [1, 2], "finite"),
    ],
)
def test_spearman_errors(x, y, match):
    with pytest.raises(ValueError, match=match):
        spearman(x, y)


# --------------------------------------------------------------------------- calibration


def test_sweep_matches_the_functional_core_and_the_hand_values():
    run = _run()
    for p, expected in BY_HAND.items():
        np.testing.assert_allclose(premem_means([run], p), expected, atol=1e-12)
        functional = pre_memorization_accuracy(torch.as_tensor(ACC), torch.as_tensor(PPL), p).mean(dim=1).numpy()
        np.testing.assert_allclose(premem_means([run], p), functional, atol=1e-12)


def test_calibration_picks_the_known_best_threshold():
    run = _run(validation=VALIDATION)
    result = calibrate_threshold([run], [1.4, 1.2, 1.1, 1.01], target="validation_accuracy")
    assert result.threshold == 1.1
    assert result.candidates == (1.01, 1.1, 1.2, 1.4)
    assert result.r2[1] == pytest.approx(1.0)
    assert result.r2[0] == pytest.approx(r2_normal_equations(BY_HAND[1.01], VALIDATION.tolist()))
    assert result.r2[2] == pytest.approx(r2_normal_equations(BY_HAND[1.2], VALIDATION.tolist()))
    assert result.r2[3] is None  # constant pre-memorization accuracy
    assert result.fit_r2 == pytest.approx(1.0)
    assert result.loglog_threshold == pytest.approx(math.log(math.log(1.1)))
    assert result.held_out_r2 is None and result.held_out_runs == ()


def test_validation_calibration_also_draws_the_test_r2_curve(tmp_path):
    test = np.array([0.6, 0.7, 0.8, 0.9]) * 0.5  # linear in the p = 1.01 curve, not in the p = 1.1 one
    report = build_report([_run(validation=VALIDATION, test=test)], threshold=1.1, candidates=[1.01, 1.1, 1.2, 1.4])
    curve = report["calibration"]["curve"]
    assert report["calibration"]["threshold"] == 1.1  # chosen on validation accuracy, not on test accuracy
    assert curve["test_r2"][0] == pytest.approx(1.0)
    assert curve["test_r2"][1] == pytest.approx(r2_normal_equations(BY_HAND[1.1], test.tolist()))
    assert curve["test_r2"][3] is None
    assert (tmp_path / "c.png") == plot_calibration(report["calibration"], tmp_path / "c.png")


def test_calibration_on_a_run_split_reports_the_held_out_r2():
    test = np.array([0.3, 0.35, 0.45, 0.5])
    fit = _run("fit", test=0.1 + 0.5 * np.array(BY_HAND[1.1]))
    held = _run("held", test=test)
    result = calibrate_threshold([fit], [1.01, 1.1, 1.2], target="test_accuracy", held_out=[held])
    assert result.threshold == 1.1 and result.held_out_runs == ("held",)
    assert result.held_out_r2 == pytest.approx(r2_normal_equations(BY_HAND[1.1], test.tolist()))
    assert result.held_out_curve[0] == pytest.approx(r2_normal_equations(BY_HAND[1.01], test.tolist()))
    as_dict = result.as_dict()
    assert as_dict["curve"]["threshold"] == [1.01, 1.1, 1.2] and as_dict["held_out_r2"] == result.held_out_r2


def test_calibration_ties_choose_the_smallest_threshold_and_default_grid():
    run = _run(validation=VALIDATION)
    # 1.1 and 1.12 give the same curve (no perplexity between them): the smaller wins
    assert calibrate_threshold([run], [1.12, 1.1], target="validation_accuracy").threshold == 1.1
    default = calibrate_threshold([run], target="validation_accuracy")
    assert default.candidates == tuple(sorted(DEFAULT_CANDIDATES)) and len(default.candidates) == 131
    assert loglog_threshold_to_perplexity(-2.3) in default.candidates
    assert default.fit_r2 == pytest.approx(1.0)
    assert 1.05 < default.threshold <= 1.1  # every p in [1.05, 1.15) gives the p = 1.1 curve


def test_calibration_errors():
    run = _run(test=[0.1, 0.2, 0.3, 0.4])
    with pytest.raises(ValueError, match=r"has no validation_accuracy.*split_runs"):
        calibrate_threshold([run], [1.1])
    with pytest.raises(ValueError, match="both in `runs` and in `held_out`"):
        calibrate_threshold([run], [1.1], target="test_accuracy", held_out=[run])
    with pytest.raises(ValueError, match="`target` must be one of"):
        calibrate_threshold([run], [1.1], target="train_accuracy")
    with pytest.raises(ValueError, match="no candidate threshold gives a defined R²"):
        calibrate_threshold([_run(test=[0.2] * 4)], [1.1], target="test_accuracy")
    with pytest.raises(ValueError, match="must be >= 1"):
        calibrate_threshold([run], [0.5], target="test_accuracy")
    with pytest.raises(ValueError, match="at least one run"):
        calibrate_threshold([], [1.1])


def test_split_runs_is_seeded_and_non_empty():
    runs = list("abcdefg")
    fit, held = split_runs(runs, 0.5, seed=3)
    assert (fit, held) == split_runs(runs, 0.5, seed=3)
    assert len(fit) == 4 and sorted(fit + held) == runs  # round(3.5) = 4
    assert len(split_runs(runs, 0.01)[0]) == 1 and len(split_runs(runs, 0.99)[1]) == 1
    with pytest.raises(ValueError, match="at least 2 runs"):
        split_runs(["a"])
    with pytest.raises(ValueError, match="fit_fraction"):
        split_runs(runs, 1.0)


# --------------------------------------------------------------------------- predictor table


def _write_history(folder, acc, ppl, steps, test, robust=None, perturbations=None):
    folder.mkdir(parents=True)
    arrays = {
        "steps": np.asarray(steps, dtype=np.int64),
        "train_accuracy": np.asarray(acc, dtype=np.float32),
        "train_perplexity": np.asarray(ppl, dtype=np.float32),
        "test_accuracy": np.asarray(test, dtype=np.float64),
    }
    if robust is not None:
        arrays["robust_accuracy"] = np.asarray(robust, dtype=np.float32)
        arrays["perturbations"] = np.array(perturbations)
    np.savez(folder / "history.npz", **arrays)


def test_predictor_table_by_hand_with_predictors_joined_by_step(tmp_path):
    acc = [[0.5, 0.5], [1.0, 0.5], [1.0, 1.0]]
    ppl_a = [[2.0, 4.0], [1.5, 2.0], [1.2, 1.5]]
    ppl_b = [[3.0, 3.0], [2.0, 1.5], [1.25, 1.25]]
    _write_history(tmp_path / "a" / "premem", acc, ppl_a, [10, 20, 30], [0.1, 0.3, 0.4])
    _write_history(tmp_path / "b" / "premem", acc, ppl_b, [5, 15, 25], [0.2, 0.25, 0.5])
    # run a: predictors at steps 10 and 30 only (and a step the history lacks); run b has no predictors file
    np.savez(
        tmp_path / "a" / "premem" / "predictors.npz",
        steps=np.array([10, 30, 40]),
        gradient_variance=np.array([4.0, 1.0, 9.0]),
        distance_from_init=np.array([0.0, 2.0, np.nan]),
        atc=np.array([np.nan, 0.5, 0.6]),
    )
    runs = load_run_histories(tmp_path)
    table = predictor_table(runs, threshold=1.1)  # nothing is memorized: premem = train accuracy here
    a, b = table["runs"]
    assert [c["gradient_variance"] for c in a["checkpoints"]] == [4.0, None, 1.0]
    assert [c["distance_from_init"] for c in a["checkpoints"]] == [0.0, None, 2.0]
    assert [c["atc"] for c in a["checkpoints"]] == [None, None, 0.5]
    assert all(c["gradient_variance"] is None for c in b["checkpoints"])
    loss_a = [(math.log(x) + math.log(y)) / 2 for x, y in ppl_a]
    assert [c["train_loss"] for c in a["checkpoints"]] == pytest.approx(loss_a, rel=1e-6)
    tests = [0.1, 0.3, 0.4, 0.2, 0.25, 0.5]
    train = [0.5, 0.75, 1.0] * 2
    loss = loss_a + [(math.log(x) + math.log(y)) / 2 for x, y in ppl_b]
    assert table["r2"]["train_accuracy"] == pytest.approx(r2_normal_equations(train, tests))
    assert table["r2"]["pre_memorization_accuracy"] == pytest.approx(r2_normal_equations(train, tests))
    assert table["r2"]["train_loss"] == pytest.approx(r2_normal_equations(loss, tests), rel=1e-6)
    assert table["r2"]["gradient_variance"] == pytest.approx(1.0)  # two points: a line fits exactly
    assert table["num_points"]["gradient_variance"] == 2 and table["num_points"]["train_accuracy"] == 6
    assert table["r2"]["atc"] is None and table["num_points"]["atc"] == 1
    assert table["r2"]["epoch_train_loss"] is None and set(table["r2"]) == set(PREDICTORS)


def test_predictors_file_errors(tmp_path):
    _write_history(tmp_path / "premem", ACC, PPL, [1, 2, 3, 4], [0.1, 0.2, 0.3, 0.4])
    (tmp_path / "premem" / "predictors.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match=r"predictors\.npz: cannot read"):
        predictor_table(load_run_histories(tmp_path), 1.1)
    np.savez(tmp_path / "premem" / "predictors.npz", steps=np.array([1, 2]), atc=np.array([0.1]))
    with pytest.raises(ValueError, match="array 'atc' must have the shape of 'steps'"):
        predictor_table(load_run_histories(tmp_path), 1.1)


# --------------------------------------------------------------------------- robustness relation


def test_robustness_relation_by_hand(tmp_path):
    # one checkpoint, 4 examples, p = 1.1: pre-memorization accuracy [1, 0, 0.5, 0] (example 1 memorized)
    robust = [[[1.0, 0.0, 0.5, 0.0], [1.0, 0.5, 0.0, 0.0]]]  # [T, P, N]
    _write_history(
        tmp_path / "premem", [[1.0, 1.0, 0.5, 0.0]], [[2.0, 1.01, 2.0, 2.0]], [7], [0.3], robust, [" First", " So"]
    )
    (run,) = load_run_histories(tmp_path)
    assert run.perturbations == (" First", " So") and run.robust_accuracy.shape == (1, 2, 4)
    report = build_report([run], threshold=1.1, calibrate=False, bins=2, num_resamples=200)
    (relation,) = report["robustness"]
    # drop = clean - mean perturbed = [0, 0.75, 0.25, 0]; ranks premem [4, 1.5, 3, 1.5], drop [1.5, 4, 3, 1.5]
    assert relation["spearman"] == pytest.approx(-1.75 / 4.5)
    lo, hi = relation["spearman_ci95"]
    assert -1.0 <= lo <= hi <= 1.0
    low, high = relation["bins"]
    assert (low["count"], high["count"]) == (2, 2)
    assert low["accuracy_drop"] == pytest.approx(0.375) and high["accuracy_drop"] == pytest.approx(0.125)
    assert low["clean_accuracy"] == pytest.approx(0.5) and high["perturbed_accuracy"] == pytest.approx(0.625)
    assert relation["perturbed_accuracy"] == pytest.approx({" First": 0.375, " So": 0.375})
    assert report["calibration"] is None
    path = write_report(report, tmp_path / "out", figures=False)
    text = path.read_text()
    assert "Spearman correlation of pre-memorization accuracy with the accuracy drop: -0.389" in text
    assert "| [0.5, 1.0] | 2 |" in text


def test_history_robust_arrays_are_validated(tmp_path):
    folder = tmp_path / "premem"
    _write_history(folder, [[1.0, 0.5]], [[2.0, 2.0]], [1], [0.3], [[[1.0, 0.5, 0.5]]], [" First"])
    with pytest.raises(ValueError, match=r"'robust_accuracy' must have shape \(1, 1, 2\)"):
        load_run_histories(tmp_path)
    np.savez(folder / "history.npz", steps=[1], train_accuracy=[[1.0]], train_perplexity=[[2.0]], perturbations=["x"])
    with pytest.raises(ValueError, match="come together"):
        load_run_histories(tmp_path)


# --------------------------------------------------------------------------- premem report on the bundled logs


@pytest.fixture(scope="module")
def bundled_report(tmp_path_factory):
    from conftest import PAPER_LOGS

    output = tmp_path_factory.mktemp("report")
    return output, PAPER_LOGS


def test_premem_report_on_the_bundled_gsm8k_logs(bundled_report, capsys):
    output, logs = bundled_report
    assert main(["report", str(logs), "--output", str(output), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert set(result["r2"]) == set(PREDICTORS)
    assert round(result["r2"]["pre_memorization_accuracy"], 3) == 0.939
    assert round(result["r2"]["train_accuracy"], 3) == 0.398
    assert round(result["r2"]["train_loss"], 3) == 0.219
    assert result["r2"]["gradient_variance"] is None and result["num_points"]["train_accuracy"] == 51
    assert result["threshold"] == pytest.approx(P_GSM8K)
    calibration = result["calibration"]
    assert calibration["target"] == "test_accuracy" and calibration["split"].startswith("runs (seed 0")
    assert len(calibration["fit_runs"]) == 6 and len(calibration["held_out_runs"]) == 7
    assert not set(calibration["fit_runs"]) & set(calibration["held_out_runs"])
    assert calibration["loglog_threshold"] == pytest.approx(-2.55)
    assert calibration["threshold"] == pytest.approx(loglog_threshold_to_perplexity(-2.55))
    assert round(calibration["fit_r2"], 3) == 0.949
    assert round(calibration["held_out_r2"], 3) == 0.953
    assert round(calibration["held_out_r2_at_reference"], 3) == 0.943
    assert result["robustness"] == []
    for name in ("report.md", "r2.png", "predictors.png", "premem_vs_test.png", "calibration.png"):
        assert (output / name).stat().st_size > 0
    text = (output / "report.md").read_text()
    assert "| pre-memorization accuracy | 0.939 | 51 |" in text and "chosen p = 1.0812" in text


def test_premem_report_calibrated_threshold_and_text_output(bundled_report, tmp_path, capsys):
    _, logs = bundled_report
    assert main(["report", str(logs), "--output", str(tmp_path), "--calibrate", "--no-figures", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "calibrated p = 1.0812" in out and "(calibrated (runs (seed 1" in out
    assert not (tmp_path / "r2.png").exists() and (tmp_path / "report.md").exists()


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["report", "/no/such/run"], "no such file or folder"),
        (["report", "{logs}", "--calibrate", "--no-calibration"], "--calibrate needs the calibration"),
        (["report", "{logs}", "--fit-fraction", "2", "--no-figures"], "fit_fraction"),
        (["report", "{logs}", "--threshold", "0.5", "--no-figures"], "must be >= 1"),
    ],
)
def test_premem_report_user_errors_are_one_line(bundled_report, tmp_path, capsys, argv, match):
    _, logs = bundled_report
    argv = [a.replace("{logs}", str(logs)) for a in argv] + ["--output", str(tmp_path)]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("premem report: error:") and "\n" not in err and match in err
