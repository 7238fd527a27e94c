"""Locations of the weights that ship inside the package."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"

#: Shipped generator per anchor regime: K=8 trained on low, K=30 on medium (section 4.1).
GENERATORS = {"low": "generator_k8_low", "medium": "generator_k30_medium", "high": "generator_k30_medium"}
#: Shipped embedded MDE weights.
EMBEDDED_MDE = MODELS_DIR / "embedded_mde.safetensors"


def default_checkpoint(regime: str = "low") -> Path:
    """Path (without suffix) of the shipped generator for an anchor regime."""
    if regime.startswith("drop"):
        regime = "low"
    name = GENERATORS.get(regime)
    if name is None:
        raise ValueError(f"no shipped generator for regime {regime!r}; choose one of {sorted(GENERATORS)}")
    path = MODELS_DIR / name
    if not Path(str(path) + ".safetensors").is_file():
        raise FileNotFoundError(
            f"shipped generator {path}.safetensors is missing; reinstall the package or train one with "
            "`python -m scalefield_ros.train` and pass checkpoint=..."
        )
    return path
