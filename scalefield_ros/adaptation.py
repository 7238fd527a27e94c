"""On-robot adaptation: the basis generator fine-tuned on the robot's own LiDAR, in the background.

The node (``adapt: true``) hands every aligned frame's network output and projected LiDAR
(with ring ids) to an :class:`Adapter`. It keeps them in a bounded :class:`FrameBuffer`
(frames and megabytes both capped; every ``holdout_every``-th frame is kept for validation
only and never trained on). A background thread, within a duty cycle (its busy share of
wall-clock time), runs rounds:

1. a *student* copy of the generator takes ``steps`` optimiser steps on the training frames,
   supervised by held-out LiDAR rings only (the ``lidar_only`` loss of ``train``: anchors
   from some rings, the eq-24 dense loss on the others, eq 28 in all);
2. the student and the model in use are scored on the validation frames (held-out rings of
   held-out frames, the same anchors for both);
3. the student is swapped in only when it validates better by ``min_improvement``; never
   when worse. The adapted model is saved in the user cache under the network's identity,
   and a restarted node resumes from it.

The thread keeps its duty cycle step by step: after each optimiser step and each
validation chunk it rests ``busy (1 - duty) / duty``, so that no stretch of camera frames
meets an uninterrupted round. Pure torch and numpy; no ROS imports. The thread trains a copy: the camera thread keeps
using the model in use until the swap, which replaces one reference.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import threading
import time
from collections import deque
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch


@dataclass
class AdaptConfig:
    max_frames: int = 300  # frames buffered (training + validation)
    max_memory_mb: float = 256.0  # and at most this much of them (network depth and features as float16)
    holdout_every: int = 5  # every N-th frame validates only
    min_train_frames: int = 12  # before the first round
    min_val_frames: int = 3
    steps: int = 10  # optimiser steps per round
    batch: int = 4
    lr: float = 3e-4
    weight_decay: float = 1e-4
    duty: float = 0.1  # the thread's busy share of wall-clock time (it sleeps the rest)
    min_improvement: float = 0.01  # a student must validate this much better (relative) to be swapped in
    lidar_holdout: float = 0.2  # share of a frame's rings held out as its training targets
    ring_fraction: float = 0.6  # share of training images anchored by a random ring pattern (else a grid)
    cache_dir: str = ""  # "" = $XDG_CACHE_HOME or ~/.cache, /scalefield_ros/adapted
    seed: int = 0


@dataclass
class _Frame:
    seq: int
    mde: torch.Tensor  # (H, W) float16
    feats: torch.Tensor  # (C, h, w) float16; (0, 1, 1) for a generator without feature inputs
    uvz: np.ndarray  # (N, 3) float32 in-view LiDAR (pixel u, v; depth)
    ring: np.ndarray  # (N,) ring ids

    @property
    def nbytes(self) -> int:
        return (self.mde.numel() + self.feats.numel()) * 2 + self.uvz.nbytes + self.ring.nbytes


class FrameBuffer:
    """The recent frames, capped in count and bytes; every ``holdout_every``-th goes to
    validation. Over a cap, the oldest frame of the split over its share is evicted."""

    def __init__(self, max_frames: int, max_bytes: int, holdout_every: int) -> None:
        if max_frames < 2 or max_bytes <= 0 or holdout_every < 2:
            raise ValueError(f"adaptation buffer needs max_frames >= 2, max_memory_mb > 0 and holdout_every >= 2; "
                             f"got {max_frames}, {max_bytes / 2**20:g} MB, {holdout_every}")
        self.max_frames, self.max_bytes, self.holdout_every = max_frames, max_bytes, holdout_every
        self.train: deque[_Frame] = deque()
        self.val: deque[_Frame] = deque()
        self.bytes = 0
        self.seen = 0
        self._lock = threading.Lock()

    def add(self, frame: _Frame) -> None:
        with self._lock:
            (self.val if self.seen % self.holdout_every == 0 else self.train).append(frame)
            self.seen += 1
            self.bytes += frame.nbytes
            while len(self) > self.max_frames or self.bytes > self.max_bytes:
                # the oldest frame of whichever split is over its share (validation: 1 / holdout_every)
                over = len(self.val) > -(-(len(self) - 1) // self.holdout_every)
                q = self.val if (over or not self.train) else self.train
                if not q:
                    break
                self.bytes -= q.popleft().nbytes

    def snapshot(self) -> tuple[list[_Frame], list[_Frame]]:
        with self._lock:
            return list(self.train), list(self.val)

    def __len__(self) -> int:
        return len(self.train) + len(self.val)


def cache_path(identity: dict, cache_dir: str = "") -> Path:
    """Where the adapted generator of a network (and base generator) lives in the user cache."""
    root = Path(cache_dir) if cache_dir else (Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache"))
                                              / "scalefield_ros" / "adapted")
    key = hashlib.sha1(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:12]
    name = "".join(c if c.isalnum() or c in "-_." else "_" for c in str(identity.get("name", "mde")))[:40]
    return root / f"{name}_{key}"


class Adapter:
    """Buffer, background fine-tuning, validated swaps and the cache (module docstring).

    ``generator``: the model in use (it is never modified; a swap replaces it). ``identity``:
    what the cache is keyed by (the network's identity and the base generator). ``on_swap``
    receives each new model in use.
    """

    def __init__(self, generator, identity: dict, config: AdaptConfig | None = None, on_swap=None,
                 device: torch.device | str = "cpu") -> None:
        from .train import TrainConfig

        self.cfg = cfg = config or AdaptConfig()
        if not 0 < cfg.duty <= 1:
            raise ValueError(f"adapt duty must be in (0, 1], got {cfg.duty}")
        self.device = torch.device(device)
        self.identity = dict(identity)
        self.buffer = FrameBuffer(cfg.max_frames, int(cfg.max_memory_mb * 2**20), cfg.holdout_every)
        self.current = generator
        self.on_swap = on_swap
        self.path = cache_path(self.identity, cfg.cache_dir)
        self.rounds = self.swaps = self.steps_done = 0
        self.current_holdout = self.student_holdout = float("nan")
        self.busy_s = 0.0  # seconds of work (rests excluded)
        self.paced = False
        self.started = time.monotonic()
        self.resumed = False
        self.last_error = ""
        self._tcfg = TrainConfig(lidar_only=True, ring_fraction=cfg.ring_fraction, ridge="gcv", batch=cfg.batch,
                                 lidar_holdout=cfg.lidar_holdout, regime="medium", lr=cfg.lr, seed=cfg.seed)
        self._resume()
        self.student = copy.deepcopy(self.current).to(self.device)
        self._opt = torch.optim.AdamW(self.student.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self._rng = np.random.default_rng(cfg.seed)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one round at a time

    # -- the camera thread's side --------------------------------------------------------
    def observe(self, mde: torch.Tensor, feats: torch.Tensor | None, uv: torch.Tensor, z: torch.Tensor,
                rings: np.ndarray | None) -> None:
        """Buffer one aligned frame: the network's depth ``(1, H, W)`` / ``(H, W)``, its
        features, the anchors' pixels ``(N, 2)`` and depths ``(N,)``, and their ring ids (a
        frame without ring ids cannot be split by ring and is not kept)."""
        if rings is None or len(z) < 8 or len(np.unique(rings)) < 2:
            return
        d = mde.detach().reshape(mde.shape[-2:]).to("cpu", torch.float16)
        f = (feats.detach().reshape(feats.shape[-3:]).to("cpu", torch.float16)
             if feats is not None and self.current.config.feature_channels else torch.zeros(0, 1, 1, dtype=torch.float16))
        uvz = np.concatenate([uv.detach().cpu().numpy().reshape(-1, 2), z.detach().cpu().numpy().reshape(-1, 1)], 1)
        self.buffer.add(_Frame(self.buffer.seen, d, f, uvz.astype(np.float32), np.asarray(rings).astype(np.int32)))

    # -- rounds ------------------------------------------------------------------------
    def _items(self, frames: list[_Frame]):
        from .train import _Item

        items = []
        for fr in frames:
            h, w = fr.mde.shape
            it = _Item(f"adapt{fr.seq}", fr.mde.float(), fr.feats.float(), torch.zeros(h, w),
                       torch.zeros(h, w, dtype=torch.bool))
            it.lidar = (fr.uvz, fr.ring)
            it.use_lidar_targets(fr.seq, self.cfg.lidar_holdout)  # seeded by the frame: the same split every round
            items.append(it)
        return items

    def _pace(self, busy_s: float) -> None:
        """The duty cycle, kept at the granularity of one optimiser step or one validation
        chunk: after ``busy_s`` of work, rest ``busy_s (1 - duty) / duty`` (an uninterrupted
        round would slow every frame it overlaps). Only the background thread rests."""
        self.busy_s += busy_s
        if self.paced and not self._stop.is_set():
            self._stop.wait(busy_s * (1 - self.cfg.duty) / self.cfg.duty)

    def holdout_error(self, gen, frames: list[_Frame]) -> float:
        """AbsRel on the held-out rings of ``frames`` (fixed anchors per frame)."""
        return self.holdout_errors([gen], frames)[0]

    def holdout_errors(self, gens: list, frames: list[_Frame], chunk: int = 4) -> list[float]:
        """:meth:`holdout_error` of every model in ``gens`` on the same frames and anchors, in
        paced chunks (each chunk's items are built once for all the models)."""
        from .train import evaluate_items

        was = [g.training for g in gens]
        total, n = np.zeros(len(gens)), np.zeros(len(gens))
        try:
            for i in range(0, len(frames), chunk):
                if self.paced and self._stop.is_set():
                    return [float("nan")] * len(gens)  # stopping: no verdict, so no swap
                t0 = time.perf_counter()
                items = [it for it in self._items(frames[i:i + chunk]) if bool(it.valid.any())]
                for k, g in enumerate(gens if items else []):
                    rel = float(evaluate_items(g, items, self._tcfg, self.device)["abs_rel"])
                    if np.isfinite(rel):
                        total[k], n[k] = total[k] + rel * len(items), n[k] + len(items)
                self._pace(time.perf_counter() - t0)
        finally:
            for g, w in zip(gens, was):
                g.train(w)
        return [float(t / c) if c else float("nan") for t, c in zip(total, n)]

    def round(self) -> dict | None:
        """One round: train the student, validate it against the model in use, swap when
        better. None while the buffer holds too few frames."""
        from .train import step_loss

        cfg = self.cfg
        train, val = self.buffer.snapshot()
        if len(train) < cfg.min_train_frames or len(val) < cfg.min_val_frames:
            return None
        with self._lock:
            t0 = time.perf_counter()
            self.student.train()
            by_shape: dict[tuple, list[_Frame]] = {}
            for fr in train:
                by_shape.setdefault(tuple(fr.mde.shape), []).append(fr)
            group = max(by_shape.values(), key=len)  # one image size per batch
            for _ in range(cfg.steps):
                if self.paced and self._stop.is_set():
                    return None  # stopping: drop the round, the model in use stays
                t1 = time.perf_counter()
                pick = self._rng.choice(len(group), size=min(cfg.batch, len(group)), replace=False)
                terms, _ = step_loss(self.student, self._items([group[i] for i in pick]), self._tcfg, self._rng,
                                     self.device)
                self._opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                torch.nn.utils.clip_grad_norm_(self.student.parameters(), 1.0)
                self._opt.step()
                self.steps_done += 1
                self._pace(time.perf_counter() - t1)
            self.student.eval()
            cur, stu = self.holdout_errors([self.current, self.student], val)
            self.rounds += 1
            self.current_holdout, self.student_holdout = cur, stu
            swapped = bool(np.isfinite(stu) and np.isfinite(cur) and stu < cur * (1 - cfg.min_improvement))
            if swapped:
                new = copy.deepcopy(self.student).eval()
                for p in new.parameters():
                    p.requires_grad_(False)
                self.current = new
                self.swaps += 1
                self.current_holdout = stu
                self.save()
                if self.on_swap is not None:
                    self.on_swap(new)
            return {"round": self.rounds, "current": cur, "student": stu, "swapped": swapped,
                    "train_frames": len(train), "val_frames": len(val), "seconds": time.perf_counter() - t0}

    # -- the background thread -----------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="scalefield_adapt", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def _run(self) -> None:
        self.paced = True  # the thread keeps the duty cycle; a synchronous round() runs flat out
        try:
            while not self._stop.is_set():
                try:
                    res = self.round()
                except Exception as exc:  # never take the node down: say it in diagnostics, try again later
                    res, self.last_error = None, f"{type(exc).__name__}: {exc}"
                if res is None:
                    self._stop.wait(1.0)  # too few frames yet
        finally:
            self.paced = False

    # -- cache -------------------------------------------------------------------------
    def save(self) -> Path:
        from .core.generator import save_generator

        return save_generator(self.current, self.path, {"adapted": {
            "identity": self.identity, "frames_seen": self.buffer.seen, "swaps": self.swaps, "rounds": self.rounds,
            "steps": self.steps_done, "holdout_abs_rel": self.current_holdout, "config": asdict(self.cfg),
            "saved": time.strftime("%Y-%m-%dT%H:%M:%S")}})

    def _resume(self) -> None:
        """Start from the cached adapted model of this identity, when there is one."""
        from .core.generator import load_generator

        meta_path = Path(str(self.path) + ".json")
        if not meta_path.is_file():
            return
        meta = json.loads(meta_path.read_text())
        if meta.get("adapted", {}).get("identity") != self.identity:
            return
        gen = load_generator(self.path, self.device).eval()
        for p in gen.parameters():
            p.requires_grad_(False)
        self.current = gen
        self.current_holdout = float(meta["adapted"].get("holdout_abs_rel", float("nan")))
        self.swaps = int(meta["adapted"].get("swaps", 0))
        self.resumed = True
        if self.on_swap is not None:
            self.on_swap(gen)

    def status(self) -> dict[str, str]:
        """Diagnostics keys (``adapt_*``)."""
        wall = max(time.monotonic() - self.started, 1e-9)
        return {"adapt_frames_buffered": str(len(self.buffer)), "adapt_frames_seen": str(self.buffer.seen),
                "adapt_buffer_mb": f"{self.buffer.bytes / 2**20:.1f}", "adapt_rounds": str(self.rounds),
                "adapt_swaps": str(self.swaps), "adapt_current_holdout_abs_rel": f"{self.current_holdout:.4f}",
                "adapt_candidate_holdout_abs_rel": f"{self.student_holdout:.4f}",
                "adapt_busy_share": f"{self.busy_s / wall:.3f}", "adapt_resumed": str(self.resumed).lower(),
                "adapt_model": str(self.path) + ".safetensors", **({"adapt_error": self.last_error}
                                                                   if self.last_error else {})}
