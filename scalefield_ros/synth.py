"""Write synthetic sensor data: a KITTI-like folder and optionally a rosbag2.

    python -m scalefield_ros.synth --world street --frames 20 --seed 9000 --out DIR [--bag FILE]

The bag format follows the suffix of FILE: ``.mcap`` or ``.db3``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tqdm import tqdm

from .data.synthetic import FAMILIES, SyntheticWorld
from .data.writers import write_bag, write_kitti_folder
from .threads import add_threads_argument, set_threads


def render_sequence(world: str, seed: int, frames: int, period_ns: int = 100_000_000) -> list:
    w = SyntheticWorld(world, seed)
    start = 1_700_000_000_000_000_000
    return [w.frame(i, stamp_ns=start + i * period_ns) for i in tqdm(range(frames), desc=f"rendering {world}")]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", choices=FAMILIES, default="street")
    p.add_argument("--frames", type=int, default=10)
    p.add_argument("--seed", type=int, default=9000)
    p.add_argument("--rate", type=float, default=10.0, help="frames per second (stamps)")
    p.add_argument("--out", required=True, help="KITTI-like output folder")
    p.add_argument("--bag", help="also write a rosbag2; .mcap or .db3 by suffix")
    add_threads_argument(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    if a.frames < 1:
        raise SystemExit(f"--frames must be >= 1, got {a.frames}")
    frames = render_sequence(a.world, a.seed, a.frames, int(1e9 / a.rate))
    write_kitti_folder(Path(a.out), frames)
    print(f"wrote {a.frames} frames to {a.out}")
    if a.bag:
        folder = write_bag(Path(a.bag), frames)
        print(f"wrote rosbag2 {folder}")


if __name__ == "__main__":
    main()
