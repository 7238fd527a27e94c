import os

# DDS stays on loopback with a test-owned domain (see DESIGN.md); set before rclpy loads.
os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
os.environ.setdefault("ROS_DOMAIN_ID", str(40 + os.getpid() % 50))

import pytest
import torch


@pytest.fixture
def smooth_depth():
    """A positive, smooth MDE-like depth map (2, 48, 64) and 10 anchors per image."""
    g = torch.Generator().manual_seed(0)
    h, w = 48, 64
    v, u = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    d = torch.stack([2.0 + 3.0 * v + 0.5 * torch.sin(6 * u), 1.0 + 4.0 * u * v + 0.3 * torch.cos(5 * v)])
    uv = torch.stack([torch.randint(0, w, (10,), generator=g), torch.randint(0, h, (10,), generator=g)], 1).float()
    return d, uv


def at(depth: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """Depth values (B, N) at integer anchors (N, 2)."""
    return depth[:, uv[:, 1].long(), uv[:, 0].long()]
