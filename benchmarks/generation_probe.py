r"""Generation probe (``HFSampler``) vs plain batched ``generate`` and vs the ideal, at real token lengths.

Two workloads: the demo's (its GPT shape, character tokens, synthetic traces) and GSM8K (a byte-level
BPE trained on the bundled GSM8K test split, ~100-token prompts). A model is first trained for a few
hundred steps on the workload's traces, so that it writes ``"\nDone."`` where a trace ends: its
completions stop at realistic lengths. Then ``k`` completions per prompt are sampled by (a) plain
``model.generate(do_sample=True, ...)`` running every row to ``max_new_tokens`` (or EOS) and cutting at
the stop string afterwards, and (b) ``HFSampler`` (seeded per example, stop-string early exit, prompts
sorted by length) at a few batch sizes.

Reported: time (process CPU time on one CPU thread), *useful* new tokens per second (the tokens of the
returned completions, up to the stop string), the share of row-steps spent on rows that had already
finished, and the fraction of the **ideal**: useful tokens at the plain per-row-step cost (the plain
run's row-steps per second at the same number of rows), i.e. what a sampler that spends exactly one row-step
per useful token would reach.

    python benchmarks/generation_probe.py            # about 10 minutes on 1 CPU thread
    python benchmarks/generation_probe.py --quick    # smoke run, seconds
"""

from __future__ import annotations

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
    synthetic_texts,
    tiny_gpt2,
    write_results,
)

NAME = "generation_probe"
STOP = "\nDone."


def train(model: Any, tokenizer: Any, texts: list[tuple[str, str]], steps: int, batch_size: int) -> float:
    """Teach ``model`` the traces' format with a short plain training loop; return the last loss."""
    limit = model.config.n_positions
    sequences = [(tokenizer(p + t)["input_ids"] + [tokenizer.eos_token_id])[:limit] for p, t in texts]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    generator = torch.Generator().manual_seed(0)
    model.train()
    loss = torch.tensor(0.0)
    for _ in range(steps):
        batch = [sequences[i] for i in torch.randint(len(sequences), (batch_size,), generator=generator).tolist()]
        width = max(len(s) for s in batch)
        ids = torch.zeros((len(batch), width), dtype=torch.long)
        labels = torch.full((len(batch), width), -100, dtype=torch.long)
        for row, seq in enumerate(batch):
            ids[row, : len(seq)] = torch.tensor(seq)
            labels[row, : len(seq)] = torch.tensor(seq)
        loss = model(input_ids=ids, labels=labels).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    return float(loss.detach())


def plain_generate(
    model: Any, tokenizer: Any, prompts: list[str], k: int, rows: int, max_new: int
) -> tuple[list[str], int]:
    """Plain batched sampling: every row runs to ``max_new`` tokens (or EOS); cut at the stop afterwards.

    Returns the completions and the row-steps run (rows x generated positions, over the batches).
    """
    expanded = [p for p in prompts for _ in range(k)]
    out: list[str] = []
    row_steps = 0
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        with torch.inference_mode():
            for start in range(0, len(expanded), rows):
                enc = tokenizer(expanded[start : start + rows], return_tensors="pt", padding=True)
                seq = model.generate(
                    **enc,
                    do_sample=True,
                    temperature=0.8,
                    top_p=0.95,
                    top_k=0,
                    max_new_tokens=max_new,
                    pad_token_id=tokenizer.pad_token_id,
                    eos_token_id=tokenizer.eos_token_id,
                )
                generated = seq[:, enc["input_ids"].shape[1] :]
                row_steps += generated.numel()
                texts = tokenizer.batch_decode(generated, skip_special_tokens=True)
                out += [t.split(STOP, 1)[0] for t in texts]
    finally:
        tokenizer.padding_side = side
    return out, row_steps


def waste(prompt_lengths: list[int], completion_tokens: list[list[int]], batch_size: int, max_new: int) -> float:
    """Share of HFSampler's row-steps spent on rows already finished (rows run to their batch's longest)."""
    order = sorted(range(len(prompt_lengths)), key=lambda i: (prompt_lengths[i], i))
    useful = total = 0
    for start in range(0, len(order), batch_size):
        lengths = [min(n, max_new) for i in order[start : start + batch_size] for n in completion_tokens[i]]
        useful += sum(lengths)
        total += len(lengths) * max(lengths)
    return 1 - useful / total if total else 0.0


def run_workload(
    label: str, texts: list[tuple[str, str]], args: Any, sizes: dict[str, Any], repeats: int
) -> dict[str, Any]:
    """Train a model on ``texts``, then time the samplers on its prompts."""
    from lightning_premem.probes import HFSampler
    from lightning_premem.tokenization import char_tokenizer

    tokenizer = gsm8k_bpe_tokenizer() if sizes.get("bpe") else char_tokenizer()
    special = {"bos_token_id": 1, "eos_token_id": 1} if sizes.get("bpe") else {}
    model = tiny_gpt2(len(tokenizer), n_positions=1024, **sizes["shape"], **special)
    loss = train(model, tokenizer, texts, sizes["train_steps"], sizes["train_batch"])
    prompts = [p for p, _ in texts[: sizes["prompts"]]]
    seeds = list(range(len(prompts)))
    k, max_new = sizes["samples"], sizes["max_new_tokens"]
    samplers = {
        b: HFSampler(model, tokenizer, num_samples=k, max_new_tokens=max_new, batch_size=b) for b in sizes["batches"]
    }
    fns: dict[str, Any] = {}
    row_steps: dict[int, int] = {}
    for b in sizes["batches"]:
        fns[f"plain generate, {b * k} rows"] = lambda b=b: row_steps.__setitem__(
            b, plain_generate(model, tokenizer, prompts, k, b * k, max_new)[1]
        )
    for b, sampler in samplers.items():
        fns[f"HFSampler, batch_size {b} ({b * k} rows)"] = lambda s=sampler: s.sample(prompts, seeds)
    times = interleaved_times(fns, repeats, clock=cpu_clock(torch.device("cpu")))

    completions = samplers[sizes["batches"][0]].sample(prompts, seeds)
    stopped_tokens = [
        [len(tokenizer(c + STOP, add_special_tokens=False)["input_ids"]) for c in samples] for samples in completions
    ]
    useful = sum(min(n, max_new) for samples in stopped_tokens for n in samples)
    prompt_lengths = [len(tokenizer(p)["input_ids"]) for p in prompts]
    stopped = sum(n <= max_new for samples in stopped_tokens for n in samples) / (len(prompts) * k)
    rows = []
    plain_best = min(v for name, v in times.items() if name.startswith("plain"))
    for name, seconds in times.items():
        row: dict[str, Any] = {
            "workload": label,
            "method": name,
            "seconds": seconds,
            "useful_tokens_per_s": useful / seconds,
            "speedup_vs_best_plain": plain_best / seconds,
        }
        if name.startswith("HFSampler"):
            batch = int(name.split("batch_size ", 1)[1].split(" ", 1)[0])
            row["finished_row_step_share"] = waste(prompt_lengths, stopped_tokens, batch, max_new)
            # the ideal: one row-step per useful token, at the plain run's row-step rate with as many rows
            ideal = row_steps[batch] / times[f"plain generate, {batch * k} rows"]
            row["ideal_useful_tokens_per_s"] = ideal
            row["fraction_of_ideal"] = (useful / seconds) / ideal
        rows.append(row)
    return {
        "workload": label,
        "prompts": len(prompts),
        "samples": k,
        "max_new_tokens": max_new,
        "train_steps": sizes["train_steps"],
        "final_train_loss": loss,
        "stopped_fraction": stopped,
        "useful_new_tokens": useful,
        "mean_prompt_tokens": sum(prompt_lengths) / len(prompt_lengths),
        "parameters": parameters(model),
        "rows": rows,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables and write the JSON."""
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    setup(args)
    repeats = args.repeats or (1 if args.quick else 3)
    if args.quick:
        tiny = {"n_layer": 1, "n_embd": 32, "n_head": 2}
        short = {"train_steps": 5, "train_batch": 8, "prompts": 8, "samples": 2, "max_new_tokens": 16, "batches": [4]}
        long = {"train_steps": 2, "train_batch": 2, "prompts": 2, "samples": 2, "max_new_tokens": 16, "batches": [2]}
        short["shape"], long["shape"], long["bpe"] = tiny, tiny, True
        n_short, n_long = 16, 4
    else:
        short = {"train_steps": 300, "train_batch": 32, "prompts": 192, "samples": 4, "max_new_tokens": 48}
        short["batches"], short["shape"] = [16, 64], {"n_layer": 3, "n_embd": 96, "n_head": 3}
        long = {"train_steps": 300, "train_batch": 16, "prompts": 16, "samples": 4, "max_new_tokens": 192}
        long["batches"], long["shape"], long["bpe"] = [4, 16], {"n_layer": 3, "n_embd": 96, "n_head": 3}, True
        n_short, n_long = 2000, 1319
    results = [
        run_workload("synthetic (short)", synthetic_texts(n_short), args, short, repeats),
        run_workload("GSM8K (BPE)", gsm8k_texts(n_long), args, long, repeats),
    ]
    summary = [
        {
            k: r[k]
            for k in ("workload", "prompts", "samples", "max_new_tokens", "mean_prompt_tokens", "stopped_fraction")
        }
        for r in results
    ]
    print("## Generation probe: workloads\n")
    print(markdown_table(summary))
    print("\n## Timings\n")
    print(
        markdown_table(
            [row for r in results for row in r["rows"]],
            [
                "workload",
                "method",
                "seconds",
                "useful_tokens_per_s",
                "speedup_vs_best_plain",
                "finished_row_step_share",
                "fraction_of_ideal",
            ],
        )
    )
    write_results(args.output, NAME, {"repeats": repeats, "workloads": results}, args.quick)
    return {"workloads": results}


if __name__ == "__main__":
    main()
