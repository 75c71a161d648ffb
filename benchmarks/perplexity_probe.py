"""Perplexity probe vs its compute limit and vs the authors' loop, at real (BPE) token lengths.

The authors (Kang et al.) score one example at a time: tokenize the prompt alone and prompt +
target, mask the prompt out of the labels, ``exp(model(ids, labels=labels).loss)`` (the LM head
runs on every position). The **real limit** of a teacher-forced pass is the transformer body over
every token and the LM head and cross-entropy on the target positions only, at the best batch
shape (1-8 rows, longest first): the table reports every method as a multiple of it.
:func:`lightning_premem.probes.target_perplexity` is run as the callback runs it (its defaults).

Workload: GSM8K test problems in the callback's prompt/target format, tokenized with a byte-level
BPE trained on the bundled GSM8K test split (~150 tokens per example); random GPT-2s of two sizes.
On CPU with one thread the clock is process CPU time (other jobs on a shared machine do not count).

    python benchmarks/perplexity_probe.py            # about 6 minutes on 1 CPU thread
    python benchmarks/perplexity_probe.py --quick    # smoke run, seconds
    python benchmarks/perplexity_probe.py --device cuda
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (
    cpu_clock,
    gsm8k_bpe_tokenizer,
    gsm8k_texts,
    interleaved_times,
    markdown_table,
    parameters,
    parser,
    setup,
    tiny_gpt2,
    write_results,
)

NAME = "perplexity_probe"


def authors_loop(model: Any, tokenizer: Any, texts: list[tuple[str, str]], device: torch.device) -> list[float]:
    """Score like the authors: one example at a time, the prompt tokenized separately, the full LM head."""
    values = []
    with torch.inference_mode():
        for prompt, target in texts:
            prompt_len = len(tokenizer(prompt)["input_ids"])
            ids = torch.tensor([tokenizer(prompt + target)["input_ids"]], device=device)
            labels = ids.clone()
            labels[:, :prompt_len] = -100
            values.append(math.exp(float(model(input_ids=ids, labels=labels, use_cache=False).loss)))
    return values


def packed(lengths: list[int], rows: int) -> list[list[int]]:
    """Sort indices by length (longest first) and cut them into batches of ``rows``."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[k : k + rows] for k in range(0, len(order), rows)]


def real_limit(model: Any, pairs: list[tuple[list[int], list[int]]], rows: int, device: torch.device) -> None:
    """Run the body over every (right-padded) token, the LM head and cross-entropy on target positions only."""
    from lightning_premem.probes.models import split_head

    split = split_head(model)
    if split is None:
        raise TypeError(f"{type(model).__name__} has no separate LM head: the real limit is not defined for it.")
    body, head = split
    lengths = [len(p) + len(t) for p, t in pairs]
    with torch.inference_mode():
        for batch in packed(lengths, rows):
            width = max(lengths[i] for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            row_index, columns, labels = [], [], []
            for row, i in enumerate(batch):
                prompt, target = pairs[i]
                ids[row, : lengths[i]] = torch.tensor(prompt + target)
                row_index += [row] * len(target)
                columns += range(len(prompt) - 1, len(prompt) - 1 + len(target))
                labels += target
            ids = ids.to(device)
            hidden = body(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)[0]
            logits = head(hidden[torch.tensor(row_index, device=device), torch.tensor(columns, device=device)])
            torch.nn.functional.cross_entropy(logits.float(), torch.tensor(labels, device=device))
    if device.type == "cuda":
        torch.cuda.synchronize()


def run_model(
    label: str, shape: dict[str, int], tokenizer: Any, texts: list[tuple[str, str]], args: Any, device: torch.device
) -> dict[str, Any]:
    """Time every method on one model; return the measurements."""
    from lightning_premem.probes import encode_prompt_target, target_perplexity

    model = tiny_gpt2(len(tokenizer), n_positions=1024, bos_token_id=1, eos_token_id=1, **shape).to(device)
    pairs = [encode_prompt_target(tokenizer, p, t) for p, t in texts]
    lengths = [len(p) + len(t) for p, t in pairs]
    pad = tokenizer.pad_token_id
    row_counts = [1, 4] if args.quick else [1, 2, 4, 8]

    def probe() -> None:
        target_perplexity(model, pairs, pad_token_id=pad)
        if device.type == "cuda":
            torch.cuda.synchronize()

    reference = torch.tensor(authors_loop(model, tokenizer, texts, device))
    max_rel_diff = float(((target_perplexity(model, pairs, pad_token_id=pad) - reference).abs() / reference).max())
    fns: dict[str, Any] = {
        "authors loop (batch 1, full LM head)": lambda: authors_loop(model, tokenizer, texts, device),
        "target_perplexity (defaults)": probe,
    }
    for rows in row_counts:
        fns[f"real limit, {rows} rows"] = lambda r=rows: real_limit(model, pairs, r, device)
    times = interleaved_times(fns, args.repeats or (1 if args.quick else 3), clock=cpu_clock(device))
    limits = {k: v for k, v in times.items() if k.startswith("real limit")}
    limit_name = min(limits, key=limits.__getitem__)
    authors, ours = times["authors loop (batch 1, full LM head)"], times["target_perplexity (defaults)"]
    return {
        "model": label,
        "parameters": parameters(model),
        "examples": len(texts),
        "mean_tokens": sum(lengths) / len(lengths),
        "max_tokens": max(lengths),
        "max_rel_diff_vs_authors": max_rel_diff,
        "limit": {"method": limit_name, "seconds": limits[limit_name]},
        "probe_x_limit": ours / limits[limit_name],
        "authors_x_limit": authors / limits[limit_name],
        "speedup_vs_authors": authors / ours,
        "rows": [
            {
                "model": label,
                "method": name,
                "seconds": seconds,
                "x_limit": seconds / limits[limit_name],
                "tokens_per_s": sum(lengths) / seconds,
            }
            for name, seconds in times.items()
        ],
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables and write the JSON."""
    parse = parser(__doc__.splitlines()[0])
    parse.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = parse.parse_args(argv)
    setup(args)
    device = torch.device(args.device)
    tokenizer = gsm8k_bpe_tokenizer()
    if args.quick:
        shapes = {"tiny": {"n_layer": 1, "n_embd": 32, "n_head": 2}}
        texts = gsm8k_texts(6)
    else:
        shapes = {
            "GPT-2 4x256": {"n_layer": 4, "n_embd": 256, "n_head": 4},
            "GPT-2 6x512": {"n_layer": 6, "n_embd": 512, "n_head": 8},
        }
        texts = gsm8k_texts(96)
    results = [run_model(label, shape, tokenizer, texts, args, device) for label, shape in shapes.items()]
    summary = [
        {
            "model": r["model"],
            "parameters_M": r["parameters"] / 1e6,
            "examples": r["examples"],
            "mean_tokens": r["mean_tokens"],
            "limit": r["limit"]["method"],
            "probe_x_limit": r["probe_x_limit"],
            "authors_x_limit": r["authors_x_limit"],
            "probe_vs_authors": r["speedup_vs_authors"],
            "max_rel_diff": r["max_rel_diff_vs_authors"],
        }
        for r in results
    ]
    clock = "process CPU time" if cpu_clock(device).__name__ == "process_time" else "wall time"
    print(f"## Perplexity probe at BPE lengths ({device}, {torch.get_num_threads()} thread(s), {clock})\n")
    print(markdown_table(summary))
    print("\n## All methods\n")
    print(markdown_table([row for r in results for row in r["rows"]]))
    payload = {"device": str(device), "threads": torch.get_num_threads(), "clock": clock, "models": results}
    write_results(args.output, NAME, payload, args.quick)
    return payload


if __name__ == "__main__":
    main()
