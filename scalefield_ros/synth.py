"""Write synthetic sensor data: a KITTI-like folder and optionally a rosbag2.

    python -m scalefield_ros.synth --world street --frames 20 --seed 9000 --out DIR [--bag FILE]
    python -m scalefield_ros.synth --world indoor --frames 2 --seed 2000-2099 --out DIR --bag BAGS/x.mcap

The bag format follows the suffix of FILE: ``.mcap`` or ``.db3``. With a seed range every
scene is its own sequence: ``DIR/<world>_<seed>/`` and ``BAGS/<world>_<seed>.mcap`` (a
folder of bags that ``train --data bag:BAGS`` reads). Every output is checked before
anything is rendered.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tqdm import tqdm

from .data.synthetic import FAMILIES, SyntheticWorld, parse_seeds
from .data.writers import write_bag, write_kitti_folder
from .threads import add_threads_argument, set_threads


def render_sequence(world: str, seed: int, frames: int, period_ns: int = 100_000_000) -> list:
    w = SyntheticWorld(world, seed)
    start = 1_700_000_000_000_000_000
    return [w.frame(i, stamp_ns=start + i * period_ns) for i in tqdm(range(frames), desc=f"rendering {world} {seed}",
                                                                     leave=False)]


def plan_outputs(world: str, seeds: list[int], out: Path, bag: Path | None) -> list[tuple[int, Path, Path | None]]:
    """(seed, folder, bag file) per sequence; raises ValueError for outputs that exist or collide."""
    if bag is not None and bag.suffix.lower() not in (".mcap", ".db3"):
        raise ValueError(f"--bag must end in .mcap or .db3, got {bag.name!r}")
    plan = []
    for s in seeds:
        if len(seeds) == 1:
            plan.append((s, out, bag))
        else:
            plan.append((s, out / f"{world}_{s}", bag.parent / f"{bag.stem}_{world}_{s}{bag.suffix}" if bag else None))
    for _, folder, b in plan:
        if b is not None:
            bag_dir = b.with_suffix("")  # a rosbag2 is a folder named after the file
            if bag_dir.resolve() == folder.resolve():
                raise ValueError(f"the bag folder {bag_dir} would be the --out folder {folder}; "
                                 f"name the bag differently (e.g. {folder}_bag{b.suffix})")
            if bag_dir.exists():
                raise ValueError(f"{bag_dir} already exists; remove it or choose another --bag name")
    return plan


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--world", choices=FAMILIES, default="street")
    p.add_argument("--frames", type=int, default=10, help="frames per sequence")
    p.add_argument("--seed", default="9000", help="scene seed, or a range such as 2000-2099 (one sequence each)")
    p.add_argument("--rate", type=float, default=10.0, help="frames per second (stamps)")
    p.add_argument("--out", required=True, help="KITTI-like output folder")
    p.add_argument("--bag", help="also write a rosbag2; .mcap or .db3 by suffix")
    add_threads_argument(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    if a.frames < 1:
        raise SystemExit(f"--frames must be >= 1, got {a.frames}")
    try:
        plan = plan_outputs(a.world, parse_seeds(a.seed), Path(a.out), Path(a.bag) if a.bag else None)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    for seed, folder, bag in tqdm(plan, desc="sequences", disable=len(plan) == 1):
        frames = render_sequence(a.world, seed, a.frames, int(1e9 / a.rate))
        write_kitti_folder(folder, frames)
        if bag is not None:
            write_bag(bag, frames)
    print(f"wrote {len(plan)} sequence(s) of {a.frames} frames to {a.out}" + (f" and bags beside {a.bag}" if a.bag else ""))


if __name__ == "__main__":
    main()
