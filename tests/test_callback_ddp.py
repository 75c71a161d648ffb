"""2-process CPU DDP (gloo): the callback's per-example values equal a single process's."""

import numpy as np
import pytest
import torch
from _callback_ddp_worker import fit, run
from _ddp import spawn

from lightning_premem.history import load_run_histories

pytestmark = [pytest.mark.ddp, pytest.mark.slow, pytest.mark.timeout(300, method="thread")]  # a hang fails


def test_ddp_probe_equals_single_process(tmp_path):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    fit(str(single))
    spawn(run, 2, str(ddp))
    one = torch.load(single / "result.pt", weights_only=False)
    two = torch.load(ddp / "result.pt", weights_only=False)
    assert len(one["history"]) == len(two["history"]) == 2
    assert 0 < one["history"][-1]["accuracy"].mean() < 1  # the parity grader makes accuracies informative
    for a, b in zip(one["history"], two["history"], strict=True):
        torch.testing.assert_close(a["accuracy"], b["accuracy"], rtol=0, atol=0)
        torch.testing.assert_close(a["num_correct"], b["num_correct"], rtol=0, atol=0)
        torch.testing.assert_close(a["perplexity"], b["perplexity"], rtol=1e-5, atol=0)
        assert a["test_accuracy"] == pytest.approx(b["test_accuracy"])
    torch.testing.assert_close(one["per_example"], two["per_example"], rtol=0, atol=0, equal_nan=True)
    # rank 0 wrote the history under the logger's directory, the same as the single process did
    (single_run,) = load_run_histories(single)
    (ddp_run,) = load_run_histories(ddp)
    assert single_run.name == ddp_run.name == "tb/version_0"
    np.testing.assert_array_equal(single_run.train_accuracy, ddp_run.train_accuracy)
