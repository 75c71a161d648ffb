"""`premem demo`: the report it writes, its shipped data and its config file."""

import json
import math

import pytest
import yaml
from conftest import ROOT

from lightning_premem.cli import main
from lightning_premem.experiments.demo import DemoConfig, demo_rows, demo_threshold
from lightning_premem.tokenization import char_tokenizer

pytestmark = pytest.mark.slow


def test_quick_demo_writes_the_report(tmp_path, capsys):
    assert main(["demo", "--quick", "--output", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"tensorboard --logdir {tmp_path / 'tensorboard'}" in out and str(tmp_path / "report.md") in out
    report = (tmp_path / "report.md").read_text()
    for piece in ("accuracy.png", "dynamics.png", "per_example.csv", "| epoch | step | train acc"):
        assert piece in report
    for name in ("accuracy.png", "dynamics.png"):
        assert (tmp_path / name).read_bytes()[:4] == b"\x89PNG"
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert [r["epoch"] for r in summary["rounds"]] == [0, 1]
    rows = (tmp_path / "per_example.csv").read_text().splitlines()
    assert len(rows) == 1 + 8 and rows[0].startswith("example_id,accuracy_e0,accuracy_e1,perplexity_e0")
    assert (tmp_path / "tensorboard" / "premem" / "history.npz").exists()


def test_shipped_data_is_the_generators_output():
    _, train, test = demo_rows(DemoConfig())
    folder = ROOT / "examples" / "data" / "synthetic"
    assert [json.loads(line) for line in (folder / "train.jsonl").read_text().splitlines()] == train
    assert [json.loads(line) for line in (folder / "test.jsonl").read_text().splitlines()] == test
    assert not {r["question"] for r in train} & {r["question"] for r in test}


def test_demo_config_file_matches_the_demo():
    config = DemoConfig()
    yml = yaml.safe_load((ROOT / "examples" / "configs" / "demo.yaml").read_text())
    (callback,) = yml["trainer"]["callbacks"]
    task, train, _ = demo_rows(config)
    assert callback["init_args"]["threshold"] == pytest.approx(demo_threshold(task, train, char_tokenizer()), abs=5e-4)
    assert callback["init_args"]["max_examples"] == config.probe_size
    assert callback["init_args"]["every_n_epochs"] == config.every_n_epochs
    assert callback["init_args"]["num_samples"] == config.sampling.num_samples
    assert yml["trainer"]["max_epochs"] == config.epochs
    assert yml["model"]["learning_rate"] == config.learning_rate
    model = yml["model"]["model"]
    assert (model["n_layer"], model["n_embd"], model["n_head"]) == (config.n_layer, config.n_embd, config.n_head)
    assert yml["data"]["batch_size"] == config.batch_size


def test_demo_threshold_is_below_the_trace_randomness_floor():
    task, train, _ = demo_rows(DemoConfig())
    tok = char_tokenizer()
    p = demo_threshold(task, train, tok)
    floor = demo_threshold(task, train, tok, fraction=1.0)
    assert 1.0 < p < floor and math.log(p) == pytest.approx(0.75 * math.log(floor))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"train_size": 0}, "train_size"), ({"probe_size": 600}, "probe_size"), ({"dropout": 1.0}, "dropout")],
)
def test_demo_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        DemoConfig(**kwargs)
