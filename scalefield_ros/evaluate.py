"""Evaluate every aligner under the paper's protocol (section 4.1, Tables 1-3).

    python -m scalefield_ros.evaluate --data synthetic:street --seeds 9000-9019 \\
        --methods basis,global,lwlr --regimes low,medium --out DIR

Regimes: ``low`` (10-15 anchors), ``medium`` (100-120), ``high`` (500-530) drawn from the
ground truth on a fixed grid, and the drop-anchor test ``drop9`` .. ``drop1`` (``drop``
selects all five). Every method sees the same anchors (seeded per image and regime).
``basis`` uses the shipped generator for the regime (K=8 for low and drop, K=30 for
medium/high) unless ``--checkpoint`` is given; ``basis-f0`` is the F(x)=0 ablation
(``--ablation-checkpoint``, default the shipped K=30 F=0 model). ``region`` needs labels.

Writes ``DIR/results.json`` (``{"methods": {METHOD: {REGIME: {"abs_rel", "delta1", "rmse",
"images"}}}, "spectral": {...}}``), ``DIR/tables.md``, ``DIR/metrics_vs_anchors.png`` and
``DIR/sample_XX.png`` figures like the paper's Fig. 2.
"""

from __future__ import annotations

import argparse
import json
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .checkpoints import MODELS_DIR, default_checkpoint
from .core import make
from .core.anchors import DROP_COUNTS, REGIMES, drop_anchor_sets, grid_candidates, choose_anchors, edge_filter, occlusion_filter, project_points
from .core.rings import RING_COUNTS, ring_regime, thin_to_rings
from .core.generator import load_generator
from .core.metrics import depth_metrics, without_anchor_pixels
from .core.scale_field import spectral_stats
from .data.datasets import DATA_SPECS, describe, subset
from .mde.backends import BACKEND_SPECS
from .threads import add_threads_argument, set_threads

METHODS = ["basis", "basis-res", "global", "global-scale", "piecewise", "lwlr", "grid", "grid-smooth", "region", "basis-f0",
           "selfval"]
DROP_REGIMES = [f"drop{n}" for n in DROP_COUNTS]
RING_REGIMES = [f"rings{n}" for n in RING_COUNTS]
METRIC_KEYS = ("abs_rel", "delta1", "rmse", "sq_rel", "delta2", "delta3", "coverage")
#: Uncertainty figures (core/uncertainty.py), with a calibration; policy_* with the NaN policy.
UNCERTAINTY_KEYS = ("within_1sigma", "within_2sigma", "sharpness", "ause", "policy_abs_rel", "policy_coverage",
                    "policy_removed_outside")


def parse_regimes(text: str) -> list[str]:
    out = []
    for r in text.split(","):
        r = r.strip()
        if r == "drop":
            out += DROP_REGIMES
        elif r == "rings":
            out += RING_REGIMES
        elif r in REGIMES or r in DROP_REGIMES or (ring_regime(r) or 0) > 0:
            out.append(r)
        elif r:
            raise ValueError(f"unknown regime {r!r}; use low, medium, high, drop, drop9..drop1, rings or ringsN "
                             "(e.g. rings16)")
    return out


def ring_anchors(sample, n_rings: int, index: int, occlusion_kernel: int = 5,
                 corrupt: tuple[str, float] | None = None, held_out: bool = False, with_rings: bool = False):
    """LiDAR anchors as the node gets them from a sensor with ``n_rings`` rings in view.

    The sample's scan is thinned to ``n_rings`` evenly spaced rings of those in the image
    (a per-image seeded offset says which ring starts the pattern), then projected with
    the node's projection and occlusion filter. Depths are the LiDAR's own (noisy) ranges;
    metrics use the dataset's ground truth. ``corrupt`` (see :func:`corrupt_anchors`)
    corrupts the sensor's returns *before* the occlusion filter, where a real LiDAR's
    outliers and mixed pixels arrive. Returns ``(uv, z, rings in view)``, and with
    ``held_out`` also the depth image of the other rings' points (NaN elsewhere): the
    ground truth when the LiDAR is all the truth there is; with ``with_rings`` last the
    ring id of every anchor.
    """
    if sample.points is None or sample.rings is None or sample.T_cam_lidar is None:
        raise ValueError(f"ring regimes need a LiDAR scan with ring ids; sample {sample.key} has none "
                         "(synthetic data renders it; KITTI raw/object read velodyne .bin files)")
    offset = float(np.random.default_rng([index, n_rings, 17]).random())
    pts, used, keep = thin_to_rings(sample.points, sample.rings, sample.T_cam_lidar, sample.K, sample.depth.shape,
                                    n_rings, offset, return_mask=True)
    uv, z, idx = project_points(torch.from_numpy(np.ascontiguousarray(pts[:, :3], np.float32)),
                                torch.as_tensor(sample.T_cam_lidar), torch.as_tensor(sample.K), sample.depth.shape,
                                occlusion_kernel=1 if corrupt else occlusion_kernel, return_index=True)
    anchor_rings = np.asarray(sample.rings)[keep][idx.numpy()]
    if corrupt:
        z = torch.from_numpy(corrupt_anchors(uv.numpy(), z.numpy(), sample.depth, corrupt[0], corrupt[1], index))
        keep_c = occlusion_filter(uv, z, sample.depth.shape, occlusion_kernel)
        uv, z, anchor_rings = uv[keep_c], z[keep_c], anchor_rings[keep_c.numpy()]
    tail = (anchor_rings,) if with_rings else ()
    if not held_out:
        return (uv.numpy(), z.numpy(), used) + tail
    rest = np.asarray(sample.points)[~keep]
    huv, hz = project_points(torch.from_numpy(np.ascontiguousarray(rest[:, :3], np.float32)),
                             torch.as_tensor(sample.T_cam_lidar), torch.as_tensor(sample.K), sample.depth.shape,
                             occlusion_kernel=occlusion_kernel)
    gt = np.full(sample.depth.shape, np.nan, np.float32)
    gt[huv[:, 1].long().numpy(), huv[:, 0].long().numpy()] = hz.numpy()
    return (uv.numpy(), z.numpy(), used, gt) + tail


def regime_anchors(sample, regime: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's anchors for one image and regime (deterministic per image)."""
    n_rings = ring_regime(regime)
    if n_rings:
        return ring_anchors(sample, n_rings, index)[:2]
    gt = np.nan_to_num(sample.depth, nan=0.0)
    cand = grid_candidates(sample.valid)
    if regime.startswith("drop"):
        rng = np.random.default_rng([index, 9])
        uv, z = choose_anchors(cand, gt, 9, rng)
        sets = drop_anchor_sets(uv)
        keep = sets.get(int(regime[4:]), np.arange(0))
        return uv[keep], z[keep]
    rng = np.random.default_rng([index, zlib.crc32(regime.encode())])
    lo, hi = REGIMES[regime]
    return choose_anchors(cand, gt, int(rng.integers(lo, hi + 1)), rng)


@dataclass
class Case:
    """One image under one regime: the anchors a method fits and what scores it."""

    uv: np.ndarray
    z: np.ndarray
    gt: torch.Tensor  # (H, W) metres, 0 where unknown
    mask: torch.Tensor  # (H, W) scored pixels: valid ground truth, never an anchor's pixel
    rings: int | None = None  # rings in view (ring regimes)
    held_out_rings: bool = False  # scored on the rings not given as anchors (LiDAR ground truth)
    anchor_rings: np.ndarray | None = None  # (N,) ring id of every anchor (ring regimes)


def protocol_case(sample, regime: str, index: int, corrupt: tuple[str, float] | None = None) -> Case:
    """Anchors and scoring of one image and regime, as every tool scores them.

    An anchor's pixel is never scored. With LiDAR ground truth (``sample.gt_kind ==
    "lidar"``) a ring regime scores on the whole rings it held out, projected and
    occlusion-filtered like the anchors; grid regimes score the truth's other pixels."""
    n_rings = ring_regime(regime)
    lidar_gt = getattr(sample, "gt_kind", "dense") == "lidar"
    gt_np, rings, anchor_rings = sample.depth, None, None
    if n_rings:
        out = ring_anchors(sample, n_rings, index, corrupt=corrupt, held_out=lidar_gt, with_rings=True)
        uv, z, rings, anchor_rings = out[0], out[1], out[2], out[-1]
        if lidar_gt:
            gt_np = out[3]
    else:
        uv, z = regime_anchors(sample, regime, index)
        if corrupt:
            z = corrupt_anchors(uv, z, sample.depth, corrupt[0], corrupt[1], index)
    gt = torch.from_numpy(np.nan_to_num(gt_np, nan=0.0))
    valid = torch.from_numpy(sample.valid)
    if lidar_gt and n_rings:
        valid = valid & (gt > 0)
    return Case(uv, z, gt, without_anchor_pixels(valid, uv), rings, bool(lidar_gt and n_rings), anchor_rings)


CORRUPTIONS = ("random", "bleed")


def corrupt_anchors(uv: np.ndarray, z: np.ndarray, gt: np.ndarray, kind: str, fraction: float,
                    seed: int) -> np.ndarray:
    """Anchor depths with a seeded ``fraction`` of them corrupted, as real LiDAR anchors are.

    ``random``: a depth log-uniform between the image's nearest and farthest anchor
    (reflections, multipath, moving objects). ``bleed``: edge bleeding, the farthest
    ground-truth depth within 3 px taken at anchors that sit on a foreground edge (mixed
    pixels, small extrinsic or sync errors); anchors away from edges are preferred last.
    """
    z = z.copy()
    n = int(round(fraction * len(z)))
    if n == 0 or len(z) == 0:
        return z
    rng = np.random.default_rng([seed, 23])
    if kind == "random":
        idx = rng.choice(len(z), n, replace=False)
        lo, hi = np.log(max(z.min(), 0.1)), np.log(z.max())
        z[idx] = np.exp(rng.uniform(lo, hi, n))
        return z
    if kind != "bleed":
        raise ValueError(f"unknown corruption {kind!r}; use one of {CORRUPTIONS}")
    from scipy.ndimage import maximum_filter

    far = maximum_filter(np.nan_to_num(gt, nan=0.0), size=7)
    ui, vi = uv[:, 0].astype(np.int64), uv[:, 1].astype(np.int64)
    gain = far[vi, ui] / np.maximum(z, 1e-6)
    order = np.lexsort((rng.random(len(z)), -gain))  # strongest edges first, ties at random
    idx = order[:n]
    z[idx] = np.maximum(z[idx], far[vi[idx], ui[idx]])
    return z


def anchor_count(regime: str) -> float:
    if ring_regime(regime):
        return float("nan")  # LiDAR patterns: the measured mean is in the results
    if regime.startswith("drop"):
        return float(regime[4:])
    lo, hi = REGIMES[regime]
    return (lo + hi) / 2


def parse_checkpoints(text: str | None) -> dict[str, str] | str | None:
    """``--checkpoint``: one path for every regime, or ``REGIME=PATH,...`` where REGIME is a
    regime (``low``, ``rings8``) or a group (``drop``, ``rings``); others use the shipped default."""
    if not text or "=" not in text:
        return text or None
    out = {}
    for part in text.split(","):
        key, sep, path = part.partition("=")
        if not sep or not key.strip() or not path.strip():
            raise ValueError(f"--checkpoint entry {part!r} is not REGIME=PATH")
        out[key.strip()] = path.strip()
    return out


def checkpoint_for(checkpoints: dict[str, str] | str | None, regime: str, backend=None) -> str:
    """The generator a regime runs with: given per regime or group (``universal`` names the
    shipped universal generator), else the shipped default for ``backend``'s network: its own
    when it has one, the universal generator otherwise (as the node chooses)."""
    from .checkpoints import shipped_generator_for, universal_checkpoint

    if isinstance(checkpoints, str):
        path = checkpoints
    else:
        table = checkpoints or {}
        group = "rings" if ring_regime(regime) else "drop" if regime.startswith("drop") else regime
        path = table.get(regime) or table.get(group) or ""
    if path == "universal":
        return str(universal_checkpoint())
    if path:
        return path
    return str(shipped_generator_for(backend, regime)[0] if backend is not None else default_checkpoint(regime))


class Evaluator:
    def __init__(self, methods: list[str], regimes: list[str], backend, device: torch.device,
                 checkpoint: dict[str, str] | str | None = None, ablation_checkpoint: str | None = None,
                  basis_options: dict | None = None, allow_mde_mismatch: bool = False, cache=None,
                 tuned: str | None = "auto", corrupt: tuple[str, float] | None = None,
                 edge_ratio: float = 0.0, uncertainty: str | None = "auto",
                 nan_policy: tuple[float, float] = (0.0, 0.0), collect: int = 0) -> None:
        from .checkpoints import check_generator_mde

        self.methods, self.regimes, self.backend, self.device = methods, regimes, backend, device
        self.cache = cache  # a FeatureCache shared with `train`; None = run the MDE every time
        self.generators = {}
        self.ckpt_for = {}
        if "basis" in methods or "basis-res" in methods or "selfval" in methods:
            for r in regimes:
                path = checkpoint_for(checkpoint, r, backend)
                self.ckpt_for[r] = path
                if path not in self.generators:
                    self.generators[path] = load_generator(path, device)
                    check_generator_mde(self.generators[path].config, backend, allow_mde_mismatch,
                                        what=f"generator {path}")
        self.ablation = None
        if "basis-f0" in methods:
            self.ablation = load_generator(ablation_checkpoint or MODELS_DIR / "generator_k30_medium_f0", device)
            check_generator_mde(self.ablation.config, backend, allow_mde_mismatch, what="ablation generator")
        self.tuned_spec = tuned
        self.corrupt = corrupt
        self.edge_ratio = edge_ratio
        self.uncertainty_spec = uncertainty  # calibration spec (see tuned.load_uncertainty); None = none
        self._calibrations: dict[str, dict] = {}
        self.nan_policy = nan_policy  # (max_relative_uncertainty, max_extrapolation)
        self.collect = collect  # > 0: keep this many pixels per image and method for `calibrate`
        self.collected: dict[str, list[dict]] = {}
        self.curves: dict[str, dict[str, list]] = {}
        self._tuned: dict[str, dict] = {}  # family -> tuned options
        self._aligners: dict[tuple, object] = {}
        self.options_used: dict[str, dict[str, dict]] = {}  # method -> regime -> options
        self.basis_opts = dict(basis_options or {})
        self.basis = (make("basis", generator=next(iter(self.generators.values())), **self.basis_opts)
                      if self.generators else None)
        self.rings_seen: dict[str, list[int]] = {}
        self.per_image: dict[str, dict[str, list[dict]]] = {m: {r: [] for r in regimes} for m in methods}
        self.scoring: dict[str, list[dict]] = {}  # regime -> per image: pixels scored, anchors excluded
        self.selfval_log: dict[str, list[dict]] = {}  # regime -> per image: weights, held-out and true error
        from .core.selfval import DEFAULT_CANDIDATES

        self.selfval_candidates = list(DEFAULT_CANDIDATES)
        self.spectral: list[dict] = []
        self.skipped: dict[str, str] = {}

    def run_sample(self, sample, index: int, figure_path: Path | None = None) -> None:
        if self.cache is not None:
            depth, feats = self.cache.get(sample)
            depth, feats = depth[None], feats[None]
        else:
            depth, feats = self.backend.predict(sample.rgb)
        mde = depth[0].to(self.device)
        feats = feats.to(self.device).float()
        gt = torch.from_numpy(np.nan_to_num(sample.depth, nan=0.0)).to(self.device)
        valid = torch.from_numpy(sample.valid).to(self.device)
        labels = torch.from_numpy(sample.labels.astype(np.int64)).to(self.device) if sample.labels is not None else None
        maps_cache = {}
        with torch.no_grad():
            for path in {self.ckpt_for[r] for r in self.regimes} if self.ckpt_for else []:
                maps_cache[path] = self.generators[path](mde.unsqueeze(0), feats)
            f0_maps = self.ablation(mde.unsqueeze(0), feats) if self.ablation is not None else None
        fig_data = None
        for regime in self.regimes:
            case = protocol_case(sample, regime, index, corrupt=self.corrupt)
            uv, z = case.uv, case.z
            gt_r, valid_r = case.gt.to(self.device), case.mask.to(self.device)
            if case.rings is not None:
                self.rings_seen.setdefault(regime, []).append(case.rings)
            self.scoring.setdefault(regime, []).append(
                {"mask_pixels": int(valid.sum()), "scored_pixels": int(valid_r.sum()),
                 "anchor_pixels_excluded": int((valid & ~case.mask.to(self.device)).sum()) if not case.held_out_rings
                 else None, "held_out_rings": case.held_out_rings})
            if self.edge_ratio > 1 and len(z):
                keep = edge_filter(torch.from_numpy(np.asarray(uv, np.float32)), mde.cpu(), ratio=self.edge_ratio).numpy()
                uv, z = uv[keep], z[keep]
            for m in self.methods:
                if m == "region" and labels is None:
                    self.skipped[m] = "dataset has no semantic labels"
                    continue
                if m == "basis":
                    res = self.basis.fit(mde, uv, z, basis_maps=maps_cache[self.ckpt_for[regime]])
                    if regime == "low" or (fig_data is None and regime == self.regimes[0]):
                        fig_data = (res, maps_cache[self.ckpt_for[regime]], uv)
                    if regime == "low":
                        st = spectral_stats(res.extras["design"], res.extras["target"])
                        g0 = res.extras["gates"][:, 0]
                        self.spectral.append({"eta1": float(st.eta1[0]), "v10": float(st.v10[0]),
                                              "g0_mean": float(g0.mean())})
                elif m == "basis-res":
                    # basis + the tuned local residual correction (our extension, not the paper's)
                    opts = {**self.basis_opts, **self._tuned_for(sample.family, regime, "basis-res")}
                    res = make("basis", generator=self.basis.generator, **opts).fit(
                        mde, uv, z, basis_maps=maps_cache[self.ckpt_for[regime]])
                    self.options_used.setdefault(m, {})[regime] = opts
                elif m == "basis-f0":
                    res = self.basis.fit(mde, uv, z, basis_maps=f0_maps)
                elif m == "selfval":
                    res = self.self_validated(mde, case, regime, sample.family, maps_cache.get(self.ckpt_for[regime])
                                              if self.ckpt_for else None, labels, valid_r, gt_r)
                else:
                    res = self.baseline(m, regime, sample.family).fit(mde, uv, z, regions=labels)
                met = depth_metrics(res.depth, gt_r, valid_r)
                met["anchors"] = int(res.anchors_used[0])
                if m != "basis-f0" and (self.collect or self.uncertainty_spec):
                    met.update(self.uncertainty_metrics(m, regime, sample, res, mde, uv, z, gt_r, valid_r, index))
                self.per_image[m][regime].append(met)
        if figure_path is not None and fig_data is not None:
            save_figure(figure_path, sample, mde.cpu(), fig_data, gt.cpu(), valid.cpu())

    def self_validated(self, mde, case, regime: str, family: str, maps, labels, mask, gt):
        """The stacked candidates of :mod:`core.selfval`, cross-validated on whole rings of
        this image's anchors (u-blocks for grid anchors); also records, per image, the
        held-out error estimate beside the true error (for the estimate's calibration)."""
        from .core.selfval import CANDIDATE_OPTIONS, Candidate, self_validate

        cands = []
        for name in self.selfval_candidates:
            if name == "basis-res":
                opts = {**self.basis_opts, **self._tuned_for(family, regime, "basis-res")}
                cands.append(Candidate(name, make("basis", generator=self.basis.generator, **opts),
                                       {"basis_maps": maps}))
            else:
                cands.append(Candidate(name, self.baseline(name, regime, family, CANDIDATE_OPTIONS.get(name)),
                                       {"regions": labels}))
        rings = case.anchor_rings if case.anchor_rings is not None else np.zeros(len(case.z), np.int64)
        res, sv = self_validate(cands, mde, case.uv, case.z, rings)
        true = depth_metrics(res.depth, gt, mask)["abs_rel"]
        self.selfval_log.setdefault(regime, []).append(
            {"weights": sv.weights, "weights_outside": sv.weights_outside, "outside": sv.outside,
             "holdout_abs_rel": sv.blend_abs_rel, "candidates_holdout": sv.holdout_abs_rel,
             "true_abs_rel": true, "folds": sv.folds, "rings": sv.rings})
        return res

    def uncertainty_metrics(self, m: str, regime: str, sample, res, mde, uv, z, gt, valid, index: int) -> dict:
        """Calibration, sharpness and NaN-policy figures of one method on one image (or, for
        ``calibrate``, a pixel sample of its uncertainty features and errors)."""
        from .core.uncertainty import calibration_metrics, nan_policy, uncertainty_features
        from .tuned import load_uncertainty

        kind = "basis" if m.startswith("basis") else m
        opts = self.options_used.get(m, {}).get(regime, {}) if kind != "basis" else {}
        feats = uncertainty_features(kind, res, mde, torch.as_tensor(uv, dtype=torch.float32),
                                     torch.as_tensor(z, dtype=torch.float32), options=opts)
        depth = res.depth.unsqueeze(0) if res.depth.dim() == 2 else res.depth
        if self.collect:
            ok = valid & torch.isfinite(depth[0]) & (depth[0] > 0)
            idx = torch.nonzero(ok.flatten()).squeeze(1)
            g = torch.Generator().manual_seed(index * 7919 + len(m))
            idx = idx[torch.randperm(len(idx), generator=g)[: self.collect].to(idx.device)]
            d = depth[0].flatten()[idx]
            row = {k: v[0].flatten()[idx].cpu().numpy() for k, v in feats.items()}
            row["rel_err"] = ((gt.flatten()[idx] - d) / d).cpu().numpy()
            row["regime"] = regime
            self.collected.setdefault(m, []).append(row)
            return {}
        fam = sample.family
        if fam not in self._calibrations:
            self._calibrations[fam] = load_uncertainty(self.uncertainty_spec, fam)
        model = self._calibrations[fam].get(m)
        if model is None:
            return {}
        sigma = depth * model.log_sigma(feats)
        cal = calibration_metrics(depth[0], sigma[0], gt, valid)
        curves = self.curves.setdefault(m, {}).setdefault(regime, [])
        curves.append((cal.pop("sparsification"), cal.pop("oracle")))
        rel_u, ext = self.nan_policy
        if rel_u > 0 or ext > 0:
            bad = nan_policy(depth, sigma, torch.as_tensor(z, dtype=torch.float32), None, rel_u, ext)[0]
            pub = torch.where(bad, torch.full_like(depth[0], float("nan")), depth[0])
            pm = depth_metrics(pub, gt, valid)
            outside = (~valid) & torch.isfinite(depth[0])
            cal.update(policy_abs_rel=pm["abs_rel"], policy_coverage=pm["coverage"],
                       policy_removed_outside=float((bad & outside).sum() / outside.sum().clamp_min(1)))
        return cal

    def _tuned_for(self, family: str, regime: str, method: str) -> dict:
        from .tuned import load_tuned, tuned_options

        if family not in self._tuned:
            self._tuned[family] = load_tuned(self.tuned_spec, family)
        return tuned_options(self._tuned[family], regime, method)

    def baseline(self, method: str, regime: str, family: str, extra: dict | None = None):
        """The baseline as tuned for this family and regime (``tuned=None``: its defaults);
        ``extra``: options on top (not the baseline's: e.g. a self-validation candidate's)."""
        opts = self._tuned_for(family, regime, method)
        self.options_used.setdefault(method, {})[regime] = opts
        opts = {**opts, **(extra or {})}
        key = (method, tuple(sorted((k, str(v)) for k, v in opts.items())))
        if key not in self._aligners:
            self._aligners[key] = make(method, **opts)
        return self._aligners[key]

    def summary(self) -> dict:
        out = {}
        for m, regs in self.per_image.items():
            for r, rows in regs.items():
                if not rows:
                    continue
                agg = {k: float(np.nanmean([row[k] for row in rows])) for k in METRIC_KEYS}
                for k in UNCERTAINTY_KEYS:
                    if k in rows[0]:
                        agg[k] = float(np.nanmean([row[k] for row in rows]))
                agg["images"] = len(rows)
                agg["mean_anchors"] = float(np.mean([row["anchors"] for row in rows]))
                if r in self.rings_seen:
                    agg["mean_rings"] = float(np.mean(self.rings_seen[r]))
                out.setdefault(m, {})[r] = agg
        return out

    def selfval_summary(self) -> dict:
        """Per regime: mean stacking weights, and how the held-out error tracks the true one
        (Spearman rank correlation over images, mean ratio held-out / true)."""
        from scipy.stats import spearmanr

        out = {}
        for r, rows in self.selfval_log.items():
            est = np.array([row["holdout_abs_rel"] for row in rows])
            true = np.array([row["true_abs_rel"] for row in rows])
            ok = np.isfinite(est) & np.isfinite(true) & (true > 0)
            names = rows[0]["weights"].keys()
            out[r] = {"images": len(rows), "mean_weights": {n: float(np.mean([row["weights"][n] for row in rows]))
                                                           for n in names},
                      "holdout_vs_true_spearman": float(spearmanr(est[ok], true[ok])[0]) if ok.sum() > 2 else None,
                      "holdout_over_true": float(np.mean(est[ok] / true[ok])) if ok.any() else None,
                      "per_image": rows}
        return out

    def scoring_summary(self) -> dict:
        """What was scored, per regime: anchors' pixels are never among the scored pixels."""
        out = {"anchors_excluded": True, "regimes": {}}
        for r, rows in self.scoring.items():
            ex = [row["anchor_pixels_excluded"] for row in rows if row["anchor_pixels_excluded"] is not None]
            out["regimes"][r] = {"images": len(rows), "scored_pixels": int(sum(row["scored_pixels"] for row in rows)),
                                 "mean_scored_pixels": float(np.mean([row["scored_pixels"] for row in rows])),
                                 "anchor_pixels_excluded": int(sum(ex)) if ex else 0,
                                 "target": "held-out rings" if any(row["held_out_rings"] for row in rows)
                                 else "ground truth minus anchor pixels"}
        return out

    def curve_summary(self) -> dict:
        """Mean sparsification and oracle curves per method and regime (AbsRel vs removed fraction)."""
        out = {}
        for m, regs in self.curves.items():
            for r, rows in regs.items():
                sp = np.mean([c[0] for c in rows if c[0]], 0).tolist()
                orc = np.mean([c[1] for c in rows if c[1]], 0).tolist()
                out.setdefault(m, {})[r] = {"removed": np.linspace(0, 0.95, len(sp)).tolist(),
                                            "sparsification": sp, "oracle": orc}
        return out

    def spectral_summary(self) -> dict:
        if not self.spectral:
            return {}
        g0 = np.array([s["g0_mean"] for s in self.spectral])
        return {
            "median_eta1": float(np.median([s["eta1"] for s in self.spectral])),
            "median_v10": float(np.median([s["v10"] for s in self.spectral])),
            "mean_g0": float(g0.mean()),
            "var_g0": float(g0.var()),
            "images": len(self.spectral),
            "regime": "low",
            "num_basis": int(self.generators[self.ckpt_for["low"]].config.num_basis) if self.ckpt_for else None,
        }


def save_sparsification(path: Path, curves: dict) -> None:
    """Sparsification curves (solid) against the oracle (dashed), one panel per regime."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    regimes = sorted({r for regs in curves.values() for r in regs})
    fig, axes = plt.subplots(1, len(regimes), figsize=(4.5 * len(regimes), 3.6), squeeze=False)
    for ax, r in zip(axes[0], regimes):
        for i, (m, regs) in enumerate(curves.items()):
            if r not in regs:
                continue
            c = regs[r]
            col = f"C{i}"
            ax.plot(c["removed"], c["sparsification"], color=col, label=m)
            ax.plot(c["removed"], c["oracle"], color=col, ls="--", lw=0.8)
        ax.set_title(f"{r}: AbsRel of the pixels kept")
        ax.set_xlabel("fraction removed (most uncertain first)")
        ax.legend(fontsize=7)
    axes[0][0].set_ylabel("AbsRel (dashed: oracle)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def save_figure(path: Path, sample, mde: torch.Tensor, fig_data, gt: torch.Tensor, valid: torch.Tensor) -> None:
    """RGB | MDE depth | scale field | 4 basis maps | error map (the paper's Fig. 2 and more)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    res, maps, uv = fig_data
    depth = res.depth.cpu()
    err = torch.where(valid, (depth - gt).abs() / gt.clamp_min(1e-6), torch.full_like(gt, float("nan")))
    E = maps.full()[0].cpu()
    panels = [("RGB", sample.rgb, None), ("MDE depth (up to scale)", mde.numpy(), "magma_r"),
              ("scale field s(x)", res.scale.cpu().numpy(), "viridis")]
    for k in range(1, min(5, E.shape[0])):
        panels.append((f"basis map E_{k}", E[k].numpy(), "coolwarm"))
    panels += [("metric depth", depth.numpy(), "magma_r"), ("AbsRel error", err.numpy(), "inferno")]
    cols = 3
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 4.2 * rows * sample.rgb.shape[0] / sample.rgb.shape[1] + 0.6))
    for ax in np.ravel(axes):
        ax.axis("off")
    for ax, (title, img, cmap) in zip(np.ravel(axes), panels):
        if cmap is None:
            ax.imshow(img)
            ax.scatter(uv[:, 0], uv[:, 1], s=6, c="cyan")
        else:
            kw = {"vmin": 0, "vmax": 0.3} if title.startswith("AbsRel") else {}
            im = ax.imshow(img, cmap=cmap, **kw)
            fig.colorbar(im, ax=ax, fraction=0.03)
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_tables(path: Path, results: dict, spectral: dict) -> None:
    methods = results.keys()
    std = [r for r in ("low", "medium", "high") if any(r in results[m] for m in methods)]
    drops = [r for r in DROP_REGIMES if any(r in results[m] for m in methods)]
    rings = sorted({r for m in methods for r in results[m] if ring_regime(r)}, key=ring_regime)
    lines = ["# Evaluation", ""]

    def table(regs, title):
        lines.extend([f"## {title}", "", "| method | " + " | ".join(f"{r} AbsRel | {r} δ1" for r in regs) + " |",
                      "|---" * (1 + 2 * len(regs)) + "|"])
        for m in methods:
            cells = []
            for r in regs:
                v = results[m].get(r)
                cells += [f"{v['abs_rel']:.3f}", f"{v['delta1']:.3f}"] if v else ["-", "-"]
            lines.append(f"| {m} | " + " | ".join(cells) + " |")
        lines.append("")

    if std:
        table(std, "Anchor regimes (Tables 1-2)")
    if drops:
        table(drops, "Drop-anchor test (Table 3)")
    if rings:
        table(rings, "LiDAR scan lines (all projected points of n rings in view)")
        first = next(iter(methods))
        lines.insert(len(lines) - 1, "mean anchors: " + ", ".join(
            f"{r} {results[first][r]['mean_anchors']:.0f} ({results[first][r].get('mean_rings', 0):.1f} rings)"
            for r in rings if r in results[first]))
    cov = [f"{m} {np.nanmin([v['coverage'] for v in results[m].values()]):.3f}" for m in methods]
    lines += ["coverage (share of mask pixels published, lowest over regimes): " + ", ".join(cov), ""]
    unc = [(m, r, v) for m in methods for r, v in results[m].items() if "within_1sigma" in v]
    if unc:
        lines += ["## Uncertainty (share of pixels within ±1σ / ±2σ: 0.683 / 0.954 if calibrated; "
                  "sharpness = mean σ/depth; AUSE of AbsRel)", "",
                  "| method | regime | ±1σ | ±2σ | σ/depth | AUSE | AbsRel | NaN policy: AbsRel / coverage / "
                  "outside-mask removed |", "|---|---|---|---|---|---|---|---|"]
        for m, r, v in unc:
            pol = (f"{v['policy_abs_rel']:.3f} / {v['policy_coverage']:.3f} / {v['policy_removed_outside']:.3f}"
                   if "policy_abs_rel" in v else "-")
            lines.append(f"| {m} | {r} | {v['within_1sigma']:.3f} | {v['within_2sigma']:.3f} | {v['sharpness']:.3f} | "
                         f"{v['ause']:.4f} | {v['abs_rel']:.3f} | {pol} |")
        lines.append("")
    if spectral:
        k = spectral.get("num_basis")
        lines += [f"## Spectral statistics ({f'K={k} model' if k else 'basis model'}, low regime)", "",
                  f"median η1 = {spectral['median_eta1']:.3f}, median |v1,0| = {spectral['median_v10']:.3f}, "
                  f"E[G0] = {spectral['mean_g0']:.3f}, Var(G0) = {spectral['var_g0']:.2e} "
                  f"over {spectral['images']} images", ""]
    path.write_text("\n".join(lines))


def plot_vs_anchors(path: Path, results: dict) -> None:
    """AbsRel and δ1 against anchors per image (grid regimes) and against LiDAR rings in view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rings = any(ring_regime(r) for regs in results.values() for r in regs)
    grid = any(not ring_regime(r) for regs in results.values() for r in regs)
    panels = [p for p, on in (("grid", grid), ("rings", rings)) if on] or ["grid"]
    fig, ax = plt.subplots(len(panels), 2, figsize=(10, 3.8 * len(panels)), squeeze=False)
    for row, kind in zip(ax, panels):
        for m, regs in results.items():
            if kind == "rings":
                pts = sorted((ring_regime(r), v["abs_rel"], v["delta1"]) for r, v in regs.items() if ring_regime(r))
            else:
                pts = sorted((v.get("mean_anchors", anchor_count(r)), v["abs_rel"], v["delta1"])
                             for r, v in regs.items() if not ring_regime(r))
            if pts:
                x, a, d = zip(*pts)
                row[0].plot(x, a, "o-", label=m)
                row[1].plot(x, d, "o-", label=m)
        for a, name in zip(row, ("AbsRel (lower is better)", "δ1 (higher is better)")):
            a.set_xscale("log")
            a.set_xlabel("LiDAR rings in view" if kind == "rings" else "anchors per image")
            a.set_title(name)
        row[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    from tqdm import tqdm

    from .data.datasets import open_dataset
    from .mde.backends import load_backend, resolve_device

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic:both", help=f"dataset: {DATA_SPECS}")
    p.add_argument("--seeds", default="9000-9019", help="synthetic seed range (held-out: 9000 and above); "
                   "synthetic data only")
    p.add_argument("--path", help="dataset root for file-based loaders")
    p.add_argument("--every", type=int, default=1, help="use every N-th frame of a dataset")
    p.add_argument("--limit", type=int, default=0, help="use at most N frames (after --every); 0 = all")
    p.add_argument("--cache-dir", help="MDE output cache (shared with train; default ~/.cache/scalefield_ros/features "
                   "or $SCALEFIELD_CACHE)")
    p.add_argument("--no-cache", action="store_true", help="run the MDE on every frame instead of using the cache")
    p.add_argument("--methods", default="basis,global,global-scale,piecewise,lwlr,grid,grid-smooth,region",
                   help=f"comma list of {', '.join(METHODS)}")
    p.add_argument("--tuned", default="auto", help="baseline options: auto (the shipped tuned file of each image's "
                   "family: street or indoor), street, indoor, a YAML written by `tune`")
    p.add_argument("--untuned", action="store_true", help="run every baseline with its default options")
    p.add_argument("--corrupt", help="KIND:FRACTION of anchors corrupted, KIND random or bleed (edge bleeding), "
                   "e.g. random:0.1")
    p.add_argument("--edge-filter", type=float, default=0.0, metavar="RATIO",
                   help="drop anchors (for every method) on depth edges of the network's depth, where its 7x7 "
                   "max/min exceeds RATIO (the node's edge_filter_ratio); 0 = keep all (the paper)")
    p.add_argument("--uncertainty", default="auto", help="uncertainty calibration: auto (the shipped one of each "
                   "image's family), street, indoor, a YAML written by `calibrate`, or none")
    p.add_argument("--max-relative-uncertainty", type=float, default=0.0,
                   help="NaN policy: also score with pixels whose sigma/depth exceeds this removed (policy_*)")
    p.add_argument("--max-extrapolation", type=float, default=0.0,
                   help="NaN policy: also score with depths beyond this x the farthest anchor removed (policy_*)")
    p.add_argument("--regimes", default="low,medium,high,drop")
    p.add_argument("--checkpoint", help="generator checkpoint for basis: one PATH for every regime, or "
                   "REGIME=PATH,... per regime or group (low, medium, high, drop, rings, rings8, ...); "
                   "default: shipped, K=8 for low/drop, the node's K=30 for medium/high/rings")
    p.add_argument("--ablation-checkpoint", help="F(x)=0 generator for basis-f0 (default: shipped)")
    p.add_argument("--mde", default="embedded", help=f"MDE backend: {BACKEND_SPECS}")
    p.add_argument("--allow-mde-mismatch", action="store_true",
                   help="run generators trained for another MDE (refused by default; logged when allowed)")
    p.add_argument("--ridge", default="gcv",
                   help="basis ridge lambda: 'gcv' (chosen per image, default) or a number (the paper: 0.001)")
    p.add_argument("--robust", default="none", choices=["none", "huber", "tukey"],
                   help="basis: robust (IRLS) anchor weighting")
    p.add_argument("--residual-bandwidth", type=float, default=0.0,
                   help="basis: local residual correction bandwidth (fraction of the diagonal); 0 = off (the paper)")
    p.add_argument("--residual-shrink", type=float, default=1.0, help="basis: residual correction shrinkage")
    p.add_argument("--device", default="auto")
    p.add_argument("--figures", type=int, default=2, help="per-sample figures to write")
    p.add_argument("--out", required=True)
    add_threads_argument(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    regimes = parse_regimes(a.regimes)
    device = resolve_device(a.device)
    torch.manual_seed(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(a.data, a.seeds, path=a.path, lidar=any(ring_regime(r) for r in regimes))
    ds = subset(ds, a.every, a.limit)
    backend = load_backend(a.mde, device)
    cache = None
    if not a.no_cache:
        from .data.cache import FeatureCache

        cache = FeatureCache(backend, a.cache_dir)
    corrupt = None
    if a.corrupt:
        kind, _, frac = a.corrupt.partition(":")
        if kind not in CORRUPTIONS or not frac:
            raise SystemExit(f"--corrupt must be KIND:FRACTION with KIND in {CORRUPTIONS}, got {a.corrupt!r}")
        corrupt = (kind, float(frac))
    ridge = a.ridge if a.ridge == "gcv" else float(a.ridge)
    basis_options = {"ridge": ridge, "robust": a.robust, "residual_bandwidth": a.residual_bandwidth,
                     "residual_shrink": a.residual_shrink}
    from .checkpoints import MDEMismatchError

    fam = describe(ds).get("family")
    if fam:  # never a silent default: the family chooses the baselines' tuned options
        print(f"dataset family: {fam} (intrinsics.yaml `family:`, else from its max_depth; tuned options: {fam})")

    try:
        ev = Evaluator(methods, regimes, backend, device, parse_checkpoints(a.checkpoint), a.ablation_checkpoint,
                       basis_options, a.allow_mde_mismatch, cache, None if a.untuned else a.tuned, corrupt,
                       a.edge_filter, None if a.uncertainty == "none" else a.uncertainty,
                       (a.max_relative_uncertainty, a.max_extrapolation))
    except (MDEMismatchError, FileNotFoundError) as exc:  # a user's mistake: one line, no traceback
        raise SystemExit(f"error: {exc}") from None
    for i in tqdm(range(len(ds)), desc="evaluating"):
        ev.run_sample(ds[i], i, out / f"sample_{i:02d}.png" if i < a.figures else None)
    results = ev.summary()
    spectral = ev.spectral_summary()
    doc = {"methods": results,
        "spectral": spectral, "skipped": ev.skipped, "scoring": ev.scoring_summary(),
        "self_validation": ev.selfval_summary(),
        "config": {"data": a.data, "frames": describe(ds), "methods": methods, "regimes": regimes, "mde": backend.name,
                   "checkpoints": ev.ckpt_for, "basis": basis_options,
                   "baseline_options": ev.options_used, "tuned": None if a.untuned else a.tuned,
                   "corrupt": a.corrupt, "edge_filter": a.edge_filter, "uncertainty": a.uncertainty,
                   "max_relative_uncertainty": a.max_relative_uncertainty,
                   "max_extrapolation": a.max_extrapolation}}
    if ev.curves:
        doc["sparsification"] = ev.curve_summary()
        save_sparsification(out / "sparsification.png", doc["sparsification"])
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    write_tables(out / "tables.md", results, spectral)
    plot_vs_anchors(out / "metrics_vs_anchors.png", results)
    print((out / "tables.md").read_text())
    return doc


if __name__ == "__main__":
    main()
