"""Locations of the weights that ship inside the package."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"

#: Shipped generator per anchor regime: K=8 trained on low, K=30 on medium (section 4.1).
GENERATORS = {"low": "generator_k8_low", "medium": "generator_k30_medium", "high": "generator_k30_medium",
              "lidar": "generator_k30_lidar"}
#: Shipped embedded MDE weights.
EMBEDDED_MDE = MODELS_DIR / "embedded_mde.safetensors"


def default_checkpoint(regime: str = "low") -> Path:
    """Path (without suffix) of the shipped generator for an anchor regime."""
    if regime.startswith("drop"):
        regime = "low"
    elif regime.startswith("rings"):  # LiDAR patterns: the node's generator
        regime = "lidar"
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


class MDEMismatchError(ValueError):
    """A generator checkpoint was trained for another MDE than the one it is asked to run on."""


def check_generator_mde(config, backend, allow_mismatch: bool = False, log=None, what: str = "generator") -> None:
    """Refuse a generator trained for another MDE (DESIGN.md: a generator is only valid for its MDE).

    The feature channel count must always match (the network cannot run otherwise). The
    recorded backend identity (``mde_name``: network and weights digest) must equal the
    backend's ``name`` unless ``allow_mismatch``, which logs the mismatch instead (through
    ``log``, a callable taking one line, or a warning).
    """
    import warnings

    say = log or (lambda line: warnings.warn(line, stacklevel=3))
    name = str(getattr(backend, "name", ""))
    chans = int(getattr(backend, "feature_channels", -1))
    if config.feature_channels and chans != config.feature_channels:
        raise MDEMismatchError(
            f"{what} expects MDE features with {config.feature_channels} channels (trained for {config.mde_name or config.mde!r}) "
            f"but the MDE backend {name!r} gives {chans}; train a generator for this MDE with "
            "`python -m scalefield_ros.train --mde ...`")
    if not config.mde_name:
        say(f"{what} records no MDE identity (an old checkpoint); it was trained with --mde {config.mde!r} "
            f"and now runs on {name!r}: retrain or re-save it to get this check")
        return
    if config.mde_name != name:
        line = (f"{what} was trained for MDE {config.mde_name!r} but runs on {name!r}; its basis maps are only "
                "valid for the network (and weights) they were trained with")
        if not allow_mismatch:
            raise MDEMismatchError(line + ": train one for this MDE, or pass the explicit override "
                                   "(--allow-mde-mismatch / allow_mde_mismatch:=true) at your own risk")
        say("OVERRIDE: " + line)
