"""The benchmark script's contract (numbers are not asserted: shared machines are noisy)."""

import json

from scalefield_ros import bench


def test_quick_bench_writes_the_documented_keys(tmp_path):
    doc = bench.main(["--quick", "--out", str(tmp_path), "--device", "cpu"])
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert saved["quick"] is True and saved["device"] == "cpu"
    aligners = {"basis-k8", "basis-k30", "basis-k50", "global", "piecewise", "lwlr", "grid", "region"}
    assert set(saved["latency_ms"]) == aligners
    points = {"n10_640x192", "n100_640x192", "n500_640x192", "n2000_640x192", "n500_1216x352", "n500_1280x720"}
    for a in aligners:
        assert set(saved["latency_ms"][a]) == points
        assert all(v > 0 for v in saved["latency_ms"][a].values())
        assert set(saved["growth"][a]) == {"anchors_exponent", "pixels_exponent"}
    assert all(abs(r - 1.0) < 1e-9 for r in saved["ratio_to_global"]["global"].values())
    st = saved["stages_ms"]["n500_640x192"]
    assert {"projection", "mde", "generator_k8", "solve_k8", "apply_k8", "generator_k50"} <= set(st)
    assert (tmp_path / "bench.md").is_file() and (tmp_path / "bench.png").is_file()
    assert doc["latency_ms"] == saved["latency_ms"]
