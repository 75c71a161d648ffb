"""Metric scaling: ``PreMemorizationAccuracy`` update / compute time and bytes per example, and DDP sync.

For 10^4 ... 10^7 training examples: the state's bytes per example, the time of one ``update``
over every example (and over batches of 1,000 ids), of ``compute()`` and of ``per_example()``;
then, in 2 gloo processes on this machine, the time of the cross-process sync
(``merge_ranks()``, the same all-gather + element-wise max that ``compute()`` does under DDP).

    python benchmarks/metric_scaling.py            # about 1 minute on 2 CPU cores
    python benchmarks/metric_scaling.py --quick    # smoke run, seconds
"""

from __future__ import annotations

import os
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import markdown_table, median_time, parser, setup, write_results

NAME = "metric_scaling"
THRESHOLD = 1.1


def _observations(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    accuracy = (torch.randint(0, 6, (n,), generator=generator) / 5).float()
    perplexity = 1 + torch.rand(n, generator=generator) * 0.5
    return accuracy, perplexity


def single_process(n: int, repeats: int) -> dict[str, Any]:
    """Time update / compute / per_example on one process for ``n`` examples."""
    from lightning_premem import PreMemorizationAccuracy

    metric = PreMemorizationAccuracy(n, THRESHOLD)
    state_bytes = sum(t.numel() * t.element_size() for t in (metric.running_max, metric.latest, metric.clock))
    ids = torch.arange(n)
    accuracy, perplexity = _observations(n, 0)
    step = iter(range(10**6))
    update_all = median_time(lambda: metric.update(ids, accuracy, perplexity, step=next(step)), repeats)
    chunk = min(1000, n)
    batches = max(1, min(100, n // chunk))

    def update_chunks() -> None:
        s = next(step)
        for b in range(batches):
            lo = b * chunk
            metric.update(ids[lo : lo + chunk], accuracy[lo : lo + chunk], perplexity[lo : lo + chunk], step=s)

    update_chunked = median_time(update_chunks, repeats) / (batches * chunk)

    def compute_fresh() -> None:
        metric._computed = None  # torchmetrics caches compute() until the next update
        metric.compute()

    compute = median_time(compute_fresh, repeats)
    per_example = median_time(metric.per_example, repeats)
    return {
        "examples": n,
        "state_bytes_per_example": state_bytes / n,
        "update_all_s": update_all,
        "update_us_per_example": update_all / n * 1e6,
        "update_1000_us_per_example": update_chunked * 1e6,
        "compute_s": compute,
        "compute_ns_per_example": compute / n * 1e9,
        "per_example_s": per_example,
    }


def _ddp_worker(rank: int, world: int, port: int, sizes: list[int], repeats: int, out: str) -> None:
    import torch.distributed as dist

    from lightning_premem import PreMemorizationAccuracy

    os.environ["MASTER_ADDR"], os.environ["MASTER_PORT"] = "127.0.0.1", str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = []
    for n in sizes:
        metric = PreMemorizationAccuracy(n, THRESHOLD)
        ids = torch.arange(rank, n, world)
        accuracy, perplexity = _observations(ids.numel(), rank)
        metric.update(ids, accuracy, perplexity, step=0)
        times = []
        for i in range(repeats + 1):
            dist.barrier()
            start = time.perf_counter()
            metric.merge_ranks()
            if i:
                times.append(time.perf_counter() - start)
        dist.barrier()
        start = time.perf_counter()
        value = float(PreMemorizationAccuracy.compute(metric))
        results.append(
            {
                "examples": n,
                "merge_s": statistics.median(times),
                "compute_after_merge_s": time.perf_counter() - start,
                "value": value,
            }
        )
    if rank == 0:
        torch.save(results, out)
    dist.destroy_process_group()


def ddp(sizes: list[int], repeats: int, folder: Path) -> list[dict[str, Any]]:
    """Time the 2-process sync (gloo, CPU) for each size."""
    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = folder / "_metric_ddp.pt"
    mp.spawn(_ddp_worker, args=(2, port, sizes, repeats, str(out)), nprocs=2, join=True)
    results: list[dict[str, Any]] = torch.load(out)
    out.unlink()
    for row in results:
        row["merge_ns_per_example"] = row["merge_s"] / row["examples"] * 1e9
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark; print the tables and write the JSON."""
    args = parser(__doc__.splitlines()[0]).parse_args(argv)
    setup(args)
    repeats = args.repeats or (2 if args.quick else 5)
    sizes = [10**3, 10**4] if args.quick else [10**4, 10**5, 10**6, 10**7]
    local = [single_process(n, repeats) for n in sizes]
    args.output.mkdir(parents=True, exist_ok=True)
    synced = ddp(sizes, repeats, args.output)
    print("## One process\n")
    print(markdown_table(local))
    print("\n## DDP sync, 2 gloo processes (merge_ranks: all-gather + element-wise max)\n")
    print(markdown_table(synced, ["examples", "merge_s", "merge_ns_per_example", "compute_after_merge_s"]))
    payload = {"repeats": repeats, "single_process": local, "ddp_2_processes": synced}
    write_results(args.output, NAME, payload, args.quick)
    return payload


if __name__ == "__main__":
    main()
