"""The managed (lifecycle) variant of ``scalefield_align``.

    ros2 launch scalefield_ros align.launch.py lifecycle:=true
    python -m scalefield_ros.align_lifecycle_node [--activate] --ros-args --params-file config/align.yaml

Starts unconfigured; ``ros2 lifecycle set /scalefield_align configure`` loads the models,
``activate`` subscribes and publishes, ``deactivate`` stops, ``cleanup`` frees the models
(and GPU memory). ``--activate`` configures and activates at once.
"""

from __future__ import annotations

import sys

if __name__ == "__main__":  # `python -m`: quiet Ctrl-C while torch and rclpy import (early_signals)
    from .early_signals import install as _install_early_signals

    _install_early_signals()

from .align_node import run


def main(args: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if args is None else args)
    activate = "--activate" in argv
    argv = [a for a in argv if a != "--activate"]

    def make():
        from .ros.align import AlignLifecycleNode

        return AlignLifecycleNode()

    run(make, activate=activate, args=[sys.argv[0]] + argv)


if __name__ == "__main__":
    main()
