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
from pathlib import Path

import numpy as np
import torch

from .checkpoints import MODELS_DIR, default_checkpoint
from .core import make
from .core.anchors import DROP_COUNTS, REGIMES, drop_anchor_sets, grid_candidates, choose_anchors
from .core.generator import load_generator
from .core.metrics import depth_metrics
from .core.scale_field import spectral_stats

METHODS = ["basis", "global", "piecewise", "lwlr", "grid", "region", "basis-f0"]
DROP_REGIMES = [f"drop{n}" for n in DROP_COUNTS]
METRIC_KEYS = ("abs_rel", "delta1", "rmse", "sq_rel", "delta2", "delta3")


def parse_regimes(text: str) -> list[str]:
    out = []
    for r in text.split(","):
        r = r.strip()
        if r == "drop":
            out += DROP_REGIMES
        elif r in REGIMES or r in DROP_REGIMES:
            out.append(r)
        elif r:
            raise ValueError(f"unknown regime {r!r}; use low, medium, high, drop or drop9..drop1")
    return out


def regime_anchors(sample, regime: str, index: int) -> tuple[np.ndarray, np.ndarray]:
    """The protocol's anchors for one image and regime (deterministic per image)."""
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


def anchor_count(regime: str) -> float:
    if regime.startswith("drop"):
        return float(regime[4:])
    lo, hi = REGIMES[regime]
    return (lo + hi) / 2


class Evaluator:
    def __init__(self, methods: list[str], regimes: list[str], backend, device: torch.device,
                 checkpoint: str | None = None, ablation_checkpoint: str | None = None) -> None:
        self.methods, self.regimes, self.backend, self.device = methods, regimes, backend, device
        self.generators = {}
        for r in regimes:
            if "basis" in methods:
                path = checkpoint or str(default_checkpoint(r))
                self.generators.setdefault(path, load_generator(path, device))
        self.ckpt_for = {r: checkpoint or str(default_checkpoint(r)) for r in regimes} if "basis" in methods else {}
        self.ablation = None
        if "basis-f0" in methods:
            self.ablation = load_generator(ablation_checkpoint or MODELS_DIR / "generator_k30_medium_f0", device)
        self.aligners = {m: make(m) for m in methods if m not in ("basis", "basis-f0")}
        self.basis = make("basis", generator=next(iter(self.generators.values()))) if self.generators else None
        self.per_image: dict[str, dict[str, list[dict]]] = {m: {r: [] for r in regimes} for m in methods}
        self.spectral: list[dict] = []
        self.skipped: dict[str, str] = {}

    def run_sample(self, sample, index: int, figure_path: Path | None = None) -> None:
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
            uv, z = regime_anchors(sample, regime, index)
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
                elif m == "basis-f0":
                    res = self.basis.fit(mde, uv, z, basis_maps=f0_maps)
                else:
                    res = self.aligners[m].fit(mde, uv, z, regions=labels)
                met = depth_metrics(res.depth, gt, valid)
                met["anchors"] = int(res.anchors_used[0])
                self.per_image[m][regime].append(met)
        if figure_path is not None and fig_data is not None:
            save_figure(figure_path, sample, mde.cpu(), fig_data, gt.cpu(), valid.cpu())

    def summary(self) -> dict:
        out = {}
        for m, regs in self.per_image.items():
            for r, rows in regs.items():
                if not rows:
                    continue
                agg = {k: float(np.nanmean([row[k] for row in rows])) for k in METRIC_KEYS}
                agg["images"] = len(rows)
                agg["mean_anchors"] = float(np.mean([row["anchors"] for row in rows]))
                out.setdefault(m, {})[r] = agg
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
        }


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
    if spectral:
        lines += ["## Spectral statistics (K=8 model, low regime)", "",
                  f"median η1 = {spectral['median_eta1']:.3f}, median |v1,0| = {spectral['median_v10']:.3f}, "
                  f"E[G0] = {spectral['mean_g0']:.3f}, Var(G0) = {spectral['var_g0']:.2e} "
                  f"over {spectral['images']} images", ""]
    path.write_text("\n".join(lines))


def plot_vs_anchors(path: Path, results: dict) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(10, 3.8))
    for m, regs in results.items():
        pts = sorted((anchor_count(r), v["abs_rel"], v["delta1"]) for r, v in regs.items())
        if not pts:
            continue
        x, a, d = zip(*pts)
        ax[0].plot(x, a, "o-", label=m)
        ax[1].plot(x, d, "o-", label=m)
    for a, name in zip(ax, ("AbsRel (lower is better)", "δ1 (higher is better)")):
        a.set_xscale("log")
        a.set_xlabel("anchors per image")
        a.set_title(name)
    ax[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict:
    from tqdm import tqdm

    from .data.datasets import open_dataset
    from .mde.backends import load_backend, resolve_device

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="synthetic:both", help="dataset: synthetic:street|indoor|both")
    p.add_argument("--seeds", default="9000-9019", help="synthetic seed range (held-out: 9000 and above)")
    p.add_argument("--path", help="dataset root for file-based loaders")
    p.add_argument("--methods", default="basis,global,piecewise,lwlr,grid,region")
    p.add_argument("--regimes", default="low,medium,high,drop")
    p.add_argument("--checkpoint", help="generator checkpoint for basis (default: shipped, per regime)")
    p.add_argument("--ablation-checkpoint", help="F(x)=0 generator for basis-f0 (default: shipped)")
    p.add_argument("--mde", default="embedded", help="MDE backend: embedded, embedded:PATH or module:Class")
    p.add_argument("--device", default="auto")
    p.add_argument("--figures", type=int, default=2, help="per-sample figures to write")
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    for m in methods:
        if m not in METHODS:
            raise SystemExit(f"unknown method {m!r}; choose from {', '.join(METHODS)}")
    regimes = parse_regimes(a.regimes)
    device = resolve_device(a.device)
    torch.manual_seed(0)
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    ds = open_dataset(a.data, a.seeds, path=a.path)
    backend = load_backend(a.mde, device)
    ev = Evaluator(methods, regimes, backend, device, a.checkpoint, a.ablation_checkpoint)
    for i in tqdm(range(len(ds)), desc="evaluating"):
        ev.run_sample(ds[i], i, out / f"sample_{i:02d}.png" if i < a.figures else None)
    results = ev.summary()
    spectral = ev.spectral_summary()
    doc = {"methods": {m: {r: {k: v[k] for k in ("abs_rel", "delta1", "rmse", "images")} | {
        "sq_rel": v["sq_rel"], "delta2": v["delta2"], "delta3": v["delta3"], "mean_anchors": v["mean_anchors"]}
        for r, v in regs.items()} for m, regs in results.items()},
        "spectral": spectral, "skipped": ev.skipped,
        "config": {"data": a.data, "seeds": a.seeds, "methods": methods, "regimes": regimes, "mde": backend.name,
                   "checkpoint": a.checkpoint or "shipped"}}
    (out / "results.json").write_text(json.dumps(doc, indent=2))
    write_tables(out / "tables.md", results, spectral)
    plot_vs_anchors(out / "metrics_vs_anchors.png", results)
    print((out / "tables.md").read_text())
    return doc


if __name__ == "__main__":
    main()
