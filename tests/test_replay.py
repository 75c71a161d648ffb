"""premem replay on the authors' bundled GSM8K logs, and its handling of bad input."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
from _reference import premem_loop, r2_normal_equations

from lightning_premem.analysis.replay import replay
from lightning_premem.cli import main
from lightning_premem.functional import loglog_threshold_to_perplexity
from lightning_premem.history import load_run_histories

P_GSM8K = math.exp(math.exp(-2.3))


def test_paper_figures_reproduced(paper_logs):
    runs = load_run_histories(paper_logs)
    assert len(runs) == 13
    result = replay(runs, P_GSM8K)
    assert result["num_checkpoints"] == 51
    assert round(result["r2"]["pre_memorization_accuracy"], 3) == 0.939
    assert round(result["r2"]["train_accuracy"], 3) == 0.398


def test_replay_values_match_an_independent_numpy_computation(paper_logs):
    runs = load_run_histories(paper_logs)
    result = replay(runs, P_GSM8K)
    xs, ts, ys = [], [], []
    for run, out in zip(runs, result["runs"], strict=True):
        acc = run.train_accuracy.astype(np.float64)
        masked = np.where(run.train_perplexity > P_GSM8K, acc, 0.0)
        premem = np.minimum(np.maximum.accumulate(masked, axis=0), acc).mean(axis=1)
        for t, checkpoint in enumerate(out["checkpoints"]):
            assert checkpoint["step"] == run.steps[t]
            assert checkpoint["pre_memorization_accuracy"] == pytest.approx(premem[t], abs=1e-12)
            assert checkpoint["train_accuracy"] == pytest.approx(acc[t].mean(), abs=1e-12)
            assert checkpoint["memorized_fraction"] == pytest.approx((run.train_perplexity[t] <= P_GSM8K).mean())
            assert checkpoint["test_accuracy"] == run.test_accuracy[t]
        xs += list(premem)
        ts += list(acc.mean(axis=1))
        ys += list(run.test_accuracy)
    assert result["r2"]["pre_memorization_accuracy"] == pytest.approx(r2_normal_equations(xs, ys), abs=1e-9)
    assert result["r2"]["train_accuracy"] == pytest.approx(r2_normal_equations(ts, ys), abs=1e-9)


def test_brute_force_loop_on_a_slice_of_a_real_run(paper_logs):
    run = load_run_histories(paper_logs / "gsm8k_orig_6epochs_half_lr2e-05_bs128.npz")[0]
    acc = run.train_accuracy[:, :200].astype(np.float64)
    ppl = run.train_perplexity[:, :200].astype(np.float64)
    expected = np.array(premem_loop(acc.tolist(), ppl.tolist(), P_GSM8K)).mean(axis=1)
    sliced = replay([run.__class__(**{**run.__dict__, "train_accuracy": acc, "train_perplexity": ppl})], P_GSM8K)
    got = [c["pre_memorization_accuracy"] for c in sliced["runs"][0]["checkpoints"]]
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)


def test_cli_json_schema_and_thresholds(paper_logs, capsys):
    assert main(["replay", str(paper_logs), "--json", "--loglog-threshold", "-2.3"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert set(data) == {"runs", "r2"}
    assert set(data["r2"]) == {"pre_memorization_accuracy", "train_accuracy"}
    assert round(data["r2"]["pre_memorization_accuracy"], 3) == 0.939
    checkpoint = data["runs"][0]["checkpoints"][0]
    assert set(checkpoint) == {
        "step",
        "train_accuracy",
        "pre_memorization_accuracy",
        "memorized_fraction",
        "test_accuracy",
    }
    assert isinstance(checkpoint["step"], int)
    # --threshold P and the default (the authors' GSM8K tau) give the same answer
    assert main(["replay", str(paper_logs), "--json", "--threshold", str(loglog_threshold_to_perplexity(-2.3))]) == 0
    assert json.loads(capsys.readouterr().out)["r2"] == data["r2"]
    assert main(["replay", str(paper_logs), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["r2"] == data["r2"]
    # a different threshold gives a different (here worse) fit
    assert main(["replay", str(paper_logs), "--json", "--threshold", "1.5"]) == 0
    assert json.loads(capsys.readouterr().out)["r2"]["pre_memorization_accuracy"] < 0.939


def test_cli_table_and_plot(paper_logs, tmp_path, capsys):
    figure = tmp_path / "fig" / "replay.png"
    one = paper_logs / "gsm8k_orig_3epochs_full_lr2e-05_bs128.npz"
    two = paper_logs / "gsm8k_orig_6epochs_full_lr2e-05_bs128.npz"
    assert main(["replay", str(one), str(two), "--plot", str(figure)]) == 0
    out = capsys.readouterr().out
    assert "gsm8k_orig_3epochs_full_lr2e-05_bs128" in out and "over 9 checkpoint(s)" in out
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_r2_undefined_is_reported_not_raised(paper_logs, capsys):
    single = paper_logs / "gsm8k_orig_1epochs_full_lr5e-07_bs128.npz"
    assert main(["replay", str(single), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["r2"] == {"pre_memorization_accuracy": None, "train_accuracy": None}


def _write(path, **arrays):
    np.savez(path, **arrays)
    return path


def _good(t=2, n=3):
    return {
        "steps": np.arange(1, t + 1),
        "train_accuracy": np.full((t, n), 0.5, dtype=np.float32),
        "train_perplexity": np.full((t, n), 1.5, dtype=np.float32),
        "test_accuracy": np.linspace(0.1, 0.2, t),
        "example_ids": np.arange(n),
    }


@pytest.mark.parametrize(
    ("change", "match"),
    [
        ({"steps": None}, "missing array.*steps"),
        ({"train_perplexity": np.full((2, 4), 1.5)}, r"'train_accuracy' \(2, 3\) and 'train_perplexity' \(2, 4\)"),
        ({"train_accuracy": np.full(3, 0.5)}, "'train_accuracy' must be 2-D"),
        ({"steps": np.arange(3)}, r"'steps' must have shape \(2,\)"),
        ({"steps": np.array([2, 1])}, "'steps' must increase"),
        ({"steps": np.array([0.5, 1.5])}, "'steps' must hold integers"),
        (
            {"train_perplexity": np.array([[1.5, 1.5, 1.5], [1.5, np.nan, 1.5]])},
            r"`train_perplexity`.*position \(1, 1\)",
        ),
        ({"train_accuracy": np.array([[0.5, 0.5, 0.5], [0.5, 0.5, 2.0]])}, r"`train_accuracy`.*position \(1, 2\)"),
        ({"test_accuracy": np.array([0.1, np.nan])}, "`test_accuracy`"),
        ({"example_ids": np.arange(4)}, r"'example_ids' must have shape \(3,\)"),
    ],
)
def test_bad_logs_give_one_line_naming_file_and_array(tmp_path, capsys, change, match):
    arrays = {k: v for k, v in {**_good(), **change}.items() if v is not None}
    path = _write(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match=match) as info:
        load_run_histories(path)
    assert str(path) in str(info.value)
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and "Traceback" not in err


def test_optional_arrays_may_be_absent(tmp_path):
    arrays = _good()
    del arrays["test_accuracy"], arrays["example_ids"]
    run = load_run_histories(_write(tmp_path / "ok.npz", **arrays))[0]
    assert run.test_accuracy is None and run.example_ids.tolist() == [0, 1, 2]
    result = replay([run], 1.1)
    assert result["num_checkpoints"] == 0 and result["r2"]["train_accuracy"] is None


@pytest.mark.parametrize(
    ("setup", "match"),
    [
        (lambda d: d / "missing.npz", "no such file or folder"),
        (lambda d: d, "folder holds no run logs"),
        (lambda d: (d / "log.txt").write_text("x") and d / "log.txt", "unsupported run-log format '.txt'"),
        (lambda d: (d / "broken.npz").write_bytes(b"not a zip") and d / "broken.npz", "cannot read as an .npz"),
    ],
)
def test_unreadable_inputs(tmp_path, capsys, setup, match):
    path = setup(tmp_path)
    assert main(["replay", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("premem replay: error:") and err.count("\n") == 1
    with pytest.raises(ValueError, match=match):
        load_run_histories(path)


def test_bad_threshold_is_a_user_error(paper_logs, capsys):
    assert main(["replay", str(paper_logs), "--threshold", "-2.3"]) == 2
    assert "loglog_threshold_to_perplexity(-2.3)" in capsys.readouterr().err


def test_console_script_exit_code_without_traceback(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "lightning_premem.cli", "replay", str(tmp_path / "nope.npz")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2
    assert "no such file" in proc.stderr and "Traceback" not in proc.stderr
