"""scalefield_ros: dense metric depth from a monocular depth network and sparse LiDAR.

Implements "Learning Image-Adaptive Scale Fields for Metric Depth Recovery" (Li & Althoff,
2026) with the baselines it compares against, a ROS 2 node, training and evaluation.
"""

__version__ = "0.1.0"
