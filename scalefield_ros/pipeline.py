"""One frame in (image, intrinsics, LiDAR points, extrinsic) -> metric depth out.

Shared by the ROS node, replay, the demo and the benchmark, so that all of them run the
same numbers. No ROS imports.
"""

from __future__ import annotations

import time
from pathlib import Path
from dataclasses import dataclass, field
from types import SimpleNamespace

import numpy as np
import torch

from .core import make
from .core.aligners import NO_ANCHORS
from .core.anchors import depth_spread, edge_filter, project_points
from .core.uncertainty import nan_policy, uncertainty_features
from .mde.backends import load_backend, resolve_device
from .tuned import load_tuned, load_uncertainty, tuned_options

#: Methods the pipeline (and node) can run; region needs labels a robot does not have.
PIPELINE_METHODS = ("basis", "global", "global-scale", "piecewise", "lwlr", "grid", "grid-smooth")
BELOW_MIN = ("global", "skip")
GATE_POLICIES = ("skip", "publish")
GENERATOR_BACKENDS = ("torch", "onnx")
SELF_VALIDATION = ("off", "estimate", "blend")
#: What diagnostics say when a fit fails the sanity gate.
GATE_MESSAGE = ("anchors disagree with the depth network: the network may be wrong on this frame, or check the "
                "extrinsic, the time sync and the cloud fields")


@dataclass
class PipelineConfig:
    method: str = "basis"
    mde: str = "embedded"
    checkpoint: str = ""  # generator checkpoint; "" = the shipped one for `generator_regime`
    generator_regime: str = "lidar"  # the node's anchors are LiDAR scan lines: the K=30 ring-pattern model
    generator_backend: str = "torch"  # or "onnx": the generator's network in ONNX Runtime (scalefield_ros.export)
    ridge: float | str = "gcv"  # "gcv" (per frame) or a fixed lambda (the paper: 1e-3)
    robust: str = "tukey"  # basis anchors: none, huber or tukey (one reweighting, core/solver.py; README)
    residual: bool = True  # basis: local residual correction with the tuned rings options (README)
    min_anchors: int = 3
    below_min_anchors: str = "global"  # or "skip"
    max_depth: float = 0.0  # > 0: depths beyond become +inf (REP 118 "too far")
    min_depth: float = 0.1
    occlusion_kernel: int = 5
    device: str = "auto"
    allow_mde_mismatch: bool = False  # run a generator trained for another MDE (logged; at your own risk)
    tuned: str = "street"  # baseline options: street, indoor, a tune YAML, or "" (defaults)
    # sanity gate (see check_alignment): limits and what to do with a frame that fails
    min_rank_correlation: float = 0.0  # Spearman rho of MDE depth vs anchor depth at the anchors ...
    max_log_ratio_spread: float = 0.5  # ... fails only together with an IQR of log(anchor / MDE depth) above this
    gross_log_ratio_spread: float = 3.0  # an IQR of log(anchor / MDE depth) above this fails alone
    max_anchor_residual: float = 0.35  # median |log(depth / anchor)| at the anchors after the fit
    max_scale_ratio: float = 100.0  # p99 / p1 of the fitted scale field over the image
    gate_policy: str = "skip"  # skip (never publish it) or publish (publish, diagnostics ERROR)
    gate: bool = True  # False: no sanity gate (evaluation of raw methods)
    edge_filter_ratio: float = 1.3  # drop anchors on network depth edges (7x7 max/min above); <= 1 = off
    # uncertainty (core/uncertainty.py): calibration "street"/"indoor"/a YAML path, "" = none
    uncertainty: str = "street"
    # NaN policy (REP 118 "no valid estimate"); defaults chosen on validation scenes (README: NaN policy)
    max_relative_uncertainty: float = 0.4  # > 0: pixels with sigma / depth above become NaN
    max_extrapolation: float = 1.1  # > 0: depths beyond this x the farthest anchor become NaN
    remove_sky: bool = True  # pixels the network's sky head calls sky become NaN (embedded MDE: mde/sky.py)
    # temporal prior (basis): ridge toward the previous frame's weights
    temporal_prior: bool = False
    prior_strength: float = 0.1  # rho added to lambda toward w_{t-1} (chosen on validation sequences, README)
    prior_decay: float = 1.0  # seconds: the strength decays as exp(-age / prior_decay)
    prior_max_age: float = 2.0  # seconds: an older prior is dropped (a frame without anchors falls back)
    prior_sigma_growth: float = 0.5  # log-sigma added (in quadrature) per second of the prior's age (validation)
    # self-validation (core/selfval.py): cross-validate on whole held-out LiDAR rings
    self_validation: str = "blend"  # off, estimate (held-out error in diagnostics) or blend (+ stacked candidates)
    self_validation_every: int = 20  # cross-validate every N-th frame; blend weights carry over between
    self_validation_candidates: str = "grid-smooth,lwlr"  # besides `method` (blend)
    # calibration watchdog (core/extrinsic_watch.py): is the extrinsic right? evidence across frames
    calibration_watchdog: bool = True
    calibration_watchdog_every: int = 4  # while the extrinsic looks right, check every N-th frame
    # on-robot adaptation (adaptation.py): fine-tune the basis generator on the robot's own LiDAR
    adapt: bool = False
    adapt_duty: float = 0.1  # the background thread's busy share of wall-clock time
    adapt_max_frames: int = 300  # frames buffered
    adapt_max_memory_mb: float = 256.0  # ... and at most this much memory
    adapt_cache: str = ""  # "" = the user cache (~/.cache/scalefield_ros/adapted)


@dataclass
class FrameOutput:
    depth: np.ndarray | None  # (H, W) float32 metres; NaN invalid, +inf beyond max_depth; None = skipped
    scale: np.ndarray | None  # (H, W) float32 s(x)
    anchors: int
    fallback: str  # "" none, "global", "prior" (previous frame's weights), "skip", "no_anchors"
    reason: str  # why a frame was skipped ("" otherwise)
    residual: float
    timings: dict[str, float] = field(default_factory=dict)  # seconds: projection, mde, generator, solve, apply
    anchors_uv: np.ndarray | None = None
    anchors_depth: np.ndarray | None = None
    ridge_lambda: float = float("nan")  # the basis solve's lambda (chosen per frame with gcv)
    gate: str = ""  # "" passed; else why the sanity gate failed the frame (it is then an error)
    sigma: np.ndarray | None = None  # (H, W) float32 one standard deviation of depth (m); NaN where depth is
    invalid_share: float = 0.0  # share of pixels the NaN policy removed (max_relative_uncertainty, max_extrapolation)
    holdout_abs_rel: float = float("nan")  # self-validation: AbsRel on held-out rings (NaN: not run this frame)
    estimated_abs_rel: float = float("nan")  # the held-out figure calibrated to the whole image (tuned/holdout.yaml)
    selfval_weights: dict = field(default_factory=dict)  # self-validation: blend weights in force
    extrinsic: object = None  # calibration watchdog: core.extrinsic_watch.Health after this frame (None: off)


def _ranks(x: np.ndarray) -> np.ndarray:
    r = np.empty(len(x))
    r[np.argsort(x, kind="stable")] = np.arange(len(x))
    return r


def check_alignment(depth_at: np.ndarray, scale: np.ndarray, mde_at: np.ndarray, z: np.ndarray,
                    cfg: PipelineConfig) -> str:
    """The sanity gate: "" when the frame is believable, else what is wrong.

    Before the fit, the anchors must agree with the network: a frame fails when the
    anchors' depths do not rise with the MDE's (Spearman rank correlation below
    ``min_rank_correlation``) *and* their scales ``log(z / D_mde)`` scatter (interquartile
    range above ``max_log_ratio_spread``), or when that scatter alone is gross (above
    ``gross_log_ratio_spread``: misread cloud fields); a low correlation alone happens on
    frames of nearly one depth (a wall), and on real frames where the network orders
    depth poorly but a local scale field still fits (docs/node.md: sanity gate). After it, the fit must reach its anchors (median absolute
    log residual <= ``max_anchor_residual``) and the scale field must be a correction,
    not a different scene (p99 / p1 <= ``max_scale_ratio``). A wrong extrinsic or time
    sync puts anchors on unrelated pixels; misread cloud fields (wrong type or
    endianness) give absurd depths. Defaults were set on validation scenes (seeds < 9000;
    README: sanity gate) to reject none of the normal frames.

    Args:
        depth_at, mde_at: the output depth and the network's depth at the anchors' pixels, ``(N,)``.
        scale: the scale field ``(H, W)``.
        z: the anchors' metric depths ``(N,)``.
    """
    good = np.isfinite(mde_at) & (mde_at > 0) & np.isfinite(z) & (z > 0)
    if good.sum() >= 3:
        a, b = _ranks(mde_at[good]), _ranks(z[good])
        rho = float(np.corrcoef(a, b)[0, 1]) if a.std() > 0 and b.std() > 0 else 1.0
        q75, q25 = np.percentile(np.log(z[good] / mde_at[good]), [75, 25])
        if q75 - q25 > cfg.gross_log_ratio_spread:
            return f"scale spread (IQR of log(anchor / network depth)) {q75 - q25:.2f} > gross_log_ratio_spread " \
                   f"{cfg.gross_log_ratio_spread:g}"
        if rho < cfg.min_rank_correlation and q75 - q25 > cfg.max_log_ratio_spread:
            return f"anchor depth vs network depth rank correlation {rho:.2f} < min_rank_correlation " \
                   f"{cfg.min_rank_correlation:g} with a scale spread (IQR of log ratio) {q75 - q25:.2f} > " \
                   f"max_log_ratio_spread {cfg.max_log_ratio_spread:g}"
    ok = np.isfinite(depth_at) & (depth_at > 0) & (z > 0)
    if ok.sum() == 0:
        return "no anchor lands on a valid output pixel"
    res = float(np.median(np.abs(np.log(depth_at[ok] / z[ok]))))
    if res > cfg.max_anchor_residual:
        return f"median anchor log residual {res:.3f} > max_anchor_residual {cfg.max_anchor_residual:g}"
    s = scale.reshape(-1)[::7]  # every 7th pixel: the same percentiles within a fraction of a percent
    s = s[np.isfinite(s) & (s > 0)]
    if s.size:
        lo, hi = np.percentile(s, [1, 99])
        if hi / max(lo, 1e-30) > cfg.max_scale_ratio:
            return f"scale field spans {hi / max(lo, 1e-30):.3g}x (p99/p1) > max_scale_ratio {cfg.max_scale_ratio:g}"
    return ""


def _holdout_model(family: str) -> dict:
    """How true AbsRel relates to held-out-ring AbsRel for the family (see
    :func:`core.selfval.estimate_abs_rel`; ``tuned/holdout.yaml``, fitted on validation
    scenes by ``selfval_check --fit``); {} = the held-out figure as it is."""
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parent / "tuned" / "holdout.yaml"
    if not path.is_file():
        return {}
    return dict((yaml.safe_load(path.read_text()) or {}).get("model", {}).get(family, {}))


def validate_method(name: str) -> str:
    if name not in PIPELINE_METHODS:
        raise ValueError(f"method {name!r} is not available here; choose one of {', '.join(PIPELINE_METHODS)}")
    return name


class MetricDepthPipeline:
    def __init__(self, config: PipelineConfig | None = None, backend=None) -> None:
        self.cfg = cfg = config or PipelineConfig()
        validate_method(cfg.method)
        if cfg.gate_policy not in GATE_POLICIES:
            raise ValueError(f"gate_policy must be one of {GATE_POLICIES}, got {cfg.gate_policy!r}")
        if cfg.generator_backend not in GENERATOR_BACKENDS:
            raise ValueError(f"generator_backend must be one of {GENERATOR_BACKENDS}, got {cfg.generator_backend!r}")
        if cfg.below_min_anchors not in BELOW_MIN:
            raise ValueError(f"below_min_anchors must be one of {BELOW_MIN}, got {cfg.below_min_anchors!r}")
        self.device = resolve_device(cfg.device)
        self.backend = backend or load_backend(cfg.mde, self.device)
        self.tuned = load_tuned(cfg.tuned)  # read once: the per-frame path never touches files
        self._aligners: dict[str, object] = {}
        self.calibration = load_uncertainty(cfg.uncertainty)  # {method: UncertaintyModel}
        self._prior: dict | None = None  # the last basis frame's weights (temporal_prior)
        if cfg.self_validation not in SELF_VALIDATION:
            raise ValueError(f"self_validation must be one of {SELF_VALIDATION}, got {cfg.self_validation!r}")
        self._sv_frame = 0
        self._sv_weights: np.ndarray | None = None  # blend weights from the last cross-validation
        self._sv_names: list[str] = []
        self.holdout_model = _holdout_model(cfg.tuned if cfg.tuned in ("street", "indoor") else cfg.uncertainty)
        self._edges: torch.Tensor | None = None
        self._watch_frame = 0
        self._watchdog = None  # built on first use (calibration_watchdog can be switched on at run time)
        self.generator_kind = ""  # basis: "own" (shipped for this network), "universal" or "checkpoint"
        self.generator_path = ""
        self.aligner(cfg.method)  # load now: a bad checkpoint fails at start, not on the first frame
        self.adapter = self._start_adaptation() if cfg.adapt else None

    def _start_adaptation(self):
        """The background fine-tuning of the basis generator (``adapt``), resumed from the user
        cache when this network and base generator were adapted before."""
        from .adaptation import AdaptConfig, Adapter

        if self.cfg.method != "basis" or self.cfg.generator_backend != "torch":
            raise ValueError(f"adapt needs method basis with generator_backend torch (the generator is fine-tuned "
                             f"in torch); got method {self.cfg.method!r}, generator_backend "
                             f"{self.cfg.generator_backend!r}")
        al = self.aligner("basis")
        identity = {**self.backend.identity, "generator": Path(self.generator_path).name}
        base_kind = self.generator_kind

        def swap(gen) -> None:  # one reference: a frame in flight finishes with the old model
            al.generator = gen
            self.generator_kind = f"{base_kind}+adapted"  # diagnostics: `generator`

        ad = Adapter(al.generator, identity, AdaptConfig(
            duty=self.cfg.adapt_duty, max_frames=self.cfg.adapt_max_frames,
            max_memory_mb=self.cfg.adapt_max_memory_mb, cache_dir=self.cfg.adapt_cache), on_swap=swap,
            device=self.device)
        ad.start()
        return ad

    def close(self) -> None:
        """Stop background work (the adaptation thread)."""
        if self.adapter is not None:
            self.adapter.stop()

    def aligner(self, name: str, extra: dict | None = None):
        """The method's aligner (built once); ``extra``: options on top of its tuned ones, in
        an instance of its own (e.g. a self-validation candidate's)."""
        if extra and name != "basis":
            key = f"{name}@{sorted(extra.items())}"
            if key not in self._aligners:
                self._aligners[key] = make(name, **{**tuned_options(self.tuned, "rings", name), **extra})
            return self._aligners[key]
        if name not in self._aligners:
            opts = {}
            if name == "basis":
                from .checkpoints import shipped_generator_for

                if self.cfg.checkpoint:
                    ckpt, self.generator_kind = self.cfg.checkpoint, "checkpoint"
                else:  # the network's own shipped generator, else the universal one (any network)
                    ckpt, self.generator_kind = shipped_generator_for(self.backend, self.cfg.generator_regime)
                self.generator_path = str(ckpt)
                opts = {"checkpoint": ckpt, "device": self.device, "ridge": self.cfg.ridge, "robust": self.cfg.robust}
                if self.cfg.generator_backend == "onnx":
                    from .export import load_onnx_generator

                    opts = {"generator": load_onnx_generator(ckpt, torch.get_num_threads()), "ridge": self.cfg.ridge,
                            "robust": self.cfg.robust}
            else:  # baselines run as tuned on LiDAR ring patterns (config tuned_baselines)
                opts = tuned_options(self.tuned, "rings", name)
            al = make(name, **opts)
            if name == "basis":
                from .checkpoints import check_generator_mde

                check_generator_mde(al.generator.config, self.backend, self.cfg.allow_mde_mismatch,
                                    what=f"generator {ckpt}")
            self._aligners[name] = al
        al = self._aligners[name]
        if name == "basis":
            al.ridge, al.robust = self.cfg.ridge, self.cfg.robust
            res = tuned_options(self.tuned, "rings", "basis-res") if self.cfg.residual else {}
            al.residual_bandwidth = res.get("residual_bandwidth", 0.0)
            al.residual_shrink = res.get("residual_shrink", 1.0)
        return al

    @property
    def has_prior(self) -> bool:
        """A temporal prior is on and holds a previous frame's weights (a frame without a
        usable cloud can still be aligned with them)."""
        return bool(self.cfg.temporal_prior and self._prior is not None)

    def project(self, points: np.ndarray, K: np.ndarray, T_cam_lidar: np.ndarray,
                size: tuple[int, int], rings: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor, str]:
        """LiDAR -> pixel anchors ``(uv, z, reason)``; ``reason`` is non-empty when unusable.
        With ``rings`` (one id per point) the anchors' ring ids are kept in ``self.anchor_rings``."""
        pts = np.asarray(points, dtype=np.float32)
        self.anchor_rings = None
        if pts.ndim != 2 or pts.shape[0] == 0:
            return torch.zeros(0, 2), torch.zeros(0), "empty point cloud"
        # project_points drops non-finite points itself: no compaction here
        out = project_points(pts, torch.as_tensor(T_cam_lidar), torch.as_tensor(K), size,
                             min_depth=self.cfg.min_depth, occlusion_kernel=self.cfg.occlusion_kernel,
                             return_index=rings is not None)
        uv, z = out[0], out[1]
        if rings is not None:
            self.anchor_rings = np.asarray(rings)[out[2].numpy()]
        if len(z):
            return uv, z, ""
        if not np.isfinite(pts[:, :3]).all(1).any():
            return uv, z, "point cloud has no finite points"
        return uv, z, "no LiDAR point projects into the image"

    def predict(self, rgb: np.ndarray) -> tuple[torch.Tensor, torch.Tensor, float]:
        """MDE depth ``(H, W)`` and features on the pipeline's device, and seconds taken."""
        t1 = time.perf_counter()
        mde, feats = self.backend.predict(rgb)
        if self.device.type == "cuda":
            torch.cuda.synchronize()
        return mde[0].to(self.device), feats.to(self.device), time.perf_counter() - t1

    def align(self, mde: torch.Tensor, feats: torch.Tensor, uv: torch.Tensor, z: torch.Tensor,
              method: str | None = None, timings: dict | None = None, stamp: float | None = None,
              rings: np.ndarray | None = None) -> FrameOutput:
        """Run one aligner on a predicted frame, with the min_anchors policy, the sanity gate,
        the uncertainty and NaN policy and (``temporal_prior``) the previous frame's weights.

        ``stamp`` (seconds) is the frame's time, for the prior's decay; None = no prior.
        ``rings`` (one id per anchor) enables ``self_validation``.
        """
        cfg = self.cfg
        t = dict(timings or {})
        method = method or cfg.method
        self._edges = None  # the network depth's edge map, shared by the edge filter and the uncertainty
        if cfg.edge_filter_ratio > 1 and len(z):
            t0 = time.perf_counter()
            self._edges = depth_spread(mde)
            keep = edge_filter(uv, mde, ratio=cfg.edge_filter_ratio, spread=self._edges)
            uv, z = uv[keep], z[keep]
            if rings is not None:
                rings = np.asarray(rings)[keep.cpu().numpy()]
            t["edge_filter"] = time.perf_counter() - t0
        n = len(z)
        fallback = ""
        use_prior = method == "basis" and cfg.temporal_prior and stamp is not None
        prior = self._prior if use_prior else None
        if prior is not None and not (0 <= stamp - prior["stamp"] <= cfg.prior_max_age):
            prior = self._prior = None  # too old, or the clock went back (bag loop)
        if n < cfg.min_anchors:
            if prior is not None:
                return self._from_prior(mde, feats, prior, n, t, stamp - prior["stamp"])
            if n == 0:
                return FrameOutput(None, None, 0, NO_ANCHORS, "no LiDAR anchor left in the image", float("nan"), t)
            if cfg.below_min_anchors == "skip":
                return FrameOutput(None, None, n, "skip", f"{n} anchors < min_anchors {cfg.min_anchors}",
                                   float("nan"), t)
            method, fallback = "global-scale", "global"
        al = self.aligner(method)
        if method == "basis":
            al.prior_weights = prior["weights"] if prior is not None else None
            al.prior_strength = cfg.prior_strength * float(np.exp(-(stamp - prior["stamp"]) / max(cfg.prior_decay, 1e-9))) \
                if prior is not None else 0.0
        res = al.fit(mde, uv.to(self.device), z.to(self.device), features=feats)
        for k in ("generator", "solve", "apply"):
            t[k] = res.timings.get(k, 0.0) + (res.timings.get("prepare", 0.0) if k == "solve" else 0.0)
        if res.fallback[0] == NO_ANCHORS:
            return FrameOutput(None, None, 0, NO_ANCHORS, "no usable anchor (all invalid)", float("nan"), t)
        if res.fallback[0] and not fallback:
            fallback = res.fallback[0]
        sv = {}
        if cfg.self_validation != "off" and rings is not None and not fallback and len(z) >= 2 * cfg.min_anchors:
            t0 = time.perf_counter()
            res, sv = self._self_validate(method, al, res, mde, feats, uv.to(self.device), z.to(self.device), rings)
            t["self_validation"] = time.perf_counter() - t0
        lam = res.extras.get("lambda")
        uvn, zn = uv.cpu().numpy(), z.cpu().numpy()
        depth_t = res.depth
        scale = res.scale.float().cpu().numpy()  # (a conversion: the node's overhead, not the gate's)
        t0 = time.perf_counter()
        gate = ""
        if cfg.gate:
            uvl = uv.long().to(mde.device)
            mde_at = mde[uvl[:, 1], uvl[:, 0]].float().cpu().numpy()
            at = depth_t[uvl[:, 1], uvl[:, 0]].float().cpu().numpy()  # the output at the anchors
            gate = check_alignment(at, scale, mde_at, zn, cfg)
        t["gate"] = time.perf_counter() - t0
        if gate and cfg.gate_policy == "skip":
            return FrameOutput(None, None, int(res.anchors_used[0]), "skip", f"{GATE_MESSAGE} ({gate})",
                               float(res.residual[0]), t, gate=gate)
        t0 = time.perf_counter()
        unc_method = "global-scale" if fallback else method
        sigma_t = self._sigma(unc_method, res, mde, uv, z)
        depth, sigma, share = self._finish(depth_t, sigma_t, z, self._sky(mde, feats))
        t["uncertainty"] = time.perf_counter() - t0
        if "rings" in sv:
            from .core.selfval import estimate_abs_rel, mean_relative_sigma

            sv["estimated"] = estimate_abs_rel(self.holdout_model, sv["holdout"], sv["rings"],
                                               mean_relative_sigma(sigma, depth))
        if use_prior and "solution" in res.extras and not fallback:
            self._prior = {"weights": res.extras["weights"].detach(), "stamp": stamp, "solution": res.extras["solution"],
                           "uv": uv, "z": z, "correction": res.extras.get("residual_field")}
        return FrameOutput(depth, scale, int(res.anchors_used[0]), fallback, "", float(res.residual[0]), t,
                           uvn, zn, float(lam[0]) if lam is not None else float("nan"), gate, sigma, share,
                           sv.get("holdout", float("nan")), sv.get("estimated", float("nan")), sv.get("weights", {}))

    def _self_validate(self, method: str, al, res, mde, feats, uv, z, rings) -> tuple[object, dict]:
        """Every ``self_validation_every``-th frame, cross-validate ``method`` (and, for
        ``blend``, the candidates) on whole held-out rings; ``blend`` publishes the stacked
        candidates with the last weights found. Returns the result to publish and what to
        report (``holdout``: the published fit's held-out AbsRel, ``weights``)."""
        from .core.generator import BasisMaps
        from .core.selfval import CANDIDATE_OPTIONS, Candidate, blend_fits, validate

        cfg = self.cfg
        names = [method] + ([n for n in cfg.self_validation_candidates.split(",") if n and n != method]
                            if cfg.self_validation == "blend" else [])
        cands = []
        for n in names:
            a = al if n == method else self.aligner(n, CANDIDATE_OPTIONS.get(n))
            kw = {}
            if n == "basis":
                E = res.extras["basis"] if n == method else None
                kw = {"basis_maps": BasisMaps(E, E, res.extras["gates"], tuple(mde.shape[-2:]))} if E is not None \
                    else {"features": feats}
            cands.append(Candidate(n, a, kw))
        out = {}
        if names != self._sv_names:
            self._sv_names, self._sv_weights, self._sv_frame = names, None, 0
        if self._sv_frame % max(1, cfg.self_validation_every) == 0:
            saved = getattr(al, "prior_weights", None)
            if saved is not None:
                al.prior_weights = None  # the cross-validation fits a batch of folds, without the prior
            try:
                self._sv_weights, sv = validate(cands, mde, uv, z, rings)
            finally:
                if saved is not None:
                    al.prior_weights = saved
            out["holdout"] = sv.blend_abs_rel if cfg.self_validation == "blend" else sv.holdout_abs_rel[method]
            out["rings"] = sv.rings  # the estimate needs the published sigma too: made in align()
        self._sv_frame += 1
        if cfg.self_validation == "blend" and self._sv_weights is not None:
            res = blend_fits(cands, self._sv_weights, mde, uv, z, done={0: res})
            w = np.asarray(self._sv_weights).reshape(-1, len(names))
            out["weights"] = {n: round(float(x), 3) for n, x in zip(names, w[0])}
            if len(w) > 1:  # above and below the anchors (core.selfval.outside_span)
                out["weights"].update({f"{n}_outside": round(float(x), 3) for n, x in zip(names, w[1])})
        return res, out

    def _sigma(self, method: str, res, mde: torch.Tensor, uv: torch.Tensor, z: torch.Tensor,
               growth: float = 0.0) -> torch.Tensor | None:
        """One standard deviation of depth ``(H, W)`` from the method's calibration (None
        without one); ``growth`` is added in quadrature to the log-sigma (a prior's age)."""
        key = "basis-res" if method == "basis" and self.cfg.residual else method
        model = self.calibration.get(key)
        if model is None:
            return None
        opts = tuned_options(self.tuned, "rings", method) if method != "basis" else {}
        feats = uncertainty_features(method, res, mde, uv.to(mde.device), z.to(mde.device), options=opts,
                                     needed=model.needed(), edges=self._edges, coarse=True)
        ls = model.log_sigma(feats)
        if growth > 0:
            ls = (ls.square() + growth ** 2).sqrt()
        depth = res.depth.unsqueeze(0) if res.depth.dim() == 2 else res.depth
        return (depth * ls)[0]

    def _sky(self, mde: torch.Tensor, feats: torch.Tensor) -> torch.Tensor | None:
        """Pixels the network's sky head calls sky ``(H, W)`` bool, or None (no head, or off)."""
        if not self.cfg.remove_sky:
            return None
        fn = getattr(self.backend, "sky_mask", None)
        return fn(mde, feats) if callable(fn) else None

    def _finish(self, depth_t: torch.Tensor, sigma_t: torch.Tensor | None,
                z: torch.Tensor, sky: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray | None, float]:
        """The NaN policy (no valid estimate; with ``sky``, the sky too) and max_depth (+inf,
        too far): REP 118."""
        cfg = self.cfg
        bad = nan_policy(depth_t, sigma_t, z.to(depth_t.device), None, cfg.max_relative_uncertainty,
                         cfg.max_extrapolation)[0]
        if sky is not None:
            bad = bad | sky.to(bad.device).view_as(bad)
        depth = torch.where(bad, torch.full_like(depth_t, float("nan")), depth_t).float().cpu().numpy()
        sigma = None
        if sigma_t is not None:
            sigma = torch.where(bad | ~torch.isfinite(depth_t), torch.full_like(sigma_t, float("nan")),
                                sigma_t).float().cpu().numpy()
        if cfg.max_depth > 0:
            far = depth > cfg.max_depth
            depth = np.where(far, np.inf, depth).astype(np.float32)
            if sigma is not None:
                sigma = np.where(far, np.inf, sigma).astype(np.float32)
        return depth, sigma, float(bad.float().mean())

    def _from_prior(self, mde: torch.Tensor, feats: torch.Tensor, prior: dict, n: int, t: dict,
                    age: float) -> FrameOutput:
        """A frame without (enough) anchors: the previous frame's weights on this frame's maps.

        Its sigma is the previous anchors' (where they were) grown in quadrature by
        ``prior_sigma_growth`` per second of age: the scene has moved since.
        """
        al = self.aligner("basis")
        t0 = time.perf_counter()
        depth_t, maps = al.depth_from_weights(mde, feats, prior["weights"], prior.get("correction"))
        t["generator"] = time.perf_counter() - t0
        res = SimpleNamespace(depth=depth_t, extras={"solution": prior["solution"],
                                                     "basis": maps.E.to(depth_t.device).float()})
        sigma_t = self._sigma("basis", res, mde, prior["uv"], prior["z"], growth=self.cfg.prior_sigma_growth * age)
        depth, sigma, share = self._finish(depth_t, sigma_t, prior["z"], self._sky(mde, feats))
        scale = (depth_t / mde).float().cpu().numpy()
        return FrameOutput(depth, scale, n, "prior", "", float("nan"), t, sigma=sigma, invalid_share=share)

    def process(self, rgb: np.ndarray, K: np.ndarray, points: np.ndarray, T_cam_lidar: np.ndarray,
                stamp: float | None = None, rings: np.ndarray | None = None) -> FrameOutput:
        """Align one frame. Never raises on bad sensor data: a skipped frame says why.

        ``rings``: ring id of every point (the cloud's ``ring`` field, or
        :func:`core.rings.rings_from_scan_order`); needed by ``self_validation``."""
        t0 = time.perf_counter()
        watch = self.cfg.calibration_watchdog and self._watch_due(T_cam_lidar)
        shaped = getattr(points, "ndim", 0) == 2 and points.shape[0] > 0 and points.shape[1] >= 3
        need_rings = self.cfg.self_validation != "off" or self.adapter is not None
        if (need_rings or watch) and rings is None and shaped:
            from .core.rings import rings_from_scan_order

            with np.errstate(invalid="ignore"):  # NaN returns get a ring id too; the projection drops them
                rings = rings_from_scan_order(np.asarray(points, np.float32))
        uv, z, reason = self.project(points, K, T_cam_lidar, rgb.shape[:2], rings if need_rings else None)
        t = {"projection": time.perf_counter() - t0}
        health = self.watch_extrinsic(rgb, points, rings, K, T_cam_lidar, t, check=watch) \
            if self.cfg.calibration_watchdog else None
        if reason and not (self.has_prior and stamp is not None):
            fb = NO_ANCHORS if reason.startswith("no LiDAR") else "skip"
            out = FrameOutput(None, None, 0, fb, reason, float("nan"), t)
        else:
            mde, feats, t["mde"] = self.predict(rgb)
            anchor_rings = self.anchor_rings
            out = self.align(mde, feats, uv, z, timings=t, stamp=stamp,
                             rings=anchor_rings if self.cfg.self_validation != "off" else None)
            if self.adapter is not None and out.depth is not None and not out.gate:
                t1 = time.perf_counter()
                self.adapter.observe(mde, feats, uv, z, anchor_rings)  # frames the gate passed only
                out.timings["adapt_buffer"] = time.perf_counter() - t1
        out.extrinsic = health
        return out

    def _watch_due(self, T_cam_lidar: np.ndarray | None = None) -> bool:
        """This frame is a calibration watchdog check: every frame until the extrinsic looks
        right, then every ``calibration_watchdog_every``-th (:meth:`ExtrinsicWatchdog.due`)."""
        return self.watchdog.due(T_cam_lidar, self._watch_frame, max(1, self.cfg.calibration_watchdog_every))

    @property
    def extrinsic_health(self):
        """The watchdog's current :class:`Health`, or None when it is off or has seen no frame."""
        if not self.cfg.calibration_watchdog or self._watchdog is None:
            return None
        return self._watchdog.health

    @property
    def watchdog(self):
        """The calibration watchdog (:class:`core.extrinsic_watch.ExtrinsicWatchdog`)."""
        if self._watchdog is None:
            from .core.extrinsic_watch import ExtrinsicWatchdog

            self._watchdog = ExtrinsicWatchdog(device=self.device)
        return self._watchdog

    def watch_extrinsic(self, rgb: np.ndarray, points: np.ndarray, rings: np.ndarray | None, K: np.ndarray,
                        T_cam_lidar: np.ndarray, timings: dict | None = None, check: bool | None = None):
        """On the watchdog's check frames (:meth:`_watch_due`; ``check``: already decided for
        this frame), add this frame's evidence; returns its current :class:`Health`. Never
        raises on bad sensor data."""
        if check is None:
            check = self._watch_due(T_cam_lidar)
        self._watch_frame = 0 if check else self._watch_frame + 1  # frames since the last check
        if check and points is not None and len(points) and rings is not None:
            t0 = time.perf_counter()
            try:
                self.watchdog.update(rgb, points, rings, K, T_cam_lidar)
            except (ValueError, RuntimeError, IndexError):  # malformed input: no evidence, the frame says why
                pass
            if timings is not None:
                timings["watchdog"] = time.perf_counter() - t0
        return self.watchdog.health
