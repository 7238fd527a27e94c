"""Torch thread counts, set explicitly by every command and the node.

On a small shared CPU torch's default (one thread per core) makes the many small
operations of an alignment fight over cores: on a 2-core machine busy with another
process, a 10 ms fit took 0.5-1 s. ``threads = 0`` (the default everywhere) means
``max(1, min(4, cores // 2))``: one thread on 2 cores, up to 4 on large machines.
"""

from __future__ import annotations

import argparse
import os

import torch


def default_threads() -> int:
    """The thread count ``0`` stands for."""
    return max(1, min(4, (os.cpu_count() or 1) // 2))


def set_threads(n: int = 0) -> int:
    """Set torch's intra-op threads to ``n`` (0 = :func:`default_threads`); returns the count set."""
    if n < 0:
        raise ValueError(f"threads must be >= 0 (0 = automatic), got {n}")
    count = n or default_threads()
    torch.set_num_threads(count)
    return count


def add_threads_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=0,
                        help=f"torch CPU threads; 0 = automatic, max(1, min(4, cores // 2)) = {default_threads()} here")
