"""Scenarios run in each of 2 gloo processes by tests/test_metric_ddp.py (spawned, so importable)."""

import os

import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler

from lightning_premem import PreMemorizationAccuracy

THRESHOLD = 1.1


def observation(t, i):
    """Deterministic values of example i at round t, known to every rank and to the test."""
    acc = ((3 * t + 5 * i) % 6) / 5
    ppl = 1.0 + ((7 * t + 3 * i) % 5) / 10  # 1.0 .. 1.4: some memorized, some not
    return acc, ppl


def observe(metric, t, ids, step):
    ids = list(ids)
    values = [observation(t, i) for i in ids]
    metric.update(ids, [a for a, _ in values], [p for _, p in values], step=step)


def snapshot(metric):
    return {"per_example": metric.per_example(), "summary": metric.summary(), "compute": metric.compute()}


def scenarios(rank, world):
    out = {}
    # 1. disjoint shards over 3 rounds
    m = PreMemorizationAccuracy(10, THRESHOLD)
    for t in range(3):
        observe(m, t, range(rank, 10, world), step=t)
    out["disjoint"] = snapshot(m)

    # 2. DistributedSampler pads 5 examples to 6 by repeating one; the duplicate must not count twice
    m = PreMemorizationAccuracy(5, THRESHOLD)
    padded = []
    for t in range(3):
        sampler = DistributedSampler(range(5), num_replicas=world, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(t)
        ids = list(sampler)
        padded.append(ids)
        observe(m, t, ids, step=10 * t)
    out["padded"] = snapshot(m)
    out["padded_ids"] = padded

    # 3. example 0 seen on one rank at round 0 and on the other at round 1: the later one is current
    for first in (0, 1):
        for explicit in (True, False):
            for sync_between in (True, False):
                m = PreMemorizationAccuracy(4, THRESHOLD)
                m.update(
                    [0] if rank == first else [],
                    [1.0] if rank == first else [],
                    [1.5] if rank == first else [],
                    step=3 if explicit else None,
                )
                if sync_between:
                    m.compute()  # sync and unsync in between must not disturb the local state
                m.update(
                    [0] if rank != first else [],
                    [0.2] if rank != first else [],
                    [1.0] if rank != first else [],
                    step=7 if explicit else None,
                )
                out[f"later_first{first}_explicit{explicit}_sync{sync_between}"] = snapshot(m)

    # 4. rank 1 never observes anything (never even calls update)
    m = PreMemorizationAccuracy(6, THRESHOLD)
    if rank == 0:
        for t in range(2):
            observe(m, t, range(6), step=t)
    out["idle_rank"] = snapshot(m)

    # 5. merge_ranks: afterwards each rank's own state (what a checkpoint saves) holds everything,
    #    and merging again, or observing more, stays exact
    m = PreMemorizationAccuracy(10, THRESHOLD)
    observe(m, 0, range(rank, 10, world), step=0)
    out["local_state_before_merge"] = {k: v.clone() for k, v in m.state_dict().items()}
    m.merge_ranks()
    out["local_state_after_merge"] = {k: v.clone() for k, v in m.state_dict().items()}
    m.merge_ranks()
    observe(m, 1, range(rank, 10, world), step=1)
    out["merged_then_more"] = snapshot(m)
    return out


def run(rank, world, port, out_dir):
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        torch.save(scenarios(rank, world), os.path.join(out_dir, f"rank{rank}.pt"))
        dist.barrier()
    finally:
        dist.destroy_process_group()
