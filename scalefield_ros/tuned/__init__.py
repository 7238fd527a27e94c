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


def load_tuned(spec: str | None, family: str | None = None) -> dict:
    """Tuned options ``{regime: {method: options}}``: ``spec`` is a YAML path, ``street``/
    ``indoor`` (the shipped files), ``auto`` (the shipped file of ``family``), or ""/None
    (no tuning: every method's defaults)."""
    if not spec:
        return {}
    if spec == "auto":
        spec = family if family in ("street", "indoor") else ""
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
