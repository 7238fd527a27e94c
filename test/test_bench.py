"""The benchmark script's contract (numbers are not asserted: shared machines are noisy)."""

import json

import pytest

from scalefield_ros import bench


def test_quick_bench_writes_the_documented_keys(tmp_path):
    # the node over DDS is left out here (its own test below); the rest is the full quick run
    doc = bench.main(["--quick", "--out", str(tmp_path), "--device", "cpu", "--skip-node"])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["quick"] is True and saved["device"] == "cpu"
    aligners = {"basis-k8", "basis-k30", "basis-k50", "global", "piecewise", "lwlr", "grid", "grid-smooth", "region"}
    assert set(saved["latency_ms"]) == aligners
    points = {"n10_640x192", "n100_640x192", "n500_640x192", "n2000_640x192", "n500_1216x352", "n500_1280x720"}
    for a in aligners:
        assert set(saved["latency_ms"][a]) == points
        assert all(v > 0 for v in saved["latency_ms"][a].values())
        assert set(saved["growth"][a]) == {"anchors_exponent", "pixels_exponent"}
    assert all(abs(r - 1.0) < 1e-9 for r in saved["ratio_to_global"]["global"].values())
    st = saved["stages_ms"]["n500_640x192"]
    assert {"projection", "mde", "generator_k8", "solve_k8", "apply_k8", "generator_k50", "uncertainty_k30",
            "generator_k30_onnx"} <= set(st)
    assert set(saved["projection_ms"]) == {"10000", "100000", "500000", "2000000"}
    assert all(v > 0 for v in saved["projection_ms"].values())
    assert set(saved["ratios"]) == {"projection_100k_over_mde", "uncertainty_over_generator_solve_apply",
                                    "generator_onnx_over_torch", "watchdog_over_generator_solve_apply",
                                    "watchdog_patrol_over_generator_solve_apply"}
    r = saved["ratios"]
    assert r["watchdog_patrol_over_generator_solve_apply"] == pytest.approx(r["watchdog_over_generator_solve_apply"] / 4)
    assert st["watchdog"] > 0 and st["watchdog_rings"] > 0
    assert "LiDAR projection" in (tmp_path / "bench.md").read_text()
    assert (tmp_path / "bench.md").is_file() and (tmp_path / "bench.png").is_file()
    assert doc["latency_ms"] == saved["latency_ms"]
    # the weight solve alone, per lambda policy (fixed, gcv, gcv + one Huber step), K and N
    assert {"fixed_k50_n500", "gcv_k50_n500", "gcv+huber_k30_n7000"} <= set(saved["solver_ms"])
    assert "Weight solve alone" in (tmp_path / "bench.md").read_text()


def test_generator_cost_table(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "FEATURE_SIZES", [("28x40", 8, 28, 40, 56, 80), ("vit9x9", 16, 9, 9, 126, 126)])
    doc = bench.main(["--generator-cost", "--quick", "--out", str(tmp_path), "--device", "cpu"])
    rows = doc["generator_cost"]
    assert set(rows) == {"28x40", "vit9x9"}
    assert rows["28x40"]["native_grid"] == [28, 40] and rows["vit9x9"]["native_grid"] == [9, 9]
    # the working grid follows work_pixels and the image's aspect ratio, not F
    for r in rows.values():
        h, w = r["work_pixels_grid"]
        assert abs(h * w - 8192) < 0.1 * 8192 or h * w == 56 * 80 or h * w == 126 * 126
    assert (tmp_path / "generator_cost.md").is_file()


def test_large_data_dds_profile_delivers_best_effort_frames_between_processes(tmp_path):
    """config/fastdds_large_data.xml: a node in its own process gets every Best-Effort image
    and cloud (the default transport loses about half of them on one host: README)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    import pytest

    pytest.importorskip("rclpy")
    xml = Path(__file__).resolve().parents[1] / "config" / "fastdds_large_data.xml"
    code = ("import json; from scalefield_ros.bench import offered_load; "
            "print(json.dumps(offered_load(rates=(), qos_list=('best_effort',), be_rates=(5.0,), seconds=2.0)))")
    env = {**os.environ, "FASTDDS_DEFAULT_PROFILES_FILE": str(xml), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(r.stdout.strip().splitlines()[-1])["best_effort"]["5"]
    assert res["offered"] == 10
    assert res["node_received_images"] == 10 and res["node_received_clouds"] == 10, res
    assert res["delivered"] >= 8, res
    # the node's own overhead, split; every output (points included) was published
    assert set(res["overhead_parts_ms"]) == {"decode", "publish", "diagnostics"}, res
    assert 0 < res["overhead_parts_ms"]["publish"] <= res["overhead_ms"] and res["stages_ms"] > res["overhead_ms"], res
    assert 0 <= res["sender_stalls"] <= 10 and res["sender_max_block_ms"] > 0, res


def test_main_run_adds_the_node_under_the_large_message_profile(monkeypatch):
    """bench's node part: offered load at 10/20/30 Hz reliable, under the shipped Fast DDS
    profile unless one is set, and the overhead ratio as the median over the rates."""
    import os
    from pathlib import Path

    seen = {}

    def fake(qos_list, seconds, threads):
        seen.update(qos=qos_list, profile=os.environ.get("FASTDDS_DEFAULT_PROFILES_FILE"), threads=threads)
        return {"reliable": {r: {"overhead_over_stages": x} for r, x in (("10", 0.07), ("20", 0.09), ("30", 0.2))}}

    monkeypatch.setenv("FASTDDS_DEFAULT_PROFILES_FILE", "")  # recorded, so the value node_load sets is undone
    monkeypatch.delenv("FASTDDS_DEFAULT_PROFILES_FILE")
    monkeypatch.setattr(bench, "offered_load", fake)
    doc = bench.node_load(quick=True, threads=2)
    assert seen["qos"] == ("reliable",) and seen["threads"] == 2 and Path(seen["profile"]).name == "fastdds_large_data.xml"
    assert Path(seen["profile"]).is_file() and doc["fastdds_profile"] == seen["profile"]
    assert doc["node_overhead_over_stages"] == 0.09
