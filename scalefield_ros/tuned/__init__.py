"""Tuned options of the baseline aligners, per scene family and anchor regime.

The YAML files beside this module are written by ``python -m scalefield_ros.tune`` (see
its docstring for how); ``evaluate``, ``replay``, ``bench`` and the node read them here.
"""

from __future__ import annotations

from pathlib import Path

import yaml

#: Shipped tuned options, one file per family.
TUNED_DIR = Path(__file__).resolve().parent


def expand(options: dict) -> dict:
    """YAML options -> ``make`` keyword arguments (``shape`` is rows and cols)."""
    out = dict(options)
    if "shape" in out:
        out["rows"], out["cols"] = out.pop("shape")
    return out


def resolve_family(spec: str | None, family: str | None) -> str:
    """``auto`` -> the image family's shipped entry (``street``/``indoor``, else none); other specs as given."""
    if spec == "auto":
        return family if family in ("street", "indoor") else ""
    return spec or ""


def load_tuned(spec: str | None, family: str | None = None) -> dict:
    """Tuned options ``{regime: {method: options}}``: ``spec`` is a YAML path, ``street``/
    ``indoor`` (the shipped files), ``auto`` (the shipped file of ``family``), or ""/None
    (no tuning: every method's defaults)."""
    spec = resolve_family(spec, family)
    if not spec:
        return {}
    path = Path(spec)
    if spec in ("street", "indoor"):
        path = TUNED_DIR / f"{spec}.yaml"
    if not path.is_file():
        raise FileNotFoundError(f"tuned baseline options {path} not found; run `python -m scalefield_ros.tune` "
                                "or pass --untuned")
    doc = yaml.safe_load(path.read_text()) or {}
    return {r: {m: expand(v["options"]) for m, v in ms.items()} for r, ms in doc.get("regimes", {}).items()}


def tuned_options(tuned: dict, regime: str, method: str) -> dict:
    """Options of ``method`` for ``regime`` (ring regimes use the pooled ``rings`` entry)."""
    from ..core.rings import ring_regime

    key = "rings" if ring_regime(regime) else "low" if regime.startswith("drop") else regime
    return dict(tuned.get(key, {}).get(method, {}))


#: Shipped uncertainty calibrations (``python -m scalefield_ros.calibrate``), per family.
UNCERTAINTY_FILE = TUNED_DIR / "uncertainty.yaml"


def load_uncertainty(spec: str | None, family: str | None = None) -> dict:
    """Uncertainty calibrations ``{method: UncertaintyModel}``: ``spec`` is ``street``/``indoor``
    (the shipped file's entry), ``auto`` (the entry of ``family``), a YAML path written by
    ``calibrate``, or ""/None (no uncertainty)."""
    from ..core.uncertainty import UncertaintyModel

    spec = resolve_family(spec, family)
    if not spec:
        return {}
    if spec in ("street", "indoor"):
        path, key = UNCERTAINTY_FILE, spec
    else:
        path, key = Path(spec), None
    if not path.is_file():
        raise FileNotFoundError(f"uncertainty calibration {path} not found; run `python -m scalefield_ros.calibrate` "
                                "or set the uncertainty calibration to empty (no uncertainty)")
    doc = yaml.safe_load(path.read_text()) or {}
    if key is not None:
        if key not in doc:
            raise ValueError(f"{path} has no calibration for {key!r}; it has {sorted(doc)}")
        doc = doc[key]
    methods = doc.get("methods", doc)
    return {m: UncertaintyModel.from_dict(v) for m, v in methods.items()}
