"""Shared helpers of the benchmark scripts: timing, tables, JSON, tiny models and data.

Not part of the package: the scripts put this folder on ``sys.path`` (``python benchmarks/<name>.py``
does it by itself) and import it as ``_common``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
GSM8K = ROOT / "tests" / "data" / "gsm8k" / "test.jsonl"


def parser(description: str) -> argparse.ArgumentParser:
    """Return an argument parser with the options every benchmark takes (``--quick``, ``--output``)."""
    parse = argparse.ArgumentParser(description=description)
    parse.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run of seconds, numbers meaningless")
    parse.add_argument("--output", type=Path, default=RESULTS, help=f"folder for the JSON (default {RESULTS})")
    parse.add_argument("--repeats", type=int, default=None, help="timed repeats per cell (median reported)")
    parse.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads (default 1: stable on a shared machine; 0 keeps torch's default)",
    )
    return parse


def setup(args: argparse.Namespace) -> None:
    """Apply the common options (``--threads``) before any measurement."""
    if args.threads > 0:
        torch.set_num_threads(args.threads)


def median_time(fn: Callable[[], Any], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs, after ``warmup`` untimed runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def interleaved_times(
    fns: dict[str, Callable[[], Any]], repeats: int, warmup: int = 1, clock: Callable[[], float] = time.perf_counter
) -> dict[str, float]:
    """Median times of several functions, run round-robin so that machine noise hits them alike.

    ``clock`` is wall time by default; pass ``time.process_time`` (process CPU time) for one-thread CPU runs on
    a shared machine, where other jobs make wall time noisy.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = clock()
            fn()
            times[name].append(clock() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def cpu_clock(device: torch.device) -> Callable[[], float]:
    """Return the clock to time on: process CPU time for a one-thread CPU run, wall time otherwise."""
    return time.process_time if device.type == "cpu" and torch.get_num_threads() == 1 else time.perf_counter


def machine() -> dict[str, Any]:
    """Describe the machine the numbers come from."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info: dict[str, Any] = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
    }
    try:
        import transformers

        info["transformers"] = transformers.__version__
    except ImportError:  # pragma: no cover
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def markdown_table(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """Format ``rows`` (dicts) as a Markdown table; floats get 3 significant digits."""
    if not rows:
        return "(no rows)"
    columns = list(columns or rows[0].keys())

    def cell(value: Any) -> str:
        if isinstance(value, float):
            return f"{value:.3g}" if abs(value) < 1e5 else f"{value:.3e}"
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join(" ---: " for _ in columns) + "|"]
    lines += ["| " + " | ".join(cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(output: Path, name: str, payload: dict[str, Any], quick: bool) -> Path:
    """Write ``payload`` (plus the machine) to ``<output>/<name>[-quick].json``; return the path."""
    output.mkdir(parents=True, exist_ok=True)
    path = output / f"{name}{'-quick' if quick else ''}.json"
    payload = {"benchmark": name, "quick": quick, "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"\nwrote {path}")
    return path


def tiny_gpt2(
    vocab_size: int,
    *,
    n_layer: int,
    n_embd: int,
    n_head: int,
    n_positions: int,
    seed: int = 0,
    bos_token_id: int = 2,
    eos_token_id: int = 3,
) -> Any:
    """Build a randomly initialised GPT-2 (no download), in eval mode, float32."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=vocab_size,
        n_positions=n_positions,
        n_embd=n_embd,
        n_layer=n_layer,
        n_head=n_head,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=0,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
    )
    return GPT2LMHeadModel(config).eval()


def synthetic_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """``n`` (prompt, target) texts of the synthetic arithmetic task, in the callback's templates."""
    from lightning_premem.data.synthetic import ArithmeticTask
    from lightning_premem.tokenization import format_example

    rows = ArithmeticTask(templates=("a+b*c+d",), trace_diversity=3).generate(n, seed=seed, unique=True)
    return [format_example(row) for row in rows]


def gsm8k_texts(n: int) -> list[tuple[str, str]]:
    """Return the first ``n`` GSM8K test problems as (prompt, target) texts (``~600`` characters each)."""
    from lightning_premem.tokenization import format_example

    rows = [json.loads(line) for line in GSM8K.read_text().splitlines()[:n]]
    return [format_example({"question": r["question"], "solution": r["answer"]}) for r in rows]


def gsm8k_bpe_tokenizer(vocab_size: int = 16384) -> Any:
    """Return a byte-level BPE tokenizer trained on the bundled GSM8K test split (``tokenizers``; seconds).

    Real token lengths without a download: GSM8K prompt + trace is ~150 of these tokens (GPT-2's BPE gives
    about the same), against ~530 characters. The trainer stops below ``vocab_size`` when the text has no
    more merges (about 11.4k here). ``<pad>`` is id 0, ``<eos>`` id 1.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    texts = [p + t for p, t in gsm8k_texts(10**9)]
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<pad>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="<pad>", eos_token="<eos>")  # type: ignore[no-untyped-call]


def parameters(model: torch.nn.Module) -> int:
    """Count the parameters of ``model``."""
    return sum(p.numel() for p in model.parameters())
