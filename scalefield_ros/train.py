"""Train the basis map generator on a frozen MDE's cached outputs (paper eqs 24-28).

    python -m scalefield_ros.train --config config/train_k8_low.yaml --out runs/k8_low
    torchrun --nproc_per_node 2 -m scalefield_ros.train --config ... --out ...   # data parallel

Every image gets fresh anchors of the configured regime each epoch (validation anchors
are fixed); the weights are solved in closed form inside the graph (eq 15), so the
generator learns maps that work with whatever anchors arrive. The checkpoint with the
lowest validation loss is kept as ``OUT/best.safetensors`` + ``OUT/best.json``;
``OUT/last*`` lets ``--resume`` continue; ``--init CKPT --regime medium --epochs 5`` is
the paper's fine-tune to another anchor regime. ``OUT/log.csv`` and ``OUT/curves.png``
record the run.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import sys
import time
import warnings
import zlib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import yaml

from .core.anchors import choose_anchors, grid_candidates, regime_count
from .core.generator import BasisMapGenerator, GeneratorConfig, load_generator, save_generator
from .core.losses import LossWeights, total_loss
from .core.metrics import depth_metrics
from .core.rings import random_ring_pattern
from .core.scale_field import ScaleField, log_targets, sample_maps
from .core.solver import RidgeSettings, independent_anchor_count, policy_settings, solve_weights
from .data.synthetic import HELD_OUT_SEED, parse_seeds
from .threads import add_threads_argument, set_threads


@dataclass
class TrainConfig:
    """Everything a run needs; YAML keys have the same names."""

    data: str = "synthetic:both"
    seeds: str = "2000-2399"  # synthetic only; the last val_fraction of them is the validation split
    frames: list = field(default_factory=lambda: [0])  # synthetic only: frame indices per seed
    every: int = 1  # file datasets: every N-th frame
    limit: int = 0  # file datasets: at most N frames (0 = all)
    val_fraction: float = 0.1
    mde: str = "embedded"
    cache_dir: str | None = None
    num_basis: int = 8
    width: int = 32
    work_pixels: int = 8192  # generator working grid (pixels), F resized to it; 0 = F's own grid
    use_features: bool = True  # False: the F(x) = 0 ablation
    universal: bool = False  # no network features, depth distorted as other networks would give it (any MDE)
    regime: str = "low"
    ring_fraction: float = 0.0  # share of images whose anchors are a random LiDAR ring pattern
    ring_counts: list = field(default_factory=lambda: [4, 128])  # ring count range (log-uniform)
    ring_dropout: float = 0.3  # up to this share of returns lost per pattern
    lidar_holdout: float = 0.2  # data without ground truth: share of LiDAR rings held out as targets
    lidar_only: bool = False  # supervise with held-out LiDAR rings even where dense ground truth exists
    ridge: float | str = 1e-3  # fixed lambda, or "gcv" (chosen per image, see core/solver.py)
    lambda_anchor: float = 0.1
    lambda_decor: float = 1e-4
    lambda_gate: float = 1e-4
    epochs: int = 25
    batch: int = 8
    lr: float = 1e-3
    weight_decay: float = 1e-4
    seed: int = 0
    device: str = "auto"
    workers: int = 0  # processes rendering/caching samples before training; 0 = in process

    @classmethod
    def load(cls, path: str | Path | None, overrides: dict) -> "TrainConfig":
        raw = {}
        if path:
            raw = yaml.safe_load(Path(path).read_text()) or {}
            if not isinstance(raw, dict):
                raise ValueError(f"training config {path} must be a YAML mapping, got {type(raw).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(raw) - known
        if unknown:
            raise ValueError(f"unknown keys in {path}: {sorted(unknown)}; valid keys: {sorted(known)}")
        raw.update({k: v for k, v in overrides.items() if v is not None})
        cfg = cls(**raw)
        if not cfg.data.startswith("synthetic"):
            ignored = [k for k in ("seeds", "frames") if k in raw and raw[k] != getattr(cls(), k)]
            if ignored:  # one line, no warnings-module source echo: the user acts on it, nothing broke
                print(f"note: {', '.join(ignored)} only apply to synthetic data and are ignored for {cfg.data!r}; "
                      "use every / limit (e.g. `every: 2`, `limit: 500`) to subsample a file dataset",
                      file=sys.stderr)
        return cfg


class _Item:
    """One cached training image, as tensors.

    ``gt``/``valid`` are where the dense loss (eq 24) is taken; anchors are read from
    ``anchor_map`` at ``cand``. With dense ground truth both are the ground truth. Without
    it (``bag:`` data), :meth:`use_lidar_targets` splits the LiDAR into anchors and
    held-out targets.
    """

    def __init__(self, key: str, depth: torch.Tensor, feats: torch.Tensor, gt: torch.Tensor,
                 valid: torch.Tensor) -> None:
        self.key = key
        self.mde = depth
        self.feats = feats
        self.gt = gt
        self.valid = valid.bool()
        self.anchor_map = gt.numpy()
        self.cand = grid_candidates(self.valid.numpy())
        self.lidar: tuple[np.ndarray, np.ndarray] | None = None  # in-view (uvz, ring) for ring patterns

    def use_lidar_targets(self, seed: int, fraction: float = 0.2) -> None:
        """LiDAR-only supervision: split the projected points, seeded and disjoint, into anchors
        and held-out targets; the dense loss then sees only the held-out points."""
        uvz, ring, gt, valid = lidar_split(self.lidar[0], self.lidar[1], tuple(self.mde.shape), seed, fraction)
        self.gt, self.valid = torch.from_numpy(gt), torch.from_numpy(valid)
        self.lidar = (uvz, ring)
        self.cand = uvz[:, :2].astype(np.int64)
        self.anchor_map = np.zeros(self.mde.shape, np.float32)
        self.anchor_map[self.cand[:, 1], self.cand[:, 0]] = uvz[:, 2]


def lidar_split(uvz: np.ndarray, ring: np.ndarray, size: tuple[int, int], seed: int, fraction: float = 0.2):
    """Occlusion-filtered LiDAR points split into anchors and held-out targets.

    With five or more rings in view whole rings are held out (a share ``fraction`` of
    them, at least one), so that the targets test the field between scan lines, where a
    robot needs it; otherwise a share of the points. Returns the anchor ``uvz`` and ring
    ids, and the target depth map and mask.
    """
    from .core.anchors import occlusion_filter

    keep = occlusion_filter(torch.from_numpy(uvz[:, :2]), torch.from_numpy(uvz[:, 2]), size).numpy()
    uvz, ring = uvz[keep], np.asarray(ring)[keep]
    rng = np.random.default_rng(seed)
    rings = np.unique(ring)
    if len(rings) >= 5:
        held_rings = rng.choice(rings, max(1, int(round(fraction * len(rings)))), replace=False)
        held = np.isin(ring, held_rings)
    else:
        held = rng.random(len(ring)) < fraction
    gt = np.zeros(size, np.float32)
    valid = np.zeros(size, bool)
    t = uvz[held]
    gt[t[:, 1].astype(np.int64), t[:, 0].astype(np.int64)] = t[:, 2]
    valid[t[:, 1].astype(np.int64), t[:, 0].astype(np.int64)] = True
    return uvz[~held], ring[~held], gt, valid


_WORKER_STATE: dict = {}


def _dataset(cfg: TrainConfig, lidar: bool = False):
    """The configured dataset: synthetic by seeds and frames, file datasets by every / limit."""
    from .data.datasets import open_dataset, subset

    ds = open_dataset(cfg.data, ",".join(map(str, parse_seeds(cfg.seeds))), tuple(cfg.frames), lidar=lidar)
    return ds if cfg.data.startswith("synthetic") else subset(ds, cfg.every, cfg.limit)


def _needs_lidar(cfg: TrainConfig) -> bool:
    """Ring patterns need the scan; so does LiDAR-only (bag, or ``lidar_only``) supervision."""
    return cfg.ring_fraction > 0 or cfg.data.startswith("bag") or cfg.lidar_only


def _open(cfg: TrainConfig):
    """(dataset, feature cache) of a config, opened once per process."""
    from .data.cache import FeatureCache
    from .mde.backends import load_backend

    # keyed by what determines the content, so one process can train on several datasets
    key = (cfg.data, cfg.seeds, tuple(cfg.frames), cfg.every, cfg.limit, cfg.mde, cfg.cache_dir,
           os.environ.get("SCALEFIELD_CACHE"), _needs_lidar(cfg))
    if key not in _WORKER_STATE:
        _WORKER_STATE[key] = (_dataset(cfg, lidar=_needs_lidar(cfg)),
                              FeatureCache(load_backend(cfg.mde, "cpu"), cfg.cache_dir))
    return _WORKER_STATE[key]


def _ensure_cached(args: tuple[TrainConfig, int]) -> str:
    """Compute and store MDE outputs + ground truth of one sample; return its cache key."""
    cfg, idx = args
    torch.set_num_threads(1)
    ds, cache = _open(cfg)
    key = ds.key(idx) if hasattr(ds, "key") else None
    t = cache.load(key) if key else None
    lidar = _needs_lidar(cfg)
    if t is None or "gt" not in t or (lidar and "lidar_uvz" not in t):
        sample = ds[idx]
        key = sample.key
        cache.get(sample, keep_ground_truth=True, keep_lidar=lidar)
    return key


def _load_item(cfg: TrainConfig, key: str) -> _Item:
    _, cache = _open(cfg)
    t = cache.load(key)
    it = _Item(key, t["depth"], t["features"], t["gt"], t["valid"])
    if "lidar_uvz" in t:
        it.lidar = (t["lidar_uvz"].numpy(), t["lidar_ring"].numpy())
        if cfg.lidar_only or not bool(it.valid.any()):  # no ground truth (bags): LiDAR-only supervision
            it.use_lidar_targets(zlib.crc32(key.encode()), cfg.lidar_holdout)
    elif cfg.lidar_only:
        raise ValueError(f"lidar_only: sample {key!r} has no LiDAR scan; give a dataset with one (bag:, folder: with "
                         "lidar/, kitti-object:, synthetic:)")
    return it


def load_items(cfg: TrainConfig, rank: int = 0, world: int = 1) -> tuple[list[_Item], list[_Item]]:
    """Cached items of the train and validation splits (seeds split by position)."""
    seeds = parse_seeds(cfg.seeds)
    if cfg.data.startswith("synthetic") and any(s >= HELD_OUT_SEED for s in seeds):
        raise ValueError(f"training seeds must be below {HELD_OUT_SEED} (held out for evaluation); got {cfg.seeds}")
    ds = _dataset(cfg)
    idx = list(range(len(ds)))
    if cfg.data.startswith("synthetic"):  # split by scene, so no scene is in both splits
        n_val_seeds = max(1, int(round(len(seeds) * cfg.val_fraction)))
        val_seeds = set(seeds[-n_val_seeds:])
        is_val = [ds.items[i][1] in val_seeds for i in idx]
    else:  # file datasets: the last val_fraction of the (sorted) frames
        n_val = max(1, int(round(len(idx) * cfg.val_fraction)))
        is_val = [i >= len(idx) - n_val for i in idx]
    from tqdm import tqdm

    jobs = [(cfg, i) for i in idx]
    if cfg.workers > 0:  # workers only fill the cache; tensors are read back here
        from concurrent.futures import ProcessPoolExecutor

        with ProcessPoolExecutor(cfg.workers) as ex:
            keys = list(ex.map(_ensure_cached, jobs, chunksize=4))
    else:
        keys = [_ensure_cached(j) for j in tqdm(jobs, desc="caching MDE outputs", disable=rank != 0)]
    items = [_load_item(cfg, k) for k in keys]
    if cfg.universal:  # the universal generator never reads features: do not hold them in memory
        for it in items:
            it.feats = torch.zeros(0, 1, 1)
    train_items = [it for it, v in zip(items, is_val) if not v]
    val_items = [it for it, v in zip(items, is_val) if v]
    return train_items, val_items


def _batches(items: list[_Item], batch: int, rng: np.random.Generator) -> list[list[int]]:
    """Index batches of same-size images (one family each), shuffled."""
    groups: dict[tuple, list[int]] = {}
    for i, it in enumerate(items):
        groups.setdefault(tuple(it.mde.shape), []).append(i)
    out = []
    for idx in groups.values():
        idx = list(rng.permutation(idx))
        out += [idx[j : j + batch] for j in range(0, len(idx), batch)]
    order = rng.permutation(len(out))
    return [out[i] for i in order]


def _anchor_batch(items: list[_Item], cfg: TrainConfig, rng: np.random.Generator, device) -> tuple[torch.Tensor, ...]:
    """Anchors per image: the grid regime, or (share ``ring_fraction``) a random LiDAR ring pattern."""
    uvs, zs = [], []
    for it in items:
        if it.lidar is not None and rng.random() < cfg.ring_fraction:
            uv, z = random_ring_pattern(it.lidar[0], it.lidar[1], tuple(it.mde.shape), rng,
                                        tuple(cfg.ring_counts), cfg.ring_dropout)
        else:
            uv, z = choose_anchors(it.cand, it.anchor_map, regime_count(cfg.regime, rng), rng)
        uvs.append(uv)
        zs.append(z)
    n = max(1, max(len(z) for z in zs))
    uv_t = torch.zeros(len(items), n, 2)
    z_t = torch.ones(len(items), n)
    m_t = torch.zeros(len(items), n, dtype=torch.bool)
    for i, (uv, z) in enumerate(zip(uvs, zs)):
        uv_t[i, : len(z)] = torch.from_numpy(uv)
        z_t[i, : len(z)] = torch.from_numpy(z)
        m_t[i, : len(z)] = True
    return uv_t.to(device), z_t.to(device), m_t.to(device)


def ridge_settings(ridge: float | str, gen) -> RidgeSettings:
    """The solver settings inference uses for this lambda policy (``core.solver.policy_settings``)."""
    g = gen.module if hasattr(gen, "module") else gen
    return policy_settings(ridge, g.config.ungated_global)


def step_loss(gen, batch: list[_Item], cfg: TrainConfig, rng, device) -> tuple[dict, torch.Tensor]:
    """Forward one batch: maps -> ridge weights from anchors -> dense depth -> eq 28."""
    mde = torch.stack([it.mde for it in batch]).to(device)
    g = gen.module if hasattr(gen, "module") else gen
    feats = torch.stack([it.feats for it in batch]).to(device).float() if g.config.feature_channels else None
    if cfg.universal:  # each image as another network would see it (core/mde_variants.py)
        from .core import mde_variants

        mde = mde_variants.apply(mde, [mde_variants.draw(rng) for _ in batch])
    gt = torch.stack([it.gt for it in batch]).to(device)
    valid = torch.stack([it.valid for it in batch]).to(device)
    uv, z, am = _anchor_batch(batch, cfg, rng, device)
    maps = gen(mde, feats)
    design = sample_maps(maps.E, uv, tuple(mde.shape[-2:]))
    ui = uv[..., 0].round().long()
    vi = uv[..., 1].round().long()
    w = mde.shape[-1]
    mde_at = torch.gather(mde.view(len(batch), -1), 1, vi * w + ui)
    y = log_targets(z, mde_at, am)
    wts = solve_weights(design, y, am, ridge_settings(cfg.ridge, gen),
                        n_indep=independent_anchor_count(uv, am, tuple(mde.shape[-2:]))).weights
    pred = ScaleField.from_basis(maps.E, wts, tuple(mde.shape[-2:])).apply(mde)
    # the dense loss never sees the anchors' own pixels: it measures the field away from them
    hits = torch.zeros(valid.shape[0], valid[0].numel(), device=valid.device)
    hits.scatter_add_(1, torch.where(am, vi * w + ui, torch.zeros_like(ui)), am.float())
    valid = valid & (hits == 0).view_as(valid)
    lw = LossWeights(cfg.lambda_anchor, cfg.lambda_decor, cfg.lambda_gate)
    terms = total_loss(maps, pred, gt, valid, design, wts, y, am, lw)
    return terms, pred.detach()


def without_features(gen: BasisMapGenerator) -> BasisMapGenerator:
    """The same generator with no feature inputs (C = 0): the first convolution keeps only its
    weights on [log D, grad log D, x]. Starts the universal generator from an F = 0 ablation
    (whose feature weights only ever saw zeros) or from any checkpoint."""
    if gen.config.feature_channels == 0:
        return gen
    c = gen.config.feature_channels
    cfg = GeneratorConfig(**{**asdict(gen.config), "feature_channels": 0, "use_features": True})
    new = BasisMapGenerator(cfg)
    state = dict(gen.state_dict())
    state["enc0.0.weight"] = state["enc0.0.weight"][:, c:].clone()
    new.load_state_dict(state)
    return new


def _save_state(path: Path, opt: torch.optim.Optimizer, meta: dict) -> None:
    from safetensors.torch import save_file

    tensors = {}
    for pi, st in opt.state_dict()["state"].items():
        for k, v in st.items():
            if torch.is_tensor(v):
                tensors[f"{pi}.{k}"] = v.detach().cpu().contiguous().reshape(v.shape if v.dim() else (1,))
    save_file(tensors, str(path) + ".safetensors")
    Path(str(path) + ".json").write_text(json.dumps(meta, indent=2))


def _load_state(path: Path, opt: torch.optim.Optimizer) -> dict:
    from safetensors.torch import load_file

    t = load_file(str(path) + ".safetensors")
    sd = opt.state_dict()
    state = {}
    for key, v in t.items():
        pi, k = key.split(".", 1)
        state.setdefault(int(pi), {})[k] = v.reshape(()) if k == "step" else v
    sd["state"] = state
    opt.load_state_dict(sd)
    return json.loads(Path(str(path) + ".json").read_text())


def _plot(log_path: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with log_path.open() as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return
    ep = [int(r["epoch"]) for r in rows]
    fig, ax = plt.subplots(1, 2, figsize=(10, 3.5))
    ax[0].plot(ep, [float(r["train_loss"]) for r in rows], label="train")
    ax[0].plot(ep, [float(r["val_loss"]) for r in rows], label="val")
    ax[0].set_xlabel("epoch")
    ax[0].set_ylabel("loss (eq 28)")
    ax[0].legend()
    ax[1].plot(ep, [float(r["val_abs_rel"]) for r in rows], label="val AbsRel")
    ax[1].set_xlabel("epoch")
    ax[1].legend()
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def run(cfg: TrainConfig, out: Path, resume: bool = False, init: str | None = None,
        allow_mde_mismatch: bool = False) -> Path:
    """Train; return the path of the best checkpoint (without suffix)."""
    from tqdm import tqdm

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    from .mde.backends import resolve_device

    device = resolve_device(cfg.device)
    if world > 1:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group(backend)
    torch.manual_seed(cfg.seed)
    out.mkdir(parents=True, exist_ok=True)
    train_items, val_items = load_items(cfg, rank, world)
    if not train_items or not val_items:
        raise ValueError(f"need training and validation images; got {len(train_items)} and {len(val_items)} "
                         f"from seeds {cfg.seeds} (val_fraction {cfg.val_fraction})")
    feat_c = 0 if cfg.universal else train_items[0].feats.shape[0]
    backend = _open(cfg)[1].backend
    if init:
        from .checkpoints import check_generator_mde, universal_checkpoint

        gen = load_generator(universal_checkpoint() if init == "universal" else init, "cpu")
        if cfg.universal:
            gen = without_features(gen)
        else:
            check_generator_mde(gen.config, backend, allow_mde_mismatch, what=f"--init generator {init}")
        gen.config.use_features = cfg.use_features
    else:
        gen = BasisMapGenerator(GeneratorConfig(num_basis=cfg.num_basis, feature_channels=feat_c, width=cfg.width,
                                                mde=cfg.mde, use_features=cfg.use_features,
                                                work_pixels=cfg.work_pixels))
    if cfg.universal:
        from .checkpoints import UNIVERSAL_MDE_NAME

        gen.config.mde_name = UNIVERSAL_MDE_NAME
        gen.config.mde = f"universal (variants of {cfg.mde})"
        gen.config.mde_feature_size = None
    else:
        gen.config.mde_name = backend.name
        gen.config.mde_feature_size = list(train_items[0].feats.shape[-2:]) if gen.config.feature_channels else None
    gen = gen.to(device)
    model = gen
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(gen, device_ids=[device.index] if device.type == "cuda" else None)
    opt = torch.optim.AdamW(gen.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    start, best = 0, math.inf
    if resume and Path(str(out / "last") + ".safetensors").is_file():
        gen.load_state_dict(load_generator(out / "last", "cpu").state_dict())
        meta = _load_state(out / "last_optim", opt)
        start, best = meta["epoch"], meta["best_val"]
        if rank == 0:
            print(f"resuming after epoch {start} (best val {best:.4f})")
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(cfg.epochs, 1), last_epoch=-1)
    with warnings.catch_warnings():  # fast-forward the schedule when resuming
        warnings.simplefilter("ignore")
        for _ in range(start):
            sched.step()
    log_path = out / "log.csv"
    if rank == 0 and (start == 0 or not log_path.exists()):
        log_path.write_text("epoch,train_loss,val_loss,val_abs_rel,val_delta1,lr,seconds\n")
    extra = {"train_config": asdict(cfg)}
    for epoch in range(start, cfg.epochs):
        t0 = time.time()
        rng = np.random.default_rng([cfg.seed, epoch, rank])
        batches = _batches(train_items, cfg.batch, np.random.default_rng([cfg.seed, epoch]))
        batches = batches[rank::world]
        if world > 1:  # equal step counts on every rank, or DDP waits forever
            n = len(_batches(train_items, cfg.batch, np.random.default_rng([cfg.seed, epoch]))) // world
            batches = batches[:n]
        model.train()
        run_loss, n_seen = 0.0, 0
        bar = tqdm(batches, desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=rank != 0, leave=False)
        for bidx in bar:
            terms, _ = step_loss(model, [train_items[i] for i in bidx], cfg, rng, device)
            opt.zero_grad(set_to_none=True)
            terms["loss"].backward()
            torch.nn.utils.clip_grad_norm_(gen.parameters(), 1.0)
            opt.step()
            run_loss += float(terms["loss"].detach())
            n_seen += 1
            bar.set_postfix(loss=f"{run_loss / n_seen:.4f}")
        sched.step()
        train_loss = run_loss / max(n_seen, 1)
        if world > 1:
            t = torch.tensor([train_loss], device=device)
            dist.all_reduce(t)
            train_loss = float(t) / world
        if rank == 0:
            val = evaluate_items(gen, val_items, cfg, device)
            row = [epoch + 1, train_loss, val["loss"], val["abs_rel"], val["delta1"], sched.get_last_lr()[0],
                   time.time() - t0]
            with log_path.open("a") as fh:
                fh.write(",".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in row) + "\n")
            print(f"epoch {epoch + 1}: train {train_loss:.4f} val {val['loss']:.4f} "
                  f"AbsRel {val['abs_rel']:.4f} delta1 {val['delta1']:.3f} ({time.time() - t0:.0f}s)", flush=True)
            if val["loss"] < best:
                best = val["loss"]
                save_generator(gen, out / "best", {**extra, "epoch": epoch + 1, "val": val})
            save_generator(gen, out / "last", {**extra, "epoch": epoch + 1})
            _save_state(out / "last_optim", opt, {"epoch": epoch + 1, "best_val": best})
        if world > 1:
            dist.barrier()
    if rank == 0:
        _plot(log_path, out / "curves.png")
    if world > 1:
        dist.destroy_process_group()
    return out / "best"


@torch.no_grad()
def evaluate_items(gen, items: list[_Item], cfg: TrainConfig, device) -> dict[str, float]:
    """Validation loss and metrics with anchors fixed per image (seed = position)."""
    gen.eval()
    losses, rel, d1 = [], [], []
    for i in range(0, len(items), cfg.batch):
        batch = items[i : i + cfg.batch]
        shapes = {tuple(it.mde.shape) for it in batch}
        for shape in shapes:
            sub = [it for it in batch if tuple(it.mde.shape) == shape]
            terms, pred = step_loss(gen, sub, cfg, np.random.default_rng(i), device)
            losses.append(float(terms["loss"]) * len(sub))
            for it, p in zip(sub, pred.cpu()):
                m = depth_metrics(p, it.gt, it.valid)
                rel.append(m["abs_rel"])
                d1.append(m["delta1"])
    return {"loss": sum(losses) / len(items), "abs_rel": float(np.nanmean(rel)), "delta1": float(np.nanmean(d1))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", help="YAML file with TrainConfig keys")
    p.add_argument("--out", required=True, help="output folder (checkpoints, log.csv, curves.png)")
    p.add_argument("--resume", action="store_true", help="continue from OUT/last")
    p.add_argument("--init", help="start from this checkpoint (fine-tuning, e.g. to another regime)")
    p.add_argument("--allow-mde-mismatch", action="store_true",
                   help="fine-tune (--init) a generator trained for another MDE (refused by default)")
    for f in fields(TrainConfig):
        if f.name == "frames":
            p.add_argument("--frames", type=lambda s: [int(x) for x in s.split(",")], help="frame indices per seed")
            continue
        if f.name == "ring_counts":
            p.add_argument("--ring-counts", dest="ring_counts", type=lambda s: [int(x) for x in s.split(",")],
                           help="ring count range lo,hi")
            continue
        typ = {"int": int, "float": float, "bool": lambda s: s.lower() in ("1", "true", "yes"),
               "float | str": lambda s: s if s == "gcv" else float(s)}.get(
            f.type if isinstance(f.type, str) else getattr(f.type, "__name__", "str"), str)
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=typ, help=f"override {f.name}")
    add_threads_argument(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    overrides = {f.name: getattr(a, f.name) for f in fields(TrainConfig)}
    cfg = TrainConfig.load(a.config, overrides)
    best = run(cfg, Path(a.out), a.resume, a.init, a.allow_mde_mismatch)
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"best checkpoint: {best}.safetensors")


if __name__ == "__main__":
    main()
