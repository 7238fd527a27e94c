"""ROS 2 node ``scalefield_align``: image + CameraInfo + PointCloud2 -> metric depth.

    ros2 launch scalefield_ros align.launch.py
    python -m scalefield_ros.align_node --ros-args --params-file config/align.yaml

The node class is :class:`scalefield_ros.ros.align.AlignNode` (its managed variant,
``align_lifecycle_node``, is :class:`~scalefield_ros.ros.align.AlignLifecycleNode`); the
parameters are :mod:`scalefield_ros.node_params`. This module runs it: it owns the
process's signal handling and executor, so that Ctrl-C stops the worker before the ROS
context goes.
"""

from __future__ import annotations

import threading

if __name__ == "__main__":  # `python -m`: quiet Ctrl-C while torch and rclpy import (early_signals)
    from .early_signals import install as _install_early_signals

    _install_early_signals()

from .core.transforms import matrix_quaternion, quaternion_matrix  # noqa: F401 (re-exported)
from .node_params import (NODE_RUNTIME, PARAM_DEFAULTS, PARAM_RANGES, PARAMS, RUNTIME_CONFIG,  # noqa: F401 (re-exported)
                          Param, coerce_param, pipeline_config, validate_param)

NODE_NAME = "scalefield_align"


def build_node(node_cls=None, **node_kwargs):
    """The plain node (``node_cls`` is ignored: kept for callers of the old factory)."""
    from .ros.align import AlignNode

    return AlignNode(**node_kwargs)


def run(make_node, activate: bool = False, args: list[str] | None = None) -> None:
    """Run a node made by ``make_node()`` until SIGINT/SIGTERM, exiting 1 with one
    ``cannot start:`` line when it cannot be built. ``activate``: a lifecycle node is
    configured and activated at once (``--activate``), as launch files do with events."""
    import signal

    import rclpy
    import rclpy.logging
    from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions

    # rclpy's own SIGINT handler invalidates the context at once, while the worker may be
    # publishing a frame. We install ours: SIGINT/SIGTERM only set a flag (an exception
    # raised inside executor code could leave its locks held and hang the shutdown); the
    # loop below sees it within 0.1 s, then the worker stops before the context goes.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()

    def _request_stop(signum, frame):
        if stop.is_set():  # a second Ctrl-C while starting up: give up at once
            raise KeyboardInterrupt
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, _request_stop)
    node = executor = None
    try:
        try:
            node = make_node()
            if activate:
                from rclpy.lifecycle import TransitionCallbackReturn

                for step in (node.trigger_configure, node.trigger_activate):
                    if step() != TransitionCallbackReturn.SUCCESS:
                        raise ValueError(f"lifecycle {step.__name__[8:]} failed (see the error above)")
        except (ValueError, FileNotFoundError, ImportError, TypeError) as exc:
            # bad parameters, a missing or corrupt checkpoint/model: say so and exit non-zero
            rclpy.logging.get_logger(NODE_NAME).fatal(f"cannot start: {exc}")
            raise SystemExit(1) from None
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        while rclpy.ok() and not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.stop()  # the worker finishes (or drops) its frame while publishers still exist
            if executor is not None:
                executor.remove_node(node)
                executor.shutdown(timeout_sec=1.0)
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


def main(args: list[str] | None = None) -> None:
    run(build_node, args=args)


if __name__ == "__main__":
    main()
