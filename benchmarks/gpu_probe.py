"""Both probes on a real small LM (SmolLM2-135M) on a GPU, against plain one-example-at-a-time loops.

One prepared script for a GPU (it has NOT been run for the numbers in docs/performance.md unless
that file says so). Perplexity: the authors' loop (batch 1, prompt tokenized separately, the full LM
head) vs ``target_perplexity`` at several token budgets vs the real limit (the body over every token,
the LM head on the target positions only) at several batch sizes. Sampling: a plain loop (one
``generate`` call per prompt with ``num_return_sequences=k``, to ``max_new_tokens``) vs ``HFSampler``
at several batch sizes. GSM8K test problems from ``tests/data``.

    python benchmarks/gpu_probe.py --model HuggingFaceTB/SmolLM2-135M      # hub name or local folder
    python benchmarks/gpu_probe.py --quick --model tiny --device cpu      # smoke run, no download
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import gsm8k_texts, interleaved_times, markdown_table, parameters, parser, setup, tiny_gpt2, write_results
from perplexity_probe import authors_loop, real_limit

NAME = "gpu_probe"


def load(name: str, device: torch.device) -> tuple[Any, Any]:
    """Load the model (bf16 on GPU, fp32 on CPU) and its tokenizer; ``tiny`` builds a random char-level GPT-2."""
    if name == "tiny":
        from lightning_premem.tokenization import char_tokenizer

        tokenizer = char_tokenizer()
        return tiny_gpt2(len(tokenizer), n_layer=1, n_embd=32, n_head=2, n_positions=1024).to(device), tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model = AutoModelForCausalLM.from_pretrained(name, dtype=dtype).to(device).eval()
    return model, AutoTokenizer.from_pretrained(name)


def plain_sampling_loop(model: Any, tokenizer: Any, prompts: list[str], k: int, max_new: int) -> None:
    """One ``generate`` call per prompt, ``k`` return sequences, to ``max_new_tokens`` (no stop string)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    with torch.inference_mode():
        for prompt in prompts:
            enc = tokenizer(prompt, return_tensors="pt").to(model.device)
            model.generate(
                **enc,
                do_sample=True,
                temperature=0.8,
                top_p=0.95,
                top_k=0,
                num_return_sequences=k,
                max_new_tokens=max_new,
                pad_token_id=pad,
            )


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables and write the JSON."""
    from lightning_premem.probes import HFSampler, encode_prompt_target, target_perplexity

    parse = parser(__doc__.splitlines()[0])
    parse.add_argument("--model", default="HuggingFaceTB/SmolLM2-135M", help="hub name, local folder, or 'tiny'")
    parse.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parse.parse_args(argv)
    setup(args)
    device = torch.device(args.device)
    repeats = args.repeats or (1 if args.quick else 3)
    model, tokenizer = load(args.model, device)
    n_ppl, n_gen, k, max_new = (8, 2, 2, 8) if args.quick else (512, 64, 5, 256)
    budgets = [2048, 8192] if args.quick else [4096, 8192, 16384, 32768, 65536]
    row_counts = [1, 4] if args.quick else [1, 8, 16, 32, 64, 128]
    gen_batches = [2] if args.quick else [8, 16, 32, 64]

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    texts = gsm8k_texts(n_ppl)
    pairs = [encode_prompt_target(tokenizer, p, t) for p, t in texts]
    lengths = [len(p) + len(t) for p, t in pairs]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    fns: dict[str, Any] = {"authors loop (batch 1)": lambda: (authors_loop(model, tokenizer, texts, device), sync())}
    for rows in row_counts:
        fns[f"real limit, batch {rows}"] = lambda r=rows: real_limit(model, pairs, r, device)
    for budget in budgets:
        fns[f"target_perplexity, budget {budget}"] = lambda b=budget: (
            target_perplexity(model, pairs, pad_token_id=pad, max_batch_tokens=b),
            sync(),
        )
    ppl_times = interleaved_times(fns, repeats)
    limit = min(v for name, v in ppl_times.items() if name.startswith("real limit"))
    authors = ppl_times["authors loop (batch 1)"]
    ppl_rows = [
        {"method": name, "seconds": s, "tokens_per_s": sum(lengths) / s, "x_limit": s / limit, "authors_x": authors / s}
        for name, s in ppl_times.items()
    ]

    prompts = [p for p, _ in gsm8k_texts(n_gen)]
    seeds = list(range(len(prompts)))
    gen_fns: dict[str, Any] = {
        "plain loop (1 prompt x k per generate)": lambda: (
            plain_sampling_loop(model, tokenizer, prompts, k, max_new),
            sync(),
        )
    }
    for b in gen_batches:
        sampler = HFSampler(model, tokenizer, num_samples=k, max_new_tokens=max_new, batch_size=b)
        gen_fns[f"HFSampler, batch_size {b}"] = lambda s=sampler: (s.sample(prompts, seeds), sync())
    gen_times = interleaved_times(gen_fns, repeats)
    plain = gen_times["plain loop (1 prompt x k per generate)"]
    gen_rows = [{"method": name, "seconds": s, "plain_x": plain / s} for name, s in gen_times.items()]

    print(f"## {args.model} ({parameters(model) / 1e6:.0f} M parameters) on {device}\n")
    print(f"### Perplexity, {len(texts)} GSM8K examples ({sum(lengths) / len(lengths):.0f} tokens on average)\n")
    print(markdown_table(ppl_rows))
    print(f"\n### Sampling, {len(prompts)} prompts x {k} samples, max_new_tokens {max_new}\n")
    print(markdown_table(gen_rows))
    payload = {
        "model": args.model,
        "device": str(device),
        "parameters": parameters(model),
        "repeats": repeats,
        "perplexity": ppl_rows,
        "sampling": gen_rows,
    }
    write_results(args.output, NAME, payload, args.quick)
    return payload


if __name__ == "__main__":
    main()
