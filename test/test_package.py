"""Package metadata a robot's colcon build relies on, and the layering rules."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_valid_format_3_with_ros_dependencies():
    catkin_pkg = pytest.importorskip("catkin_pkg.package")
    pkg = catkin_pkg.parse_package(str(ROOT / "package.xml"))
    pkg.validate()
    assert pkg.name == "scalefield_ros" and pkg.package_format == 3
    assert pkg.get_build_type() == "ament_python"
    run = {d.name for d in pkg.exec_depends}
    for dep in ("rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "message_filters", "cv_bridge",
                "sensor_msgs_py", "launch_ros"):
        assert dep in run, dep
    assert {"launch_pytest", "python3-pytest"} <= {d.name for d in pkg.test_depends}


def test_every_rosdep_key_resolves_on_noble():
    """package.xml's keys are exactly those tools/rosdep_keys.py checked against ros/rosdistro
    (rosdep/*.yaml for ubuntu noble, kilted/distribution.yaml): a key rosdep cannot resolve,
    like the python3-safetensors-pip that broke `rosdep install`, fails here."""
    sys.path.insert(0, str(ROOT / "tools"))
    try:
        from rosdep_keys import package_keys
    finally:
        sys.path.pop(0)
    stored = [ln.strip() for ln in (ROOT / "test/data/rosdep_keys_noble_kilted.txt").read_text().splitlines()
              if ln.strip() and not ln.startswith("#")]
    ours = package_keys(ROOT / "package.xml")
    unchecked = sorted(set(ours) - set(stored))
    assert not unchecked, f"run tools/rosdep_keys.py on a ros/rosdistro clone for: {unchecked}"
    assert "python3-safetensors-pip" not in ours


def test_setup_installs_what_ros2_run_and_launch_need():
    text = (ROOT / "setup.py").read_text()
    cfg = (ROOT / "setup.cfg").read_text()
    assert "install_scripts=$base/lib/scalefield_ros" in cfg
    assert "share/ament_index/resource_index/packages" in text and (ROOT / "resource/scalefield_ros").is_file()
    assert (ROOT / "launch/align.launch.py").is_file() and (ROOT / "config/align.yaml").is_file()
    from scalefield_ros import entry

    for exe in ("align_node", "align_lifecycle_node", "demo", "train", "evaluate", "synth", "replay", "bench",
                "export", "calibrate", "stability", "selfval_check", "docs_pages"):
        assert f'"{exe}"' in text and callable(getattr(entry, exe)), exe
    assert "entry:{exe}" in text


def test_console_scripts_exit_zero_when_main_returns_results(monkeypatch):
    """`evaluate` & co. return their results dict to Python callers; as console scripts that
    must still be exit status 0 (sys.exit(dict) prints the dict and exits 1)."""
    from scalefield_ros import entry

    assert entry.exit_status({"methods": {}}) == 0 and entry.exit_status(None) == 0 and entry.exit_status(2) == 2
    monkeypatch.setattr(sys, "argv", ["docs_pages", "--check"])
    assert entry.docs_pages() == 0


def test_config_lists_every_declared_parameter():
    from scalefield_ros.align_node import PARAMS

    doc = yaml.safe_load((ROOT / "config/align.yaml").read_text())
    params = doc["/**"]["ros__parameters"]
    assert set(params) == {p.name for p in PARAMS}
    for p in PARAMS:
        assert type(params[p.name]) is type(p.default), p.name
    # documented in docs/parameters.md (generated from PARAMS; test_docs checks it is current)


def test_core_imports_no_ros():
    code = ("import sys, scalefield_ros.core, scalefield_ros.core.aligners, scalefield_ros.pipeline, "
            "scalefield_ros.evaluate, scalefield_ros.train; "
            "bad=[m for m in sys.modules if m.startswith(('rclpy','sensor_msgs','rosbags'))]; assert not bad, bad")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


def test_launch_file_with_launch_pytest():
    pytest.importorskip("launch_pytest")
    pytest.importorskip("launch_ros")
    from launch import LaunchContext
    from launch.actions import DeclareLaunchArgument
    from launch.launch_description_sources import PythonLaunchDescriptionSource

    src = PythonLaunchDescriptionSource(str(ROOT / "launch/align.launch.py"))
    ld = src.get_launch_description(LaunchContext())  # real launch needs a context to read the file
    names = {a.name for a in ld.entities if isinstance(a, DeclareLaunchArgument)}
    assert {"params_file", "namespace", "use_sim_time", "device", "method", "lifecycle", "large_data_dds"} <= names


def test_colcon_build_installs_what_a_robot_needs(tmp_path):
    """colcon (from PyPI) builds the ament_python package the way a ROS 2 machine does."""
    import shutil

    colcon = shutil.which("colcon") or str(Path(sys.executable).with_name("colcon"))
    if not Path(colcon).exists():
        pytest.skip("colcon is not installed (pip install colcon-common-extensions)")
    src = tmp_path / "src" / "scalefield_ros"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True).stdout.split()
    if not files:
        pytest.skip("not a git checkout")
    for f in files:
        (src / f).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / f, src / f)
    r = subprocess.run([colcon, "build", "--base-paths", "src"], cwd=tmp_path, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    inst = tmp_path / "install" / "scalefield_ros"
    share = inst / "share" / "scalefield_ros"
    assert (share / "package.xml").is_file() and (share / "launch" / "align.launch.py").is_file()
    assert (share / "config" / "align.yaml").is_file()
    assert (inst / "share" / "ament_index" / "resource_index" / "packages" / "scalefield_ros").is_file()
    for exe in ("align_node", "demo", "train", "evaluate", "synth", "replay", "bench"):
        assert (inst / "lib" / "scalefield_ros" / exe).is_file(), exe
    models = list(inst.glob("lib/python3*/site-packages/scalefield_ros/models/*.safetensors"))
    assert {m.name for m in models} >= {"embedded_mde.safetensors", "generator_k8_low.safetensors",
                                        "generator_k30_medium.safetensors", "generator_k30_lidar.safetensors"}
    tuned = list(inst.glob("lib/python3*/site-packages/scalefield_ros/tuned/*.yaml"))
    # tuned_baselines, uncertainty_calibration, the self-validation estimate's calibration
    assert {t.name for t in tuned} == {"street.yaml", "indoor.yaml", "uncertainty.yaml", "holdout.yaml"}


def test_lint_pyflakes_and_syntax():
    """Linters as tests (as ros2/examples do): no undefined names, unused imports or syntax errors."""
    import shutil

    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    if not Path(ruff).exists():
        pytest.skip("ruff is not installed")
    r = subprocess.run([ruff, "check", "--select", "F,E9", "--line-length", "120", "--output-format", "concise",
                        "scalefield_ros", "test", "launch"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
