"""Embedded MDE, generator training (single and 2-process torchrun) and the evaluation CLI."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from scalefield_ros.data.synthetic import SyntheticWorld
from scalefield_ros.mde.backends import load_backend
from scalefield_ros.mde.embedded import EmbeddedMDE, load_embedded

ROOT = Path(__file__).resolve().parents[1]


def test_embedded_mde_predicts_positive_relative_depth_and_features():
    backend = load_backend("embedded", "cpu")
    f = SyntheticWorld("street", 9010).frame(0, with_lidar=False)
    depth, feats = backend.predict(f.rgb)
    assert depth.shape == (1, 192, 640) and (depth > 0).all() and torch.isfinite(depth).all()
    assert feats.shape == (1, backend.feature_channels, 48, 160)
    # relative depth: strongly rank-correlated with the truth, but not metric
    gt = f.depth
    ok = np.isfinite(gt) & (gt < 80)
    a, b = depth[0].numpy()[ok], gt[ok]
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    assert np.corrcoef(ra, rb)[0, 1] > 0.8
    assert abs(np.median(a) - np.median(b)) > 1.0
    assert backend.name.startswith("embedded-")


def test_shipped_weights_are_small_and_corrupt_ones_are_refused(tmp_path):
    from scalefield_ros.checkpoints import EMBEDDED_MDE

    assert EMBEDDED_MDE.stat().st_size < 10 * 2**20
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="corrupt"):
        load_embedded(bad)
    with pytest.raises(FileNotFoundError, match="train_embedded"):
        load_embedded(tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match="unknown MDE backend"):
        load_backend("nonsense")
    with pytest.raises(ValueError, match="cannot import MDE backend"):
        load_backend("no_such_module:Thing")


def test_mde_training_step_reduces_ssi_loss():
    from scalefield_ros.mde.embedded import ssi_loss

    torch.manual_seed(0)
    m = EmbeddedMDE()
    f = SyntheticWorld("indoor", 5, width=160, height=128).frame(0, with_lidar=False)
    x = EmbeddedMDE.to_input(f.rgb, (128, 160), torch.device("cpu"))
    gt = torch.from_numpy(1.0 / f.depth).unsqueeze(0)
    mask = torch.ones_like(gt, dtype=torch.bool)
    opt = torch.optim.Adam(m.parameters(), 1e-3)
    losses = []
    for _ in range(15):
        disp, _ = m(x)
        loss = ssi_loss(disp, gt, mask)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]


def _env(tmp_path):
    return {**os.environ, "SCALEFIELD_CACHE": str(tmp_path / "cache"), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def test_training_cli_keeps_best_resumes_and_refuses_held_out_seeds(tmp_path):
    from scalefield_ros import train
    from scalefield_ros.core.generator import load_generator

    os.environ["SCALEFIELD_CACHE"] = str(tmp_path / "cache")
    args = ["--out", str(tmp_path / "run"), "--seeds", "100-102", "--frames", "0", "--epochs", "2", "--batch", "2",
            "--width", "8", "--val-fraction", "0.34", "--num-basis", "4", "--data", "synthetic:indoor"]
    train.main(args)
    out = tmp_path / "run"
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert rows[0].startswith("epoch,train_loss,val_loss") and len(rows) == 3
    assert (out / "curves.png").is_file()
    best = json.loads((out / "best.json").read_text())
    val = [float(r.split(",")[2]) for r in rows[1:]]
    assert best["epoch"] == int(np.argmin(val)) + 1
    assert load_generator(out / "best").num_basis == 4
    train.main(args[:-8] + ["--epochs", "3", "--batch", "2", "--width", "8", "--val-fraction", "0.34",
                            "--num-basis", "4", "--data", "synthetic:indoor", "--resume"])
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["1", "2", "3"]
    with pytest.raises(ValueError, match="held out"):
        train.main(["--out", str(tmp_path / "bad"), "--seeds", "8999-9000"])


def test_two_process_torchrun_training(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29517",
           "-m", "scalefield_ros.train", "--out", str(tmp_path / "ddp"), "--seeds", "200-203", "--frames", "0",
           "--epochs", "1", "--batch", "1", "--width", "8", "--num-basis", "4", "--val-fraction", "0.25",
           "--data", "synthetic:indoor", "--device", "cpu"]
    r = subprocess.run(cmd, env=_env(tmp_path), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert (tmp_path / "ddp" / "best.safetensors").is_file()
    assert len((tmp_path / "ddp" / "log.csv").read_text().strip().splitlines()) == 2  # only rank 0 logs


def test_evaluation_on_held_out_seeds_basis_beats_global_at_low(tmp_path):
    from scalefield_ros import evaluate

    doc = evaluate.main(["--data", "synthetic:both", "--seeds", "9000-9003", "--methods", "basis,global,lwlr",
                         "--regimes", "low,drop1", "--out", str(tmp_path / "ev"), "--figures", "1", "--device", "cpu"])
    res = json.loads((tmp_path / "ev" / "results.json").read_text())
    assert res == json.loads(json.dumps(doc))
    low = res["methods"]
    assert low["basis"]["low"]["images"] == 8
    assert low["basis"]["low"]["abs_rel"] < low["global"]["low"]["abs_rel"]
    for m in ("basis", "global", "lwlr"):
        assert set(low[m]["low"]) >= {"abs_rel", "delta1", "rmse", "images"}
        assert "drop1" in low[m]
    assert 0 < res["spectral"]["median_eta1"] <= 1
    tables = (tmp_path / "ev" / "tables.md").read_text()
    assert tables.count("| basis |") == 4  # two accuracy tables, and the uncertainty table's two regimes
    for m in ("basis", "global", "lwlr"):  # the shipped calibration of each image's family
        for r in ("low", "drop1"):
            v = low[m][r]
            assert 0.5 < v["within_2sigma"] <= 1 and 0 < v["within_1sigma"] < v["within_2sigma"], (m, r, v)
            assert v["sharpness"] > 0 and v["ause"] >= -0.01
    assert res["sparsification"]["basis"]["low"]["oracle"][0] == pytest.approx(low["basis"]["low"]["abs_rel"], rel=0.05)
    assert (tmp_path / "ev" / "sparsification.png").is_file()
    assert (tmp_path / "ev" / "sample_00.png").is_file() and (tmp_path / "ev" / "metrics_vs_anchors.png").is_file()
    again = evaluate.main(["--data", "synthetic:both", "--seeds", "9000-9003", "--methods", "basis,global,lwlr",
                           "--regimes", "low,drop1", "--out", str(tmp_path / "ev2"), "--figures", "0", "--device", "cpu"])
    assert again["methods"] == doc["methods"]  # deterministic


def test_lidar_only_training_from_bags(tmp_path):
    """train --data bag:DIR: anchors and held-out targets from the LiDAR alone, GT topic ignored."""
    from scalefield_ros import train
    from scalefield_ros.core.generator import load_generator
    from scalefield_ros.data.datasets import open_dataset
    from scalefield_ros.data.writers import write_bag

    os.environ["SCALEFIELD_CACHE"] = str(tmp_path / "cache")
    for seed in (300, 301):
        w = SyntheticWorld("indoor", seed)
        write_bag(tmp_path / "bags" / f"s{seed}.mcap",
                  [w.frame(i, stamp_ns=1_700_000_000_000_000_000 + i * 100_000_000) for i in range(2)])
    ds = open_dataset(f"bag:{tmp_path / 'bags'}")
    assert len(ds) == 4
    s = ds[0]
    assert np.isnan(s.depth).all() and not s.valid.any()  # the ground-truth topic is never read
    assert len(np.unique(s.rings)) >= 20 and s.points.shape[1] == 3
    cfg = train.TrainConfig(data=f"bag:{tmp_path / 'bags'}", num_basis=4, width=8, batch=2, epochs=1,
                            val_fraction=0.25, regime="low")
    items_tr, items_val = train.load_items(cfg)
    assert len(items_tr) == 3 and len(items_val) == 1
    it = items_tr[0]
    # targets and anchors are disjoint and both LiDAR depths
    tgt = it.valid.numpy()
    assert tgt.sum() > 50
    assert not tgt[it.cand[:, 1], it.cand[:, 0]].any()
    assert np.all(it.anchor_map[it.cand[:, 1], it.cand[:, 0]] > 0)
    gt = SyntheticWorld("indoor", 300).frame(0).depth
    rel = np.abs(it.gt.numpy()[tgt] - gt[tgt]) / gt[tgt]
    assert np.nanmedian(rel) < 0.02
    train.main(["--out", str(tmp_path / "run"), "--data", f"bag:{tmp_path / 'bags'}", "--epochs", "1", "--batch",
                "2", "--width", "8", "--num-basis", "4", "--val-fraction", "0.25", "--ring-fraction", "0.5"])
    gen = load_generator(tmp_path / "run" / "best")
    assert gen.config.mde_name.startswith("embedded-")
    assert np.isfinite(json.loads((tmp_path / "run" / "best.json").read_text())["val"]["abs_rel"])


def test_generator_for_another_mde_is_refused_unless_overridden(tmp_path, monkeypatch):
    import warnings

    from scalefield_ros.checkpoints import MDEMismatchError, check_generator_mde, default_checkpoint
    from scalefield_ros.core.generator import load_generator
    from scalefield_ros.pipeline import MetricDepthPipeline, PipelineConfig

    gen = load_generator(default_checkpoint("medium"))
    assert gen.config.mde_name == load_backend("embedded", "cpu").name

    class Other:  # another network with the same channel count
        name = "other-mde-32ch"
        feature_channels = 32

    with pytest.raises(MDEMismatchError, match="trained for MDE 'embedded-.*' but runs on 'other-mde-32ch'"):
        check_generator_mde(gen.config, Other())
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        check_generator_mde(gen.config, Other(), allow_mismatch=True)
    assert any("OVERRIDE" in str(x.message) for x in w)
    Other.feature_channels = 16
    with pytest.raises(MDEMismatchError, match="16"):
        check_generator_mde(gen.config, Other(), allow_mismatch=True)  # cannot run at all
    # the node's pipeline refuses another network's checkpoint at start ...
    Other.feature_channels = 32
    ckpt = str(default_checkpoint("lidar"))
    with pytest.raises(MDEMismatchError):
        MetricDepthPipeline(PipelineConfig(device="cpu", checkpoint=ckpt), backend=Other())
    MetricDepthPipeline(PipelineConfig(device="cpu", checkpoint=ckpt, allow_mde_mismatch=True), backend=Other())
    # ... and without one runs the universal generator (test_universal.py)
    assert MetricDepthPipeline(PipelineConfig(device="cpu"), backend=Other()).generator_kind == "universal"


def test_evaluate_takes_a_checkpoint_per_regime_and_records_what_ran(tmp_path):
    from scalefield_ros import evaluate
    from scalefield_ros.checkpoints import default_checkpoint

    k8, k30 = str(default_checkpoint("low")), str(default_checkpoint("medium"))
    assert evaluate.checkpoint_for(evaluate.parse_checkpoints(f"low={k30},rings={k8}"), "low") == k30
    assert evaluate.checkpoint_for(evaluate.parse_checkpoints(f"low={k30},rings={k8}"), "rings8") == k8
    assert evaluate.checkpoint_for(evaluate.parse_checkpoints(f"drop={k30}"), "drop3") == k30
    assert evaluate.checkpoint_for(None, "medium") == k30
    with pytest.raises(ValueError, match="REGIME=PATH"):
        evaluate.parse_checkpoints("low=")
    doc = evaluate.main(["--data", "synthetic:indoor", "--seeds", "9000", "--methods", "basis", "--regimes",
                         "low,medium", "--checkpoint", f"low={k30},medium={k8}", "--figures", "0", "--device", "cpu",
                         "--out", str(tmp_path / "e")])
    assert doc["config"]["checkpoints"] == {"low": k30, "medium": k8}
    assert doc["config"]["frames"] == {"kind": "synthetic", "families": ["indoor"], "seeds": "9000-9000",
                                       "images": 1}


def test_file_datasets_subsample_and_ignored_keys_warn(tmp_path, capsys):
    from scalefield_ros import evaluate, train
    from scalefield_ros.data.datasets import Subset

    root = tmp_path / "k"
    from scalefield_ros import synth

    synth.main(["--world", "street", "--frames", "4", "--seed", "9001", "--out", str(root)])
    doc = evaluate.main(["--data", f"kitti:{tmp_path}", "--methods", "global", "--regimes", "low", "--every", "2",
                         "--limit", "1", "--figures", "0", "--device", "cpu", "--out", str(tmp_path / "e")])
    assert doc["methods"]["global"]["low"]["images"] == 1
    rec = doc["config"]["frames"]
    assert rec["kind"] == "KittiDataset" and rec["images"] == 1 and "seeds" not in rec
    cfg_path = tmp_path / "c.yaml"
    cfg_path.write_text(f"data: kitti:{tmp_path}\nseeds: '100-200'\nevery: 2\n")
    capsys.readouterr()
    cfg = train.TrainConfig.load(cfg_path, {})
    note = capsys.readouterr().err.strip().splitlines()
    assert len(note) == 1 and "seeds only apply to synthetic data" in note[0] and "every" in note[0]
    ds = train._dataset(cfg)
    assert isinstance(ds, Subset) and len(ds) == 2
    help_text = subprocess.run([sys.executable, "-m", "scalefield_ros.evaluate", "--help"], capture_output=True,
                               text=True, cwd=ROOT, env={**os.environ, "COLUMNS": "1000"}).stdout
    for spec in ("kitti:PATH", "kitti-object:PATH", "nyu:PATH", "sun:PATH", "folder:PATH", "bag:PATH",
                 "depth-anything-v2:PATH", "dpt:PATH", "da3:PATH", "onnx:PATH", "package.module:Class"):
        assert spec in help_text, spec


def test_thread_setting():
    from scalefield_ros.threads import default_threads, set_threads

    before = torch.get_num_threads()
    try:
        assert set_threads(3) == 3 and torch.get_num_threads() == 3
        assert set_threads(0) == default_threads() >= 1
        with pytest.raises(ValueError, match=">= 0"):
            set_threads(-1)
    finally:
        torch.set_num_threads(before)
    for module in ("train", "evaluate", "replay", "bench", "synth", "demo", "tune"):
        out = subprocess.run([sys.executable, "-m", f"scalefield_ros.{module}", "--help"], capture_output=True,
                             text=True, cwd=ROOT).stdout
        assert "--threads" in out, module
