#!/usr/bin/env bash
# Evaluate every method on the real development set (tools/realdata/build_devset.py), with
# PyDNet++ through the backend contract. Usage:
#   bash tools/realdata/evaluate_devset.sh OUT_DIR [CHECKPOINT] [extra evaluate flags...]
# Writes OUT_DIR/{nuscenes,ddad,redkitchen}/{results.json,tables.md}; nothing here is committed.
set -euo pipefail
out="$1"; shift
ckpt="${1:-}"; [ $# -gt 0 ] && shift
here="$(cd "$(dirname "$0")" && pwd)"
root="${DEVSET:-/work/realdata/devset}"
methods="${METHODS:-global,global-scale,lwlr,grid,grid-smooth}"
[ -n "$ckpt" ] && methods="${METHODS:-basis-res,selfval,global,global-scale,lwlr,grid,grid-smooth}"
run() {  # name data regimes [extra flags]
  local name="$1" data="$2" regimes="$3"; shift 3
  PYTHONPATH="$here" OMP_NUM_THREADS=1 python -m scalefield_ros.evaluate --data "folder:$root/$data" \
    --mde pydnet_backend:PyDNetBackend ${ckpt:+--checkpoint "$ckpt"} --methods "$methods" --regimes "$regimes" \
    --robust tukey --figures 0 --threads 1 --out "$out/$name" "$@" > "$out/$name.log" 2>&1
}
mkdir -p "$out"
run nuscenes nuscenes rings4,rings8,rings16,low,medium "$@"
run ddad ddad rings4,rings8,rings16,rings32,low,medium "$@"
run redkitchen redkitchen_eval rings4,rings8,rings16,low,medium "$@"
