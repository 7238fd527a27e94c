"""The README and docs/: a page that fits, links that resolve, generated pages that match
their sources, and README commands that run as written (at tiny sizes)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md"] + sorted((ROOT / "docs").glob("*.md")) + sorted((ROOT / "docs").glob("*/*.md"))


def test_readme_fits_on_a_page():
    assert (ROOT / "README.md").stat().st_size <= 15_000


def test_every_relative_link_resolves():
    bad = []
    for page in PAGES:
        for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
            if re.match(r"[a-z]+:", target) or target.startswith("#"):
                continue
            path = (page.parent / target.split("#")[0]).resolve()
            if not path.exists():
                bad.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not bad, bad


def test_generated_pages_match_their_sources():
    from scalefield_ros import docs_pages

    for name, fn in docs_pages.PAGES.items():
        assert (ROOT / "docs" / name).read_text() == fn(), f"docs/{name} is stale: python -m scalefield_ros.docs_pages"


def test_results_page_numbers_are_the_json_numbers():
    """Each AbsRel printed for a run is the run's results.json value (the page is not hand-edited)."""
    import json

    text = (ROOT / "docs/results.md").read_text()
    for path in sorted((ROOT / "docs").glob("*/results.json")):
        doc = json.loads(path.read_text())
        if "methods" not in doc:
            continue
        section = text.split(f"## `{path.parent.name}`")[1].split("\n## ")[0]
        for m, regs in doc["methods"].items():
            row = next(ln for ln in section.splitlines() if ln.startswith(f"| {m} |"))
            for v in regs.values():
                if v["abs_rel"] == v["abs_rel"]:
                    assert f"{v['abs_rel']:.3f} / {v['delta1']:.2f}" in row, (path, m)


def test_every_parameter_is_documented():
    from scalefield_ros.node_params import PARAMS

    params = (ROOT / "docs/parameters.md").read_text()
    readme = (ROOT / "README.md").read_text()
    for p in PARAMS:
        assert f"`{p.name}`" in params, p.name
    for name in ("method", "device", "mde_backend", "generator_checkpoint", "use_tf", "self_validation"):
        assert f"`{name}`" in readme, name


def _marked_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    cmds = []
    for block in re.findall(r"<!-- readme-test -->\s*```bash\n(.*?)```", text, re.S):
        for line in block.splitlines():
            line = line.split("  #")[0].strip()
            if line and not line.startswith("#"):
                cmds.append(line)
    return cmds


def _tiny_folder(root: Path) -> None:
    """A folder dataset with a LiDAR scan, as `folder:PATH` reads it."""
    import cv2
    import yaml

    from scalefield_ros.data.synthetic import SyntheticWorld

    w = SyntheticWorld("street", 9004)
    f = w.frame(0)
    for d in ("rgb", "depth", "lidar"):
        (root / d).mkdir(parents=True)
    cv2.imwrite(str(root / "rgb/a.png"), f.rgb[..., ::-1])
    np.save(root / "depth/a.npy", np.nan_to_num(f.depth).astype(np.float32))
    np.savez(root / "lidar/a.npz", points=f.points[:, :3], rings=w.ring_ids(f.points), T_cam_lidar=f.T_cam_lidar)
    K = f.K
    (root / "intrinsics.yaml").write_text(yaml.safe_dump({"fx": float(K[0, 0]), "fy": float(K[1, 1]),
                                                          "cx": float(K[0, 2]), "cy": float(K[1, 2]),
                                                          "max_depth": 80.0}))


def test_readme_commands_run_as_written(tmp_path):
    """The README's marked commands, with the placeholders filled and sizes made tiny."""
    cmds = _marked_commands()
    assert len(cmds) >= 3 and any("demo" in c for c in cmds) and any("evaluate" in c for c in cmds)
    bag = tmp_path / "bag.mcap"
    subprocess.run([sys.executable, "-m", "scalefield_ros.synth", "--world", "street", "--frames", "2", "--seed",
                    "9001", "--out", str(tmp_path / "k"), "--bag", str(bag)], check=True, capture_output=True,
                   timeout=300)
    _tiny_folder(tmp_path / "folder")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for cmd in cmds:
        cmd = cmd.replace("bash .ci/setup_venv.sh .venv && ", "")  # CI just did the setup
        cmd = cmd.replace(".venv/bin/python", shlex.quote(sys.executable))
        if cmd.startswith("python "):
            cmd = shlex.quote(sys.executable) + cmd[len("python"):]
        cmd = (cmd.replace("--frames 10", "--frames 1").replace(" BAG ", f" {bag} ")
               .replace("folder:PATH", f"folder:{tmp_path / 'folder'}").replace("--out DIR", f"--out {tmp_path / 'o'}")
               .replace("--out demo_out", f"--out {tmp_path / 'demo'}"))
        if "evaluate" in cmd:
            cmd += " --figures 0"
        r = subprocess.run(cmd, shell=True, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
        assert r.returncode == 0, f"{cmd}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"


@pytest.mark.parametrize("page", ["node.md", "training.md", "evaluation.md", "performance.md", "backends.md",
                                  "dds.md", "replay.md", "realdata.md", "results.md", "parameters.md"])
def test_task_pages_exist_and_are_linked(page):
    assert (ROOT / "docs" / page).is_file()
    linked = (ROOT / "README.md").read_text() + "".join(p.read_text() for p in (ROOT / "docs").glob("*.md"))
    assert f"({page})" in linked or f"(docs/{page})" in linked, page
