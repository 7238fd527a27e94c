"""Latency of every stage and every aligner, measured in one run on one device.

    python -m scalefield_ros.bench --quick --out DIR      # ~4 min on 2 CPU cores (--skip-node: 3)
    python -m scalefield_ros.bench --out DIR --device cuda

Per-stage latency (LiDAR projection, embedded MDE, generator, solve, apply) and the whole
alignment (everything but the MDE: anchors in, metric depth out) for ``basis`` K=8/30/50,
``global``, ``piecewise``, ``lwlr``, ``grid`` and ``region``, with warm-up and repeats
(median and 10-90 % spread), CUDA synchronised. Sweeps: anchors N in {10, 100, 500, 2000}
at 640x192; resolution in {640x192, 1216x352, 1280x720} at N = 500; K in {8, 30, 50}.
Each aligner is also reported as a ratio to ``global`` measured in the same run, and a
log-log slope fits how its cost grows with N and with H*W.

``DIR/bench.json``::

    {"machine": str, "device": str, "quick": bool,
     "latency_ms": {ALIGNER: {"n{N}_{W}x{H}": median ms}},          # whole alignment
     "ratio_to_global": {ALIGNER: {"n{N}_{W}x{H}": float}},
     "spread_ms": {ALIGNER: {"n{N}_{W}x{H}": [p10, p90]}},
     "stages_ms": {"n{N}_{W}x{H}": {"projection", "mde", "generator_k8", ..., "solve_k8", "apply_k8", ...}},
     "peak_mem_mb": {ALIGNER: {...}},     # CUDA: max allocated; CPU: growth of the process high-water RSS
     "growth": {ALIGNER: {"anchors_exponent": float, "pixels_exponent": float}},
     "solver_ms": {...}, "projection_ms": {"10000": ms, ..., "2000000": ms},
     "offered_load": {"reliable": {"10" | "20" | "30": {delivered, dropped, latency_p50_ms, latency_p95_ms,
                                                       stages_ms, overhead_ms, overhead_parts_ms, ...}}},
     "fastdds_profile": str,
     "ratios": {"projection_100k_over_mde", "uncertainty_over_generator_solve_apply",
                "generator_onnx_over_torch", "watchdog_over_generator_solve_apply",
                "watchdog_patrol_over_generator_solve_apply", "node_overhead_over_stages"}}

plus ``DIR/bench.md`` (tables) and ``DIR/bench.png`` (latency vs N and vs pixels). The node
part (``offered_load``: the node in its own process over DDS, every output subscribed) is
left out with ``--skip-node``.
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import time
from pathlib import Path

import numpy as np
import torch

from .core import make
from .core.anchors import project_points
from .core.generator import BasisMapGenerator, GeneratorConfig, load_generator
from .pipeline import PipelineConfig
from .threads import add_threads_argument, set_threads
from .tuned import load_tuned, tuned_options

RESOLUTIONS = [(640, 192), (1216, 352), (1280, 720)]
ANCHORS = [10, 100, 500, 2000]
KS = [8, 30, 50]


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timeit(fn, device: torch.device, warmup: int, repeats: int) -> tuple[float, float, float, float]:
    """(median, p10, p90) in ms and peak memory in MB of ``fn()``."""
    for _ in range(warmup):
        fn()
    _sync(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        _sync(device)
        times.append(1000 * (time.perf_counter() - t))
    if device.type == "cuda":
        mem = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        mem = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - base) / 1024
    return float(np.median(times)), float(np.percentile(times, 10)), float(np.percentile(times, 90)), float(mem)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {torch.get_num_threads()} torch threads, torch {torch.__version__}"


class Scene:
    """A street frame at a resolution, its MDE outputs, labels and a LiDAR scan."""

    def __init__(self, w: int, h: int, backend, device: torch.device) -> None:
        from .data.synthetic import SyntheticWorld

        world = SyntheticWorld("street", 9100, width=w, height=h)
        f = world.frame(0)
        self.frame = f
        self.gt = np.nan_to_num(f.depth, nan=0.0)
        self.labels = torch.from_numpy(f.labels.astype(np.int64)).to(device)
        d, feats = backend.predict(f.rgb)
        self.mde = d[0].to(device)
        self.feats = feats.to(device)
        valid = np.argwhere((self.gt > 0.5) & (self.gt < 80))
        self.valid = valid

    def anchors(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        rng = np.random.default_rng(n)
        idx = self.valid[rng.choice(len(self.valid), size=n, replace=False)]
        uv = torch.tensor(idx[:, ::-1].copy(), dtype=torch.float32, device=device)
        z = torch.tensor(self.gt[idx[:, 0], idx[:, 1]], dtype=torch.float32, device=device)
        return uv, z


def build_aligners(device: torch.device, feature_channels: int, shipped: bool = True) -> dict:
    from .checkpoints import default_checkpoint

    al = {}
    torch.manual_seed(0)
    # Untrained generators of the same architecture cost the same as trained ones: used for
    # K=50 (none ships) and for every K when the MDE is not the embedded one.
    gens = {k: BasisMapGenerator(GeneratorConfig(num_basis=k, feature_channels=feature_channels)).to(device).eval()
            for k in KS}
    if shipped:
        gens[8] = load_generator(default_checkpoint("low"), device)
        gens[30] = load_generator(default_checkpoint("medium"), device)
    for k, g in gens.items():
        al[f"basis-k{k}"] = make("basis", generator=g)
    for name in ("global", "piecewise", "lwlr", "grid", "grid-smooth", "region"):
        al[name] = make(name, **tuned_options(load_tuned("street"), "rings", name))
    return al


def run(args: argparse.Namespace) -> dict:
    from .mde.backends import load_backend, resolve_device

    device = resolve_device(args.device)
    torch.manual_seed(0)
    backend = load_backend(args.mde, device)
    warm, reps = (1, 3) if args.quick else (3, 15)
    aligners = build_aligners(device, backend.feature_channels, shipped=args.mde == "embedded")
    points: list[tuple[int, tuple[int, int]]] = [(n, RESOLUTIONS[0]) for n in ANCHORS]
    points += [(500, r) for r in RESOLUTIONS[1:]]
    scenes = {r: Scene(r[0], r[1], backend, device) for r in RESOLUTIONS}
    lat: dict = {a: {} for a in aligners}
    spread: dict = {a: {} for a in aligners}
    mem: dict = {a: {} for a in aligners}
    stages: dict = {}
    onnx_gen = onnx_generator(aligners["basis-k30"].generator)
    for n, (w, h) in points:
        key = f"n{n}_{w}x{h}"
        sc = scenes[(w, h)]
        uv, z = sc.anchors(n, device)
        for name, al in aligners.items():
            kw = {"features": sc.feats} if name.startswith("basis") else {"regions": sc.labels} if name == "region" else {}
            med, p10, p90, mb = timeit(lambda: al.fit(sc.mde, uv, z, **kw), device, warm, reps)
            lat[name][key], spread[name][key], mem[name][key] = med, [p10, p90], mb
            print(f"{key:>16} {name:>10}: {med:8.2f} ms", flush=True)
        st = {}
        f = sc.frame
        pts = torch.from_numpy(f.points).to(device)
        T = torch.from_numpy(f.T_cam_lidar).to(device)
        K = torch.from_numpy(f.K).to(device)
        st["projection"] = timeit(lambda: project_points(pts, T, K, (h, w)), device, warm, reps)[0]
        st["mde"] = timeit(lambda: backend.predict(f.rgb), device, warm, reps)[0]
        # calibration watchdog (every frame while collecting evidence, then every N-th): the ring ids from the scan order when
        # the cloud has no ring field, then one check
        from .core.extrinsic_watch import ExtrinsicWatchdog
        from .core.rings import rings_from_scan_order

        st["watchdog_rings"] = timeit(lambda: rings_from_scan_order(f.points), device, warm, reps)[0]
        wd, rings = ExtrinsicWatchdog(device=device), rings_from_scan_order(f.points)
        st["watchdog"] = timeit(lambda: wd.update(f.rgb, f.points, rings, f.K, f.T_cam_lidar), device, warm, reps)[0]
        for k in KS:
            al = aligners[f"basis-k{k}"]
            gen = al.generator
            with torch.no_grad():
                st[f"generator_k{k}"] = timeit(lambda: gen(sc.mde.unsqueeze(0), sc.feats), device, warm, reps)[0]
                maps = gen(sc.mde.unsqueeze(0), sc.feats)
            res = al.fit(sc.mde, uv, z, basis_maps=maps)
            times = [al.fit(sc.mde, uv, z, basis_maps=maps).timings for _ in range(reps)]
            st[f"solve_k{k}"] = 1000 * float(np.median([t.get("prepare", 0) + t.get("solve", 0) for t in times]))
            st[f"apply_k{k}"] = 1000 * float(np.median([t.get("apply", 0) for t in times]))
            if k == 30:
                st["uncertainty_k30"] = uncertainty_cost(res, sc.mde, uv, z, device, warm, reps)
                if onnx_gen is not None:
                    st["generator_k30_onnx"] = timeit(lambda: onnx_gen(sc.mde.unsqueeze(0), sc.feats), device, warm,
                                                      reps)[0]
            del res
        stages[key] = st
    solver = solver_cost(device, warm, max(reps, 5))
    proj = projection_cost(scenes[RESOLUTIONS[0]].frame, device, warm, reps)
    ratio = {a: {k: v / lat["global"][k] for k, v in d.items()} for a, d in lat.items()}
    growth = {}
    for a, d in lat.items():
        ns = [(n, d[f"n{n}_{RESOLUTIONS[0][0]}x{RESOLUTIONS[0][1]}"]) for n in ANCHORS]
        px = [(w * h, d[f"n500_{w}x{h}"]) for w, h in RESOLUTIONS]
        growth[a] = {"anchors_exponent": float(np.polyfit(np.log([x for x, _ in ns]), np.log([y for _, y in ns]), 1)[0]),
                     "pixels_exponent": float(np.polyfit(np.log([x for x, _ in px]), np.log([y for _, y in px]), 1)[0])}
    return {"machine": machine(), "device": str(device), "mde": backend.name, "quick": bool(args.quick),
            "repeats": reps, "warmup": warm,
            "latency_ms": lat, "ratio_to_global": ratio, "spread_ms": spread, "stages_ms": stages,
            "peak_mem_mb": mem, "growth": growth, "solver_ms": solver, "projection_ms": proj,
            "ratios": stage_ratios(stages, proj)}


def write_report(out: Path, doc: dict) -> None:
    keys = list(next(iter(doc["latency_ms"].values())).keys())
    lines = [f"Machine: {doc['machine']}; device {doc['device']}; median of {doc['repeats']} runs "
             f"after {doc['warmup']} warm-up.", "",
             "### Whole alignment (ms; × global in brackets)", "",
             "| aligner | " + " | ".join(keys) + " | ∝ N^a | ∝ (HW)^b |", "|---" * (len(keys) + 3) + "|"]
    for a, d in doc["latency_ms"].items():
        cells = [f"{d[k]:.1f} ({doc['ratio_to_global'][a][k]:.1f}×)" for k in keys]
        g = doc["growth"][a]
        lines.append(f"| {a} | " + " | ".join(cells) + f" | {g['anchors_exponent']:.2f} | {g['pixels_exponent']:.2f} |")
    lines += ["", "### Stages (ms)", ""]
    skeys = list(next(iter(doc["stages_ms"].values())).keys())
    lines += ["| point | " + " | ".join(skeys) + " |", "|---" * (len(skeys) + 1) + "|"]
    for k, st in doc["stages_ms"].items():
        lines.append(f"| {k} | " + " | ".join(f"{st[s]:.1f}" for s in skeys) + " |")
    if "projection_ms" in doc:
        pm = doc["projection_ms"]
        lines += ["", "### LiDAR projection with the occlusion filter (ms, 640x192)", "",
                  "| points | " + " | ".join(pm) + " |", "|---" * (len(pm) + 1) + "|",
                  "| ms | " + " | ".join(f"{v:.1f}" for v in pm.values()) + " |"]
    if "ratios" in doc:
        lines += ["", "### Ratios measured in this run", "", "| ratio | value |", "|---|---|"]
        lines += [f"| {k} | {v:.3f} |" for k, v in doc["ratios"].items()]
    if "offered_load" in doc:
        lines += ["", f"### The node over DDS, offered load (own process, every output subscribed; Fast DDS profile: "
                      f"{Path(doc['fastdds_profile']).name or 'default'})", ""]
        lines += offered_load_table(doc["offered_load"])
    if "solver_ms" in doc:
        sv = doc["solver_ms"]
        lines += ["", "### Weight solve alone (ms): lambda policy x K x anchors N", "",
                  "| policy | " + " | ".join(f"K={k} N={n}" for k in KS for n in (500, 7000)) + " |",
                  "|---" * (1 + 2 * len(KS)) + "|"]
        for pol in ("fixed", "gcv", "gcv+huber"):
            lines.append(f"| {pol} | " + " | ".join(f"{sv[f'{pol}_k{k}_n{n}']:.2f}" for k in KS for n in (500, 7000))
                         + " |")
    (out / "bench.md").write_text("\n".join(lines) + "\n")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    w0, h0 = RESOLUTIONS[0]
    for a, d in doc["latency_ms"].items():
        ax[0].plot(ANCHORS, [d[f"n{n}_{w0}x{h0}"] for n in ANCHORS], "o-", label=a)
        ax[1].plot([w * h for w, h in RESOLUTIONS], [d[f"n500_{w}x{h}"] for w, h in RESOLUTIONS], "o-", label=a)
    for a, xl in zip(ax, ("anchors N (640x192)", "pixels H*W (N=500)")):
        a.set_xscale("log")
        a.set_yscale("log")
        a.set_xlabel(xl)
        a.set_ylabel("alignment latency (ms)")
    ax[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "bench.png", dpi=100)
    plt.close(fig)


#: (name, feature C, feature h, feature w, image H, image W) of the generator-cost table
FEATURE_SIZES = [("56x80", 32, 56, 80, 112, 160), ("112x160", 32, 112, 160, 224, 320),
                 ("224x320", 32, 224, 320, 448, 640), ("vit37x37x384", 384, 37, 37, 518, 518)]


PROJECTION_POINTS = [10_000, 100_000, 500_000, 2_000_000]


def projection_cost(frame, device: torch.device, warm: int, reps: int) -> dict:
    """LiDAR projection with the occlusion filter (ms) for clouds of 10k-2M points at 640x192:
    the frame's scan repeated with 2 cm jitter (the same geometry, denser)."""
    h, w = frame.rgb.shape[:2]
    base = torch.from_numpy(frame.points)
    g = torch.Generator().manual_seed(0)
    out = {}
    T = torch.from_numpy(frame.T_cam_lidar).to(device)
    K = torch.from_numpy(frame.K).to(device)
    for n in PROJECTION_POINTS:
        reps_needed = -(-n // len(base))
        pts = torch.cat([base + 0.02 * torch.randn(base.shape, generator=g) for _ in range(reps_needed)])[:n].to(device)
        out[str(n)] = timeit(lambda: project_points(pts, T, K, (h, w)), device, warm, reps)[0]
    return out


def stage_ratios(stages: dict, proj: dict) -> dict:
    """The camera-rate targets as ratios measured in this run (README: Performance)."""
    st = stages[f"n500_{RESOLUTIONS[0][0]}x{RESOLUTIONS[0][1]}"]
    align = st["generator_k30"] + st["solve_k30"] + st["apply_k30"]
    out = {"projection_100k_over_mde": proj["100000"] / st["mde"],
           "watchdog_over_generator_solve_apply": (st["watchdog"] + st["watchdog_rings"]) / align,
           # the default schedule while the extrinsic looks right: one check per calibration_watchdog_every
           # frames (docs/watchdog.md measures the share of frames checked, start-up and suspicion included)
           "watchdog_patrol_over_generator_solve_apply": (st["watchdog"] + st["watchdog_rings"]) / align
           / PipelineConfig.calibration_watchdog_every,
           "uncertainty_over_generator_solve_apply": st["uncertainty_k30"] / (
               st["generator_k30"] + st["solve_k30"] + st["apply_k30"])}
    if "generator_k30_onnx" in st:
        out["generator_onnx_over_torch"] = st["generator_k30_onnx"] / st["generator_k30"]
    return out


def offered_load(rates=(10.0, 20.0, 30.0), seconds: float = 3.0, qos_list=("reliable", "best_effort"),
                 be_rates=(10.0,), threads: int = 0) -> dict:
    """Drive a node running in its own process (as on a robot) over DDS at each offered
    rate: delivered and dropped frames, latency (publish -> depth received) p50/p95.

    Reliable sensor QoS at every rate in ``rates``; Best-Effort at ``be_rates`` (Fast DDS
    on one host drops large Best-Effort messages between processes: README, DDS advice).
    ``threads``: the node's ``torch_threads`` (0: its default).
    """
    import subprocess
    import sys

    from .core.transforms import matrix_quaternion
    from .data.synthetic import SyntheticWorld
    from .loopback import LoopbackRig, ensure_local_dds
    from .ros import conversions as cv

    ensure_local_dds()
    world = SyntheticWorld("street", 9007)
    frames = [world.frame(i) for i in range(5)]
    t, q = matrix_quaternion(world.T_cam_lidar(0))
    out: dict = {}
    for qos in qos_list:
        node = subprocess.Popen([sys.executable, "-m", "scalefield_ros.align_node", "--ros-args", "-p", "device:=cpu",
                                 "-p", f"qos_reliability:={qos}", "-p", "publish_points:=true",  # every output
                                 "-p", f"torch_threads:={int(threads)}",
                                 "-p", f"extrinsic_translation:={[float(x) for x in t]}",
                                 "-p", f"extrinsic_rotation:={[float(x) for x in q]}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            rig = LoopbackRig(None, sensor_reliable=qos == "reliable", external=True, discovery_timeout=60.0)
        except RuntimeError:
            node.terminate()
            node.wait(timeout=30)
            raise
        stamp = 10**18
        try:
            for i in range(3):  # warm-up: first-frame allocations, every output's first build
                stamp += 10**8
                rig.publish(frames[i % len(frames)], stamp_ns=stamp)
                rig.wait_for(lambda i=i: len(rig.depth) > i, 30.0 if i == 0 else 10.0)

            def inputs() -> dict:
                """The node's own counts (its 1 Hz input status): what DDS delivered to it."""
                st = [x for d in rig.diag for x in d.status if x.name.endswith(": inputs")]
                vals = {kv.key: kv.value for kv in st[-1].values} if st else {}
                return {k: int(vals.get(f"{k}_received", 0)) for k in ("image", "cloud")} | {
                    "synchronised": int(vals.get("synchronised", 0))}

            for rate in (rates if qos == "reliable" else be_rates):
                rig.wait_for(lambda: False, 1.2)  # a fresh input status before
                before = inputs()
                sent: dict[int, float] = {}
                # how long each publish took in this (sensor) process: a reliable writer can
                # block, and the frames behind it then reach the node as a burst (newest wins)
                blocked: list[float] = []
                first = len(rig.depth)
                n = int(round(rate * seconds))
                t0 = time.perf_counter()
                for i in range(n):
                    while time.perf_counter() < t0 + i / rate:
                        time.sleep(0.0005)
                    stamp += int(1e9 / rate)
                    sent[stamp] = time.perf_counter()
                    rig.publish(frames[i % len(frames)], stamp_ns=stamp)
                    blocked.append(time.perf_counter() - sent[stamp])
                rig.wait_for(lambda: False, 2.0)  # stragglers and a fresh input status
                after = inputs()
                overhead = []  # the node's own per-frame measure (diagnostics): time outside the stages
                parts: dict[str, list[float]] = {}  # ... split into decode, publish, diagnostics
                for d in rig.diag:
                    for x in d.status:
                        vals = {kv.key: kv.value for kv in x.values}
                        if x.name.endswith(": alignment") and "latency_overhead_ms" in vals and \
                                cv.stamp_ns(d.header) in sent:
                            stages = sum(float(v) for k, v in vals.items() if k.startswith("latency_")
                                         and not k.startswith(("latency_total", "latency_overhead")))
                            overhead.append((float(vals["latency_overhead_ms"]), stages))
                            for k, v in vals.items():
                                if k.startswith("latency_overhead_") and k != "latency_overhead_ms":
                                    parts.setdefault(k[len("latency_overhead_"):-3], []).append(float(v))
                got = [(cv.stamp_ns(m.header), r) for m, r in zip(rig.depth[first:], rig.received_at[first:])]
                lat = [1000 * (r - sent[s]) for s, r in got if s in sent]
                out.setdefault(qos, {})[f"{rate:g}"] = {
                    "offered": n, "delivered": len(lat), "dropped": n - len(lat),
                    "node_received_images": after["image"] - before["image"],
                    "node_received_clouds": after["cloud"] - before["cloud"],
                    "node_synchronised": after["synchronised"] - before["synchronised"],
                    "overhead_ms": float(np.median([o for o, _ in overhead])) if overhead else float("nan"),
                    "overhead_over_stages": float(np.median([o / max(st, 1e-9) for o, st in overhead]))
                    if overhead else float("nan"),
                    "overhead_parts_ms": {k: float(np.median(v)) for k, v in parts.items()},
                    "stages_ms": float(np.median([st for _, st in overhead])) if overhead else float("nan"),
                    "sender_stalls": int(sum(b > 0.1 for b in blocked)),
                    "sender_max_block_ms": 1000 * max(blocked, default=0.0),
                    "latency_p50_ms": float(np.percentile(lat, 50)) if lat else float("nan"),
                    "latency_p95_ms": float(np.percentile(lat, 95)) if lat else float("nan")}
                print(f"offered {rate:g} Hz ({qos}): delivered {len(lat)}/{n}", flush=True)
        finally:
            rig.close()
            node.terminate()
            node.wait(timeout=30)
    return out


def onnx_generator(gen):
    """The K=30 generator exported to ONNX in a temporary folder and loaded in ONNX Runtime
    (None without onnxruntime/onnxscript): its time is reported beside torch's."""
    import tempfile

    try:
        from .export import OnnxGenerator, export_generator

        path = export_generator(gen, Path(tempfile.mkdtemp(prefix="scalefield_bench_")) / "generator.onnx")
        return OnnxGenerator(path, gen.config, providers=None, threads=torch.get_num_threads())
    except ImportError as exc:
        print(f"ONNX generator not measured: {exc}")
        return None


def uncertainty_cost(res, mde: torch.Tensor, uv: torch.Tensor, z: torch.Tensor, device: torch.device, warm: int,
                     reps: int) -> float:
    """Per-pixel sigma of a basis fit with the shipped street calibration of the node's method (ms)."""
    from .core.uncertainty import uncertainty_features
    from .tuned import load_uncertainty

    from .core.anchors import depth_spread

    model = load_uncertainty("street")["basis-res"]
    edges = depth_spread(mde)  # the node computes it once, for the anchor edge filter

    def run():
        f = uncertainty_features("basis", res, mde, uv, z, needed=model.needed(), coarse=True, edges=edges)
        return res.depth * model.log_sigma(f)

    return timeit(run, device, warm, reps)[0]


def solver_cost(device: torch.device, warm: int = 1, reps: int = 5) -> dict:
    """The K x K weight solve alone (``core/solver.py``), per lambda policy, K and N (ms)."""
    from .core.solver import RidgeSettings, solve_weights

    out = {}
    g = torch.Generator().manual_seed(0)
    for k in KS:
        for n in (500, 7000):
            m = torch.randn(1, n, k, generator=g).to(device)
            m[..., 0] = 1
            y = torch.randn(1, n, generator=g).to(device)
            for name, st in (("fixed", RidgeSettings(lam=1e-3, free_intercept=False)), ("gcv", RidgeSettings()),
                             ("gcv+huber", RidgeSettings(robust="huber"))):
                out[f"{name}_k{k}_n{n}"] = timeit(lambda: solve_weights(m, y, None, st), device, warm, reps)[0]
    return out


def generator_cost(device: torch.device, warm: int = 1, reps: int = 3, k: int = 30, batch: int = 8,
                   work_pixels: int = 8192) -> dict:
    """Generator training step (forward + backward, batch ``batch``) and inference (batch 1)
    time per MDE feature size, at F's own grid (``native``) and at the ``work_pixels`` grid."""
    out = {}
    for name, c, fh, fw, ih, iw in FEATURE_SIZES:
        row = {}
        for mode, wp in (("native", 0), ("work_pixels", work_pixels)):
            gen = BasisMapGenerator(GeneratorConfig(num_basis=k, feature_channels=c, work_pixels=wp)).to(device)
            f = torch.randn(batch, c, fh, fw, device=device)
            d = torch.rand(batch, ih, iw, device=device) + 0.5

            def step():
                gen.zero_grad(set_to_none=True)
                gen(d, f).E.square().mean().backward()

            def infer():
                with torch.no_grad():
                    gen(d[:1], f[:1])

            row[f"{mode}_train_step_ms"] = timeit(step, device, warm, reps)[0]
            row[f"{mode}_inference_ms"] = timeit(infer, device, warm, reps)[0]
            row[f"{mode}_grid"] = list(gen._work_size(d, f))
        out[name] = row
    return out


def adaptation_cost(device: torch.device, quick: bool, mde: str = "embedded") -> dict:
    """On-robot adaptation (``adapt: true``): one round's time (training steps + validation),
    and the pipeline's frame time with the background thread running at the default duty
    cycle against it stopped, measured alternately in the same run (camera rate)."""
    import tempfile

    from .data.synthetic import SyntheticWorld
    from .pipeline import MetricDepthPipeline, PipelineConfig

    world = SyntheticWorld("street", 9000)
    frames = [world.frame(i) for i in range(8 if quick else 20)]
    with tempfile.TemporaryDirectory() as cache:
        pipe = MetricDepthPipeline(PipelineConfig(mde=mde, device=str(device), calibration_watchdog=False,
                                                  adapt=True, adapt_cache=cache))
        ad = pipe.adapter
        ad.stop()
        ad.cfg.min_train_frames, ad.cfg.min_val_frames = 4, 1
        for f in frames * (3 if quick else 2):  # fill the buffer (fresh frame numbers: new entries)
            pipe.process(f.rgb, f.K, f.points, f.T_cam_lidar)
        t0 = time.perf_counter()
        r = ad.round()
        round_s = time.perf_counter() - t0

        def frame_time() -> float:
            ts = []
            for f in frames:
                t = time.perf_counter()
                pipe.process(f.rgb, f.K, f.points, f.T_cam_lidar)
                _sync(device)
                ts.append(time.perf_counter() - t)
            return float(np.median(ts))

        off, on = [], []
        for _ in range(2 if quick else 3):  # alternate: the machine's load drifts
            off.append(frame_time())
            ad.start()
            time.sleep(0.2)
            on.append(frame_time())
            ad.stop()
        pipe.close()
    return {"round_s": round_s, "steps_per_round": ad.cfg.steps, "batch": ad.cfg.batch, "duty": ad.cfg.duty,
            "train_frames": r["train_frames"] if r else 0, "val_frames": r["val_frames"] if r else 0,
            "frame_ms_adapt_off": 1000 * float(np.median(off)), "frame_ms_adapt_on": 1000 * float(np.median(on)),
            "frame_time_on_over_off": float(np.median(on) / np.median(off)),
            "buffer_mb_per_frame": ad.buffer.bytes / max(1, len(ad.buffer)) / 2**20}


def node_load(quick: bool, threads: int = 0) -> dict:
    """The main run's node part: :func:`offered_load` at 10/20/30 Hz, reliable QoS, with the
    large-message Fast DDS profile unless the environment names one (README: DDS advice),
    and the node's overhead around the stages as a ratio (median over the rates)."""
    import os
    import sys

    if "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:  # the source tree's, else the installed share/
        for d in (Path(__file__).resolve().parents[1], Path(sys.prefix) / "share" / "scalefield_ros"):
            if (d / "config" / "fastdds_large_data.xml").is_file():
                os.environ["FASTDDS_DEFAULT_PROFILES_FILE"] = str(d / "config" / "fastdds_large_data.xml")
                break
    rows = offered_load(qos_list=("reliable",), seconds=2.0 if quick else 5.0, threads=threads)
    ratio = float(np.median([r["overhead_over_stages"] for r in rows["reliable"].values()]))
    return {"offered_load": rows, "fastdds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", ""),
            "node_overhead_over_stages": ratio}


def offered_load_table(rows_by_qos: dict) -> list[str]:
    """The offered-load results as a markdown table."""
    lines = ["| QoS | offered (Hz) | frames | images / clouds reaching the node | synchronised | published "
             "| dropped | latency p50 (ms) | latency p95 (ms) | stages (ms) | node overhead (ms; / stages) "
             "| decode / publish / diagnostics (ms) | sender publishes > 0.1 s (longest, ms) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for qos, rows in rows_by_qos.items():
        for rate, r in rows.items():
            lines.append(f"| {qos} | {rate} | {r['offered']} | {r['node_received_images']} / "
                         f"{r['node_received_clouds']} | {r['node_synchronised']} | {r['delivered']} | "
                         f"{r['dropped']} | {r['latency_p50_ms']:.0f} | {r['latency_p95_ms']:.0f} | "
                         f"{r['stages_ms']:.1f} | {r['overhead_ms']:.1f}; {r['overhead_over_stages']:.2f} | "
                         + " / ".join(f"{r['overhead_parts_ms'].get(k, float('nan')):.1f}"
                                      for k in ("decode", "publish", "diagnostics"))
                         + f" | {r.get('sender_stalls', 0)} ({r.get('sender_max_block_ms', 0.0):.0f}) |")
    return lines


def _write_mode(out: Path, name: str, doc: dict, lines: list[str]) -> dict:
    """``out/name.json`` and the table ``out/name.md`` of a single-purpose bench mode."""
    (out / f"{name}.json").write_text(json.dumps(doc, indent=2))
    (out / f"{name}.md").write_text("\n".join(lines) + "\n")
    print((out / f"{name}.md").read_text())
    return doc


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true",
                   help="1 warm-up, 3 repeats, 2 s per offered rate (about 4 min on 2 cores)")
    p.add_argument("--device", default="auto")
    p.add_argument("--mde", default="embedded", help="MDE backend spec (see README); its cost is the mde stage")
    p.add_argument("--out", default="bench_out")
    p.add_argument("--generator-cost", action="store_true",
                   help="only the generator's training-step and inference time per MDE feature size "
                        "(56x80, 112x160, 224x320, ViT 37x37x384), at F's grid and at the work_pixels grid")
    p.add_argument("--offered-load", action="store_true",
                   help="only the node over DDS (own process) at 10/20/30 Hz offered, reliable QoS, and at 10 Hz "
                        "Best-Effort: delivered and dropped frames, latency p50/p95 (writes offered_load.json/.md)")
    p.add_argument("--adaptation", action="store_true",
                   help="only on-robot adaptation: one round's time and the frame time with the background thread "
                        "on against off, at the default duty cycle (writes adaptation.json/.md)")
    p.add_argument("--skip-node", action="store_true",
                   help="leave out the node over DDS (offered load at 10/20/30 Hz, reliable QoS, and the node's "
                        "overhead around the stages) from the main run")
    p.add_argument("--node-threads", type=int, default=0,
                   help="the node's torch_threads in the offered load (0: the node's default, half the cores)")
    add_threads_argument(p)
    a = p.parse_args(argv)
    set_threads(a.threads)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if a.offered_load:
        import os

        doc = {"machine": machine(), "fastdds_profile": os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE", ""),
               "offered_load": offered_load(seconds=2.0 if a.quick else 5.0, threads=a.node_threads)}
        lines = offered_load_table(doc["offered_load"])
        return _write_mode(out, "offered_load", doc, lines)
    if a.adaptation:
        from .mde.backends import resolve_device

        dev = resolve_device(a.device)
        doc = {"device": str(dev), "machine": machine(), "adaptation": adaptation_cost(dev, a.quick, a.mde)}
        r = doc["adaptation"]
        lines = ["| round (s) | steps x batch | duty | frame off (ms) | frame on (ms) | on / off | buffer MB / frame |",
                 "|---|---|---|---|---|---|---|",
                 f"| {r['round_s']:.1f} | {r['steps_per_round']} x {r['batch']} | {r['duty']:g} | "
                 f"{r['frame_ms_adapt_off']:.0f} | {r['frame_ms_adapt_on']:.0f} | {r['frame_time_on_over_off']:.2f} | "
                 f"{r['buffer_mb_per_frame']:.2f} |"]
        return _write_mode(out, "adaptation", doc, lines)
    if a.generator_cost:
        from .mde.backends import resolve_device

        dev = resolve_device(a.device)
        doc = {"device": str(dev), "machine": platform.processor() or platform.machine(),
               "generator_cost": generator_cost(dev, 1, 2 if a.quick else 3)}
        lines = ["| F | grid before | train step before (ms) | inference before (ms) | grid after | "
                 "train step after (ms) | inference after (ms) |", "|---" * 7 + "|"]
        for name, r in doc["generator_cost"].items():
            lines.append(f"| {name} | {r['native_grid'][0]}x{r['native_grid'][1]} | {r['native_train_step_ms']:.0f} | "
                         f"{r['native_inference_ms']:.0f} | {r['work_pixels_grid'][0]}x{r['work_pixels_grid'][1]} | "
                         f"{r['work_pixels_train_step_ms']:.0f} | {r['work_pixels_inference_ms']:.0f} |")
        return _write_mode(out, "generator_cost", doc, lines)
    doc = run(a)
    if not a.skip_node:
        doc.update(node_load(a.quick, a.node_threads))
        doc["ratios"]["node_overhead_over_stages"] = doc.pop("node_overhead_over_stages")
    (out / "bench.json").write_text(json.dumps(doc, indent=2))
    write_report(out, doc)
    print((out / "bench.md").read_text())
    return doc


if __name__ == "__main__":
    main()
