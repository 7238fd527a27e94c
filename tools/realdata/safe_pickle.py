"""Read a dataset's info ``.pkl`` without running its code: only numpy scalars/dtypes and
byte strings may be rebuilt (DESIGN.md: never unpickle untrusted files)."""

from __future__ import annotations

import io
import pickle
from pathlib import Path

ALLOWED = {("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"), ("numpy", "dtype"),
           ("_codecs", "encode"), ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
           ("numpy", "ndarray")}


class _Restricted(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED:
            raise pickle.UnpicklingError(f"refusing to rebuild {module}.{name} from {self.path}")
        if module.startswith("numpy.core"):  # numpy 2 moved it
            module = module.replace("numpy.core", "numpy._core")
        return super().find_class(module, name)


def load(path: str | Path):
    data = Path(path).read_bytes()
    u = _Restricted(io.BytesIO(data), encoding="latin1")
    u.path = str(path)
    return u.load()
