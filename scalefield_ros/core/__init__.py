"""Pure torch/numpy core: scale fields, generator, losses, aligners, anchors, metrics.

Nothing here imports ROS or reads files other than checkpoints.
"""

from .aligners import AlignmentResult, Aligner, available, make
from .generator import BasisMapGenerator, BasisMaps, GeneratorConfig, load_generator, save_generator
from .scale_field import ScaleField, ridge_solve, spectral_stats

__all__ = [
    "AlignmentResult", "Aligner", "available", "make", "BasisMapGenerator", "BasisMaps",
    "GeneratorConfig", "load_generator", "save_generator", "ScaleField", "ridge_solve", "spectral_stats",
]
