"""Errors a user meets on the command line are one line without a traceback."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_export_without_the_onnx_extra_is_one_line(monkeypatch, capsys):
    from scalefield_ros import export

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxscript" else real(name, *a))
    with pytest.raises(SystemExit) as e:
        export.main(["--out", "/tmp/never.onnx"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "onnxscript" in err[0] and "pip install" in err[0]


def test_evaluate_with_a_generator_for_another_network_is_one_line(tmp_path):
    """The shipped K=30 generator relabelled as trained for another network: refused in one line."""
    import json
    import shutil

    from scalefield_ros.checkpoints import default_checkpoint

    src = Path(str(default_checkpoint("lidar")).removesuffix(".safetensors"))
    dst = tmp_path / "gen.safetensors"
    shutil.copy(src.with_name(src.name + ".safetensors"), dst)
    cfg = json.loads(src.with_name(src.name + ".json").read_text())
    cfg["config"]["mde_name"] = "someone-elses-network"
    dst.with_suffix(".json").write_text(json.dumps(cfg))
    r = subprocess.run([sys.executable, "-m", "scalefield_ros.evaluate", "--data", "synthetic:street", "--seeds", "9000",
                        "--limit", "1", "--regimes", "low", "--methods", "basis", "--checkpoint", str(dst), "--device", "cpu",
                        "--out", str(tmp_path / "e")], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert r.returncode != 0
    lines = [ln for ln in r.stderr.strip().splitlines() if ln.strip() and "evaluating" not in ln]
    assert "Traceback" not in r.stderr and len(lines) == 1 and "trained for MDE" in lines[0], r.stderr[-3000:]
