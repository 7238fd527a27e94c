"""Locations of the weights that ship inside the package."""

from __future__ import annotations

from pathlib import Path

MODELS_DIR = Path(__file__).resolve().parent / "models"

#: Shipped generator per anchor regime: K=8 trained on low, K=30 on medium (section 4.1).
GENERATORS = {"low": "generator_k8_low", "medium": "generator_k30_medium", "high": "generator_k30_medium",
              "lidar": "generator_k30_lidar"}
#: The universal generator (F = 0 inputs, trained across simulated networks): any MDE.
UNIVERSAL = "generator_universal"
#: What a universal generator records as its MDE identity.
UNIVERSAL_MDE_NAME = "universal"
#: Shipped embedded MDE weights.
EMBEDDED_MDE = MODELS_DIR / "embedded_mde.safetensors"
#: Its sky head (mde/sky.py): which pixels are sky, so that the pipeline never publishes them as depth.
EMBEDDED_SKY = MODELS_DIR / "embedded_sky.safetensors"


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


def universal_checkpoint() -> Path:
    """Path (without suffix) of the shipped universal generator."""
    path = MODELS_DIR / UNIVERSAL
    if not Path(str(path) + ".safetensors").is_file():
        raise FileNotFoundError(f"shipped universal generator {path}.safetensors is missing; reinstall the package")
    return path


def is_universal(config) -> bool:
    """A generator that takes no network features and was trained across networks (valid for any MDE)."""
    return config.feature_channels == 0 and config.mde_name == UNIVERSAL_MDE_NAME


def shipped_generator_for(backend, regime: str = "lidar") -> tuple[Path, str]:
    """The shipped generator for a network: ``(path, kind)``.

    The network's own (``kind`` "own": trained for the embedded MDE) when the backend is
    the one it was trained for, else the universal one (``kind`` "universal"): a user's
    network gets a working generator from the first frame, before any training.
    """
    import json

    own = default_checkpoint(regime)
    meta = json.loads(Path(str(own) + ".json").read_text())
    if meta.get("config", {}).get("mde_name") == str(getattr(backend, "name", "")):
        return own, "own"
    return universal_checkpoint(), "universal"


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
    if is_universal(config):  # no features, trained across networks: valid for any MDE
        return
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
