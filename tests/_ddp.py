"""Shared plumbing of the 2-process CPU DDP tests: spawning workers, and the environment Lightning reads."""

import os
import socket

import torch
import torch.multiprocessing as mp


def spawn(worker, world, *args):
    """Run ``worker(rank, world, port, *args)`` in ``world`` processes on a free loopback port."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(worker, args=(world, port, *args), nprocs=world, join=True)


def lightning_env(rank, world, port):
    """Set the variables that make Lightning's DDP strategy join an externally launched process group."""
    os.environ.update(
        {
            "MASTER_ADDR": "127.0.0.1",
            "MASTER_PORT": str(port),
            "WORLD_SIZE": str(world),
            "RANK": str(rank),
            "LOCAL_RANK": str(rank),
            "NODE_RANK": "0",
            "OMP_NUM_THREADS": "1",
        }
    )
    torch.set_num_threads(1)
