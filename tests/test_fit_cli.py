"""`premem fit --config` runs each example config (as a tiny variant: small model, few rows, one epoch)."""

import json

import pytest
import yaml
from conftest import ROOT

from lightning_premem.cli import main
from lightning_premem.history import load_run_histories

pytestmark = pytest.mark.slow

TINY_MODEL = {"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 512}


def _tiny_variant(name, tmp_path, train, test, fields):
    config = yaml.safe_load((ROOT / "examples" / "configs" / name).read_text())
    config["trainer"].update(max_epochs=1, accelerator="cpu", precision="32-true", enable_progress_bar=False)
    config["trainer"]["logger"]["init_args"]["save_dir"] = str(tmp_path / "logs")
    (callback,) = config["trainer"]["callbacks"]
    callback["init_args"].update(every_n_epochs=1, max_examples=3, num_samples=1, max_new_tokens=8, progress=False)
    config["model"].update(model=TINY_MODEL, tokenizer="char")
    data = config["data"]
    data.update(
        train=str(train),
        test=str(test),
        max_train_examples=6,
        max_test_examples=2,
        batch_size=3,
        max_length=512,
        fields=fields,
    )
    data.pop("hub_config", None)
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def _math_rows(path, n):
    rows = [
        {"problem": f"What is ${i}+{i}$?", "solution": f"${i}+{i}={2 * i}$, so \\boxed{{{2 * i}}}."} for i in range(n)
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize("name", ["demo.yaml", "gsm8k.yaml", "math.yaml"])
def test_example_configs_run(tmp_path, name):
    if name == "demo.yaml":
        folder = ROOT / "examples" / "data" / "synthetic"
        train, test = folder / "train.jsonl", folder / "test.jsonl"
        fields = {"question": "question", "solution": "solution", "id": "id"}
    elif name == "gsm8k.yaml":
        train = test = ROOT / "tests" / "data" / "gsm8k" / "test.jsonl"
        fields = "gsm8k"
    else:
        train, test = _math_rows(tmp_path / "train.jsonl", 8), _math_rows(tmp_path / "test.jsonl", 4)
        fields = "math"
    assert main(["fit", "--config", str(_tiny_variant(name, tmp_path, train, test, fields))]) == 0
    (run,) = load_run_histories(tmp_path / "logs")
    assert run.num_checkpoints == 1 and run.num_examples == 3 and run.test_accuracy is not None
