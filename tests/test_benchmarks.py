"""Smoke runs of the benchmark scripts at tiny sizes (seconds each; the numbers are meaningless)."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = ["perplexity_probe", "generation_probe", "callback_overhead", "metric_scaling", "gpu_probe"]


def load(name):
    if str(BENCHMARKS) not in sys.path:
        sys.path.insert(0, str(BENCHMARKS))
    spec = importlib.util.spec_from_file_location(name, BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
@pytest.mark.parametrize("name", SCRIPTS)
def test_benchmark_quick_run(name, tmp_path, capsys):
    argv = ["--quick", "--output", str(tmp_path)]
    if name == "gpu_probe":
        argv += ["--model", "tiny", "--device", "cpu"]
    load(name).main(argv)
    out = capsys.readouterr().out
    assert "| ---: |" in out  # printed a Markdown table
    payload = json.loads((tmp_path / f"{name}-quick.json").read_text())
    assert payload["benchmark"] == name and payload["quick"] is True and "cpu" in payload["machine"]


def test_every_benchmark_script_is_smoke_tested():
    scripts = {p.stem for p in BENCHMARKS.glob("*.py") if not p.stem.startswith("_")}
    assert scripts == set(SCRIPTS)
