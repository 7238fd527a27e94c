"""The align node's parameters in one place: the table (names, defaults, descriptions,
ranges, which may change at run time), their validation, and what they mean for the
pipeline. The node, its lifecycle variant and ``replay`` all use this module; it has no
ROS imports, so offline tools read the node's defaults without rclpy.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from .pipeline import BELOW_MIN, GATE_POLICIES, GENERATOR_BACKENDS, PIPELINE_METHODS, SELF_VALIDATION, PipelineConfig


@dataclass(frozen=True)
class Param:
    name: str
    default: Any
    description: str
    dynamic: bool = False  # may change at run time (ros2 param set)


PARAMS: tuple[Param, ...] = (
    Param("method", "basis", f"aligner: one of {', '.join(PIPELINE_METHODS)}", True),
    Param("device", "auto", "torch device: auto (CUDA when available), cpu, cuda, cuda:1"),
    Param("torch_threads", 0, "torch CPU threads; 0 = automatic, max(1, min(4, cores // 2))"),
    Param("mde_backend", "embedded", "MDE backend: embedded, embedded:PATH or package.module:Class"),
    Param("generator_checkpoint", "", "basis generator checkpoint (.safetensors with .json); empty = shipped"),
    Param("generator_regime", "lidar", "which shipped generator when no checkpoint: lidar (K=30, trained for LiDAR "
          "scan lines, 4-128 rings), medium (K=30, grid anchors) or low (K=8, 10-15 anchors)"),
    Param("generator_backend", "torch", "basis generator runtime: torch, or onnx (ONNX Runtime; the file written by "
          "`python -m scalefield_ros.export`, or exported to the user cache on first use)"),
    Param("allow_mde_mismatch", False, "run a generator checkpoint trained for another MDE than mde_backend "
          "(refused by default; logged when allowed)"),
    Param("tuned_baselines", "street", "options of the baseline methods: street or indoor (the shipped tuned "
          "files), a YAML written by `python -m scalefield_ros.tune`, or empty for their defaults"),
    Param("robust_anchors", "tukey", "basis: outlier-robust weight solve, none, huber or tukey (iteratively "
          "reweighted in log space; one reweighting)", True),
    Param("residual_correction", True, "basis: add the local correction of the scale field from the anchors' "
          "residuals (our extension; options from tuned_baselines' rings entry); false = the paper's field", True),
    Param("ridge_policy", "gcv", "basis weight solve: gcv (lambda chosen per frame by generalised "
          "cross-validation, reported in diagnostics) or fixed (ridge_lambda, the paper's eq 14)", True),
    Param("ridge_lambda", 0.001, "fixed ridge lambda of the basis weight solve (eq 14) when ridge_policy is "
          "fixed, 0 < lambda <= 100", True),
    Param("min_anchors", 3, "fewer projected anchors than this -> below_min_anchors policy, >= 1", True),
    Param("below_min_anchors", "global", "policy under min_anchors: global (scale fit) or skip", True),
    Param("gate_policy", "skip", "a frame failing the sanity gate (anchors disagree with the network): skip "
          "(never published) or publish (published, diagnostics ERROR)", True),
    Param("min_rank_correlation", 0.0, "sanity gate: a frame fails when the Spearman correlation of anchor depth "
          "with network depth is below this (-1..1) and the scale spread exceeds max_log_ratio_spread", True),
    Param("max_log_ratio_spread", 0.5, "sanity gate: interquartile range of log(anchor / network depth) above "
          "which a low rank correlation fails the frame, > 0", True),
    Param("gross_log_ratio_spread", 3.0, "sanity gate: interquartile range of log(anchor / network depth) above "
          "which the frame fails whatever the rank correlation (a factor e^3 = 20 within the middle half of the "
          "anchors: misread cloud fields), > 0", True),
    Param("max_anchor_residual", 0.35, "sanity gate: largest median |log(depth / anchor)| after the fit, > 0", True),
    Param("max_scale_ratio", 100.0, "sanity gate: largest p99/p1 spread of the fitted scale field, > 1", True),
    Param("max_depth", 0.0, "depths beyond this (m) are published as +inf (REP 118); 0 = no limit", True),
    Param("edge_filter_ratio", 1.3, "drop LiDAR anchors on depth edges of the network's depth (mixed pixels, "
          "extrinsic and sync errors): where its 7x7 max/min exceeds this; <= 1 = keep all", True),
    Param("publish_uncertainty", True, "publish depth/metric/uncertainty (32FC1, one standard deviation of depth "
          "in metres)", True),
    Param("uncertainty_calibration", "street", "calibration of the uncertainty: street or indoor (shipped, fitted "
          "on validation scenes), a YAML written by `python -m scalefield_ros.calibrate`, or empty for none"),
    Param("max_relative_uncertainty", 0.4, "pixels whose sigma / depth exceeds this are published as NaN (no "
          "valid estimate, REP 118); needs the uncertainty calibration; 0 = off", True),
    Param("max_extrapolation", 1.1, "depths beyond this factor of the farthest anchor in view are published as "
          "NaN (no valid estimate, REP 118); 0 = off", True),
    Param("remove_sky", True, "pixels the network's sky head calls sky are NaN (no valid estimate): the embedded "
          "MDE puts the sky inside the LiDAR's range; other backends may provide sky_mask(depth, features)", True),
    Param("temporal_prior", False, "basis: ridge toward the previous frame's weights instead of 0; a frame with "
          "too few anchors reuses them (diagnostics: fallback prior)", True),
    Param("prior_strength", 0.1, "temporal prior strength rho (added to lambda toward the previous weights), >= 0",
          True),
    Param("prior_decay", 1.0, "seconds: the prior's strength decays as exp(-age / prior_decay), > 0", True),
    Param("prior_max_age", 2.0, "seconds: an older prior is dropped (the below_min_anchors policy applies)", True),
    Param("prior_sigma_growth", 0.5, "uncertainty of a frame carried by the prior: log-sigma added (in quadrature) per "
          "second of the prior's age, >= 0", True),
    Param("self_validation", "blend", "cross-validate each N-th frame on whole held-out LiDAR rings: off, estimate "
          "(the method's held-out AbsRel in diagnostics as holdout_abs_rel: an online accuracy estimate) or blend "
          "(also stack the method with self_validation_candidates, weights in diagnostics)", True),
    Param("self_validation_every", 20, "self-validation: cross-validate every N-th frame (blend weights carry over), "
          ">= 1", True),
    Param("calibration_watchdog", True, "check the LiDAR-camera extrinsic across frames (LiDAR depth edges against "
          "image edges under small perturbations): OK / WARN / ERROR with the estimated error and a suggested "
          "correction in diagnostics; while ERROR no frame is reported OK", True),
    Param("calibration_watchdog_every", 4, "calibration watchdog: while the extrinsic looks right, check every N-th "
          "frame; every frame while collecting evidence (after a start or a new extrinsic), WARN or ERROR (evidence "
          "is pooled over the last 12 checks)", True),
    Param("adapt", False, "on-robot adaptation: fine-tune the basis generator on this robot's own LiDAR in a "
          "background thread; a candidate is swapped in only when it validates better on held-out rings of "
          "held-out frames; saved in the user cache by network identity and resumed on restart (docs/adaptation.md)"),
    Param("adapt_duty", 0.1, "adaptation: the background thread's busy share of wall-clock time, in (0, 1]"),
    Param("adapt_max_frames", 300, "adaptation: frames buffered (network depth, features, LiDAR), >= 10"),
    Param("adapt_max_memory_mb", 256.0, "adaptation: memory cap of the buffer (MB), > 0"),
    Param("adapt_cache", "", "adaptation: folder of the adapted models; empty = ~/.cache/scalefield_ros/adapted"),
    Param("self_validation_candidates", "grid-smooth,lwlr", "self-validation blend: the methods stacked with `method` "
          "(comma-separated pipeline methods)", True),
    Param("image_transport", "raw", "raw (sensor_msgs/Image) or compressed (CompressedImage on <image>/compressed)"),
    Param("qos_reliability", "best_effort", "subscriber QoS: best_effort (sensor data) or reliable"),
    Param("qos_depth", 5, "subscriber queue depth"),
    Param("sync_slop", 0.05, "max stamp difference (s) between image, camera info and cloud"),
    Param("sync_queue_size", 10, "messages kept per stream while synchronising"),
    Param("use_tf", True, "LiDAR->camera extrinsic from TF2 (URDF -> /tf_static, or /tf), frames from the messages' "
          "frame_id, looked up at the cloud's stamp, when tf2_ros imports; where TF has no transform (or tf2_ros is "
          "missing) the extrinsic_* parameters are used, with a warning"),
    Param("extrinsic_translation", [0.0, 0.0, 0.0],
          "LiDAR->camera optical frame translation t (m): p_cam = R p_lidar + t"),
    Param("extrinsic_rotation", [0.5, -0.5, 0.5, 0.5],
          "LiDAR->camera optical frame rotation R as quaternion x, y, z, w (default: x fwd/z up -> optical)"),
    Param("occlusion_kernel", 5, "pixels of the LiDAR occlusion filter window; 0 = off"),
    Param("publish_color", True, "also publish depth/scale_field/color (bgr8) for rviz"),
    Param("publish_points", False, "also publish depth/points: an organised PointCloud2 (x, y, z float32) in the "
          "camera optical frame from the metric depth and K, as depth_image_proc makes it", True),
)
PARAM_DEFAULTS = {p.name: p.default for p in PARAMS}
#: Numeric ranges, declared in the parameter descriptors (what `ros2 param describe` shows)
#: and checked by validate_param.
PARAM_RANGES: dict[str, tuple[float, float]] = {
    "torch_threads": (0, 256), "ridge_lambda": (1e-12, 100.0), "min_anchors": (1, 1_000_000),
    "min_rank_correlation": (-1.0, 1.0), "max_log_ratio_spread": (1e-6, 100.0),
    "gross_log_ratio_spread": (1e-6, 100.0), "max_anchor_residual": (1e-6, 100.0),
    "max_scale_ratio": (1.000001, 1e12), "max_depth": (0.0, 1e6), "qos_depth": (1, 10_000), "sync_slop": (0.0, 10.0),
    "sync_queue_size": (1, 10_000), "occlusion_kernel": (0, 63), "edge_filter_ratio": (0.0, 100.0),
    "max_relative_uncertainty": (0.0, 1e6), "max_extrapolation": (0.0, 1e6), "prior_strength": (0.0, 1e6),
    "prior_decay": (1e-3, 1e6), "prior_max_age": (0.0, 1e6), "prior_sigma_growth": (0.0, 1e3),
    "self_validation_every": (1, 1_000_000), "calibration_watchdog_every": (1, 1_000_000),
    "adapt_duty": (0.01, 1.0), "adapt_max_frames": (10, 1_000_000), "adapt_max_memory_mb": (1.0, 1e6),
}
#: Run-time parameters that are PipelineConfig fields of the same name.
RUNTIME_CONFIG = ("max_depth", "gate_policy", "min_rank_correlation", "max_log_ratio_spread", "gross_log_ratio_spread",
                  "max_anchor_residual",
                  "max_scale_ratio", "edge_filter_ratio", "max_relative_uncertainty", "max_extrapolation",
                  "temporal_prior", "prior_strength", "prior_decay", "prior_max_age", "prior_sigma_growth",
                  "self_validation", "self_validation_every", "self_validation_candidates", "calibration_watchdog", "remove_sky",
                  "calibration_watchdog_every")


_DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


def coerce_param(name: str, value: Any) -> Any:
    """An integer where a double is meant (``max_depth: 80`` in a YAML, ``ros2 param set ... 80``) is that double."""
    if isinstance(PARAM_DEFAULTS.get(name), float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def pipeline_config(params: dict[str, Any]) -> PipelineConfig:
    """The pipeline settings a set of node parameters means (missing ones take the node's defaults).

    Replay builds its pipeline through this too, so offline numbers are the node's numbers.
    """
    v = {**PARAM_DEFAULTS, **params}
    return PipelineConfig(
        method=v["method"], mde=v["mde_backend"], checkpoint=v["generator_checkpoint"],
        generator_regime=v["generator_regime"], generator_backend=v["generator_backend"],
        ridge="gcv" if v["ridge_policy"] == "gcv" else v["ridge_lambda"], robust=v["robust_anchors"],
        residual=v["residual_correction"], min_anchors=v["min_anchors"], below_min_anchors=v["below_min_anchors"],
        occlusion_kernel=v["occlusion_kernel"], device=v["device"], allow_mde_mismatch=v["allow_mde_mismatch"],
        tuned=v["tuned_baselines"], uncertainty=v["uncertainty_calibration"],
        adapt=v["adapt"], adapt_duty=v["adapt_duty"], adapt_max_frames=v["adapt_max_frames"],
        adapt_max_memory_mb=v["adapt_max_memory_mb"], adapt_cache=v["adapt_cache"],
        **{k: v[k] for k in RUNTIME_CONFIG})


def validate_param(name: str, value: Any) -> str | None:
    """None when ``value`` is acceptable for ``name``, else the reason."""
    default = PARAM_DEFAULTS.get(name)
    if isinstance(default, float) and (not isinstance(value, float) or value != value):
        return f"{name} must be a number, got {value!r}"
    if isinstance(default, bool) and not isinstance(value, bool):
        return f"{name} must be true or false, got {value!r}"
    if name == "method" and value not in PIPELINE_METHODS:
        return f"method must be one of {PIPELINE_METHODS}, got {value!r}"
    if name == "ridge_lambda" and not (isinstance(value, float) and 0 < value <= 100):
        return f"ridge_lambda must be a float in (0, 100], got {value!r}"
    if name == "robust_anchors" and value not in ("none", "huber", "tukey"):
        return f"robust_anchors must be none, huber or tukey, got {value!r}"
    if name == "ridge_policy" and value not in ("gcv", "fixed"):
        return f"ridge_policy must be gcv or fixed, got {value!r}"
    if name == "generator_backend" and value not in GENERATOR_BACKENDS:
        return f"generator_backend must be one of {GENERATOR_BACKENDS}, got {value!r}"
    if name == "gate_policy" and value not in GATE_POLICIES:
        return f"gate_policy must be one of {GATE_POLICIES}, got {value!r}"
    if name == "min_rank_correlation" and not (isinstance(value, float) and -1 <= value <= 1):
        return f"min_rank_correlation must be a float in [-1, 1], got {value!r}"
    if name in ("max_log_ratio_spread", "gross_log_ratio_spread", "max_anchor_residual") and not (isinstance(value, float) and value > 0):
        return f"{name} must be a float > 0, got {value!r}"
    if name == "max_scale_ratio" and not (isinstance(value, float) and value > 1):
        return f"max_scale_ratio must be a float > 1, got {value!r}"
    if name in PARAM_RANGES and isinstance(value, (int, float)) and not isinstance(value, bool):
        lo, hi = PARAM_RANGES[name]
        if not lo <= value <= hi:
            return f"{name} must be within [{lo:g}, {hi:g}], got {value!r}"
    if name == "torch_threads" and not (isinstance(value, int) and value >= 0):
        return f"torch_threads must be an integer >= 0 (0 = automatic), got {value!r}"
    if name == "min_anchors" and not (isinstance(value, int) and value >= 1):
        return f"min_anchors must be an integer >= 1, got {value!r}"
    if name == "max_depth" and not (isinstance(value, float) and value >= 0):
        return f"max_depth must be a float >= 0, got {value!r}"
    if name == "below_min_anchors" and value not in BELOW_MIN:
        return f"below_min_anchors must be one of {BELOW_MIN}, got {value!r}"
    if name == "device" and not _DEVICE.fullmatch(str(value)):
        return f"device must be auto, cpu, cuda, cuda:N or mps, got {value!r}"
    if name in ("extrinsic_translation", "extrinsic_rotation"):
        n = 3 if name == "extrinsic_translation" else 4
        what = "[x, y, z] in metres" if n == 3 else "a quaternion [qx, qy, qz, qw]"
        try:
            vals = [float(x) for x in value]
        except (TypeError, ValueError):
            return f"{name} must be {n} numbers, {what}; got {value!r}"
        if len(vals) != n or not all(math.isfinite(x) for x in vals):
            return f"{name} must be {n} finite numbers, {what}; got {list(value)!r}"
        if n == 4 and not 0.5 < math.sqrt(sum(x * x for x in vals)) < 2.0:
            return f"extrinsic_rotation must be a unit quaternion [qx, qy, qz, qw]; got {vals!r} (norm " \
                   f"{math.sqrt(sum(x * x for x in vals)):.3g})"
    if name == "self_validation" and value not in SELF_VALIDATION:
        return f"self_validation must be one of {SELF_VALIDATION}, got {value!r}"
    if name == "self_validation_candidates":
        bad = [m for m in str(value).split(",") if m and m not in PIPELINE_METHODS]
        if bad or not isinstance(value, str):
            return f"self_validation_candidates must be comma-separated methods of {PIPELINE_METHODS}, got {value!r}"
    if name == "image_transport" and value not in ("raw", "compressed"):
        return f"image_transport must be raw or compressed, got {value!r}"
    if name == "qos_reliability" and value not in ("best_effort", "reliable"):
        return f"qos_reliability must be best_effort or reliable, got {value!r}"
    return None


#: Run-time parameters the node itself (not the pipeline) acts on.
NODE_RUNTIME = ("publish_uncertainty", "publish_points")


def check_changes(changes: dict[str, Any]) -> str | None:
    """None when a ``ros2 param set`` of ``changes`` (name -> coerced value) may go ahead, else why not."""
    for name, value in changes.items():
        if name in PARAM_DEFAULTS and name not in {p.name for p in PARAMS if p.dynamic}:
            return f"{name} is read at start; restart the node"
        err = validate_param(name, value)
        if err:
            return err
    return None


def apply_changes(pipeline, changes: dict[str, Any], current: dict[str, Any]) -> str | None:
    """Apply validated run-time ``changes`` to ``pipeline`` (its config and, for ``method``,
    the aligner it loads); ``current`` holds the other parameters' values (the fixed
    lambda is kept while the policy is gcv). Returns why a change failed, or None."""
    cfg = pipeline.cfg
    for name, value in changes.items():
        if name == "method":
            try:
                pipeline.aligner(value)
            except Exception as exc:  # e.g. a missing checkpoint: refuse, keep the old method
                return f"cannot switch to {value}: {exc}"
            cfg.method = value
        elif name == "ridge_lambda":
            if cfg.ridge != "gcv":
                cfg.ridge = value
        elif name == "ridge_policy":
            cfg.ridge = "gcv" if value == "gcv" else changes.get("ridge_lambda", current["ridge_lambda"])
        elif name in ("min_anchors", "below_min_anchors"):
            setattr(cfg, name, value)
        elif name == "robust_anchors":
            cfg.robust = value
        elif name == "residual_correction":
            cfg.residual = value
        elif name in RUNTIME_CONFIG:
            setattr(cfg, name, value)
    return None
