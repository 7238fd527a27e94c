"""Console-script entry points: each executable's ``main()``, with its return value turned
into an exit status (a ``main`` that returns its results dict, for callers in Python, would
otherwise print the dict and exit 1 as a console script)."""

from __future__ import annotations

import importlib
from typing import Callable

#: executable name -> module (under scalefield_ros) whose ``main`` it runs.
EXECUTABLES = {
    "align_node": "align_node", "align_lifecycle_node": "align_lifecycle_node", "export": "export",
    "demo": "demo", "train": "train", "evaluate": "evaluate", "synth": "synth", "replay": "replay",
    "bench": "bench", "tune": "tune", "calibrate": "calibrate", "stability": "stability",
    "selfval_check": "selfval_check", "docs_pages": "docs_pages", "train_embedded_mde": "mde.train_embedded",
}


def exit_status(value) -> int:
    """An int is the status; anything else (None, a results dict) means success."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


#: Executables that are node processes: quiet exit on Ctrl-C while still importing.
NODES = ("align_node", "align_lifecycle_node")


def _entry(module: str) -> Callable[[], int]:
    def main() -> int:
        if module in NODES:
            from .early_signals import install

            install()
        return exit_status(importlib.import_module(f"scalefield_ros.{module}").main())
    main.__name__ = module.replace(".", "_")
    return main


for _name, _module in EXECUTABLES.items():
    globals()[_name] = _entry(_module)
