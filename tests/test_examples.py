"""The examples run (at a tiny size), so the docs that point at them stay true."""

import importlib.util

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow


def _load(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_callback_quickstart(tmp_path, capsys):
    quickstart = _load("callback_quickstart")
    callback = quickstart.main(["--output", str(tmp_path), "--epochs", "2", "--train-size", "32", "--probe-size", "8"])
    assert len(callback.history) == 2 and len(callback.probed_ids) == 8
    assert (tmp_path / "quickstart" / "version_0" / "premem" / "history.npz").exists()
    assert "tensorboard --logdir" in capsys.readouterr().out


def test_replicate_gsm8k_gpu_script_on_cpu(tmp_path):
    gsm8k = ROOT / "tests" / "data" / "gsm8k" / "test.jsonl"
    lines = gsm8k.read_text().splitlines()
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.jsonl").write_text("\n".join(lines[:40]) + "\n")  # stands in for the train split
    (tmp_path / "data" / "test.jsonl").write_text("\n".join(lines[40:60]) + "\n")
    script = _load("replicate_gsm8k_gpu")
    args = ["--tiny", "--gsm8k", str(tmp_path / "data"), "--output", str(tmp_path / "out"), "--sizes", "8", "16"]
    args += ["--learning-rates", "1e-3", "--epochs", "2", "--probe-size", "4", "--test-size", "4"]
    summary = script.main([*args, "--num-samples", "1", "--max-new-tokens", "8"])
    assert [r["name"] for r in summary["runs"]] == ["n8-lr0.001", "n16-lr0.001"]
    assert all(len(r["test_accuracy"]) == 2 for r in summary["runs"])
    assert set(summary["r2"]) >= {"pre_memorization_accuracy", "train_accuracy"}
    assert (tmp_path / "out" / "report" / "report.md").is_file()
    # a spent budget starts no run, and still writes the (empty) summary
    spent = script.main([*args, "--budget-minutes", "0", "--output", str(tmp_path / "none")])
    assert spent["runs"] == [] and (tmp_path / "none" / "summary.json").is_file()
