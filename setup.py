"""ament_python package that also installs with pip (see README)."""

from glob import glob

from setuptools import find_packages, setup

PACKAGE = "scalefield_ros"

# Executables (`ros2 run scalefield_ros <name>` after colcon build, plain commands after pip):
# scalefield_ros/entry.py maps each to its module's main() and turns the result into an exit status.
EXECUTABLES = ("align_node", "align_lifecycle_node", "export", "demo", "train", "evaluate", "synth", "replay",
               "bench", "tune", "calibrate", "stability", "selfval_check", "docs_pages", "train_embedded_mde")

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={PACKAGE: ["models/*.safetensors", "models/*.json", "tuned/*.yaml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
    ],
    python_requires=">=3.10",
    # torch is deliberately unpinned from above: install it first (README) so pip never
    # replaces it with another build.
    install_requires=[
        "torch>=2.1",
        "numpy>=1.24",
        "scipy>=1.10",
        "safetensors>=0.4",
        "pyyaml>=6",
        "tqdm>=4.60",
        "matplotlib>=3.7",
        "opencv-python-headless>=4.8",
        "rosbags>=0.10",
        "mcap>=1.1",  # sequential reading of .mcap bags cut off before their footer
    ],
    extras_require={
        # ROS 2 Kilted wheels from PyPI, for machines without a ROS install.
        "ros": [
            "ros-rclpy", "ros-sensor-msgs", "ros-std-msgs", "ros-geometry-msgs",
            "ros-diagnostic-msgs", "ros-rmw-fastrtps-cpp",
        ],
        "test": ["pytest>=7", "catkin_pkg>=1.0", "colcon-common-extensions>=0.3", "ruff>=0.4"],
        "mde": ["transformers>=4.45"],
        "onnx": ["onnxruntime>=1.17", "onnx>=1.15", "onnxscript>=0.5"],  # onnxscript: torch.onnx.export (generator)
    },
    zip_safe=True,
    maintainer="scalefield_ros maintainers",
    maintainer_email="maintainers@scalefield-ros.org",
    description="Dense metric depth from monocular depth + sparse LiDAR with learned scale fields",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [f"{exe} = {PACKAGE}.entry:{exe}" for exe in EXECUTABLES],
    },
)
