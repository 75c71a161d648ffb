"""Perplexity probe vs the authors' approach and vs a bare forward pass over the same tokens.

The authors (Kang et al.) score one example at a time: tokenize the prompt alone and prompt +
target, mask the prompt out of the labels, ``exp(model(ids, labels=labels).loss)``.
:func:`lightning_premem.probes.target_perplexity` batches by a token budget (sorted by length,
right padded, no attention mask needed). The physical limit of a teacher-forced pass is a bare
``model(input_ids)`` over the same padded tokens at the best batch shape: the table reports the
probe's time as a multiple of that limit, and the authors' loop as a multiple of the probe. Two
workloads: short synthetic traces (~47 tokens) and GSM8K-length ones (~600 characters).

    python benchmarks/perplexity_probe.py            # about 5 minutes on 2 CPU cores
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
    gsm8k_texts,
    interleaved_times,
    markdown_table,
    parameters,
    parser,
    setup,
    synthetic_texts,
    tiny_gpt2,
    write_results,
)

NAME = "perplexity_probe"


def authors_loop(model: Any, tokenizer: Any, texts: list[tuple[str, str]], device: torch.device) -> list[float]:
    """Score like the authors: one example at a time, the prompt tokenized separately."""
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


def bare_forward(
    model: Any, sequences: list[list[int]], batches: list[list[int]], device: torch.device, mask: bool = False
) -> None:
    """``model(input_ids)`` over right-padded batches: the cost floor of any teacher-forced pass."""
    with torch.inference_mode():
        for batch in batches:
            width = max(len(sequences[i]) for i in batch)
            ids = torch.zeros((len(batch), width), dtype=torch.long)
            for row, i in enumerate(batch):
                ids[row, : len(sequences[i])] = torch.tensor(sequences[i])
            ids = ids.to(device)
            extra = {"attention_mask": torch.ones_like(ids)} if mask else {}
            model(input_ids=ids, use_cache=False, **extra)
    if device.type == "cuda":
        torch.cuda.synchronize()


def padding_waste(lengths: list[int], batches: list[list[int]]) -> float:
    """Share of the padded tokens that are padding."""
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - sum(lengths) / padded


def run_workload(
    label: str,
    model: Any,
    tokenizer: Any,
    texts: list[tuple[str, str]],
    device: torch.device,
    repeats: int,
    budgets: list[int],
    row_counts: list[int],
) -> dict[str, Any]:
    """Time every method on one workload; return the measurements."""
    from lightning_premem.probes import encode_prompt_target, perplexity, target_perplexity
    from lightning_premem.probes.perplexity import _token_budget_batches

    pairs = [encode_prompt_target(tokenizer, p, t) for p, t in texts]
    sequences = [p + t for p, t in pairs]
    lengths = [len(s) for s in sequences]
    pad = tokenizer.pad_token_id

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def probe(budget: int | None) -> Any:
        def run() -> None:
            if budget is None:  # as the callback calls it: its default budget, with the CPU cap
                target_perplexity(model, pairs, pad_token_id=pad, max_batch_tokens=8192)
            else:  # the budget as given: the CPU cap lifted for the sweep
                cap, perplexity._CPU_MAX_BATCH_TOKENS = perplexity._CPU_MAX_BATCH_TOKENS, None
                try:
                    target_perplexity(model, pairs, pad_token_id=pad, max_batch_tokens=budget)
                finally:
                    perplexity._CPU_MAX_BATCH_TOKENS = cap
            sync()

        return run

    # Correctness: the probe equals the authors' loop.
    reference = torch.tensor(authors_loop(model, tokenizer, texts, device))
    ours = target_perplexity(model, pairs, pad_token_id=pad)
    max_rel_diff = float(((ours - reference).abs() / reference).max())

    fns: dict[str, Any] = {"authors loop (batch 1, tokenizing)": lambda: authors_loop(model, tokenizer, texts, device)}
    fns["bare forward, batch 1"] = lambda: bare_forward(model, sequences, packed(lengths, 1), device)
    for rows in row_counts:
        if rows > 1:
            fns[f"bare forward, batch {rows}"] = lambda r=rows: bare_forward(
                model, sequences, packed(lengths, r), device
            )
    best_rows_guess = row_counts[len(row_counts) // 2]
    fns[f"bare forward + all-ones mask, batch {best_rows_guess}"] = lambda: bare_forward(
        model, sequences, packed(lengths, best_rows_guess), device, mask=True
    )
    for budget in budgets:
        fns[f"target_perplexity, budget {budget}"] = probe(budget)
    fns["target_perplexity, default"] = probe(None)
    times = interleaved_times(fns, repeats)

    bare = {k: v for k, v in times.items() if k.startswith("bare forward, batch")}
    limit_name = min(bare, key=bare.__getitem__)
    limit = bare[limit_name]
    authors = times["authors loop (batch 1, tokenizing)"]
    probe_names = [k for k in times if k.startswith("target_perplexity")]
    best_probe = min(probe_names, key=times.__getitem__)
    rows = []
    for name, seconds in times.items():
        row: dict[str, Any] = {
            "workload": label,
            "method": name,
            "seconds": seconds,
            "tokens_per_s": sum(lengths) / seconds,
            "x_limit": seconds / limit,
            "authors_x": authors / seconds,
        }
        if name.startswith("target_perplexity"):
            budget = 8192 if name.endswith("default") else int(name.rsplit(" ", 1)[1])
            if name.endswith("default") and device.type == "cpu" and perplexity._CPU_MAX_BATCH_TOKENS is not None:
                budget = min(budget, perplexity._CPU_MAX_BATCH_TOKENS)
            row["padding_waste"] = padding_waste(lengths, _token_budget_batches(lengths, budget))
        elif name.startswith("bare forward"):
            rows_per_batch = int(name.rsplit(" ", 1)[1])
            row["padding_waste"] = padding_waste(lengths, packed(lengths, rows_per_batch))
        rows.append(row)
    default = "target_perplexity, default"
    return {
        "workload": label,
        "examples": len(texts),
        "mean_tokens": sum(lengths) / len(lengths),
        "max_tokens": max(lengths),
        "max_rel_diff_vs_authors": max_rel_diff,
        "limit": {"method": limit_name, "seconds": limit},
        "best_probe": {"method": best_probe, "seconds": times[best_probe], "x_limit": times[best_probe] / limit},
        "default_probe": {"method": default, "seconds": times[default], "x_limit": times[default] / limit},
        "speedup_vs_authors_best": authors / times[best_probe],
        "speedup_vs_authors_default": authors / times[default],
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables and write the JSON."""
    from lightning_premem.tokenization import char_tokenizer

    parse = parser(__doc__.splitlines()[0])
    parse.add_argument("--device", default="cpu", help="torch device (default cpu)")
    args = parse.parse_args(argv)
    setup(args)
    device = torch.device(args.device)
    repeats = args.repeats or (1 if args.quick else 3)
    tokenizer = char_tokenizer()
    if args.quick:
        shape, n_short, n_long, n_positions = {"n_layer": 1, "n_embd": 32, "n_head": 2}, 12, 3, 1024
        budgets, row_counts = [512, 8192], [1, 4]
    else:
        shape, n_short, n_long, n_positions = {"n_layer": 4, "n_embd": 128, "n_head": 4}, 256, 64, 1024
        budgets, row_counts = [1024, 2048, 4096, 8192, 16384], [1, 4, 16, 32, 64]
    model = tiny_gpt2(len(tokenizer), n_positions=n_positions, **shape).to(device)
    results = []
    for label, texts in (("synthetic (short)", synthetic_texts(n_short)), ("GSM8K (long)", gsm8k_texts(n_long))):
        results.append(run_workload(label, model, tokenizer, texts, device, repeats, budgets, row_counts))
    summary = [
        {
            "workload": r["workload"],
            "examples": r["examples"],
            "mean_tokens": r["mean_tokens"],
            "limit": r["limit"]["method"],
            "default_x_limit": r["default_probe"]["x_limit"],
            "best_probe": r["best_probe"]["method"],
            "best_x_limit": r["best_probe"]["x_limit"],
            "authors/default": r["speedup_vs_authors_default"],
            "authors/best": r["speedup_vs_authors_best"],
            "max_rel_diff": r["max_rel_diff_vs_authors"],
        }
        for r in results
    ]
    print(f"## Perplexity probe ({parameters(model) / 1e6:.2f} M-parameter GPT-2, {device})\n")
    print(markdown_table(summary))
    print("\n## All methods\n")
    print(
        markdown_table(
            [row for r in results for row in r["rows"]],
            ["workload", "method", "seconds", "tokens_per_s", "x_limit", "authors_x", "padding_waste"],
        )
    )
    payload = {"device": str(device), "parameters": parameters(model), "repeats": repeats, "workloads": results}
    write_results(args.output, NAME, payload, args.quick)
    return payload


if __name__ == "__main__":
    main()
