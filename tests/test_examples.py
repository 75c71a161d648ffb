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
