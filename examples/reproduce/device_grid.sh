#!/usr/bin/env bash
# One prepared run on a CUDA machine: the parity check, table throughput, then the OptEmbed grid
# (DeepFM, DCN x full / OptEmbed / -E / -D x 3 seeds) and the Unified Embedding grid (DCNv2, DeepFM
# x full / hash / multiplexed / unified / unified with 4 chunks for every feature x 10x, 50x, 250x
# x 3 seeds) on 2M synthetic rows, one
# process per (model, seed) so the GPU is shared by many small jobs.
#
#   OUT=runs/device GRID_SECONDS=420 bash examples/reproduce/device_grid.sh
#   ROWS=50000 GRID_SECONDS=120 DEVICE=cpu bash examples/reproduce/device_grid.sh     # a rehearsal on a CPU
#
# PROFILE picks the synthetic teacher preset (default v2; the committed H200 results used v1).
#
# Needs python3 with torch, numpy, pandas, pyarrow, pyyaml, tqdm, scikit-learn (a GPU image has
# them); slimembed runs from this checkout through a PYTHONPATH shim, nothing is installed.
# Every run is resumable and written as it finishes; the grids stop after GRID_SECONDS, and what
# finished is tabulated. Results: $OUT/{parity.md,bench_tables.md,optembed.md,unified.md,runs.tar.gz}.
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-runs/device}
ROWS=${ROWS:-2000000}
PROFILE=${PROFILE:-v2}
DEVICE=${DEVICE:-cuda}
GRID_SECONDS=${GRID_SECONDS:-420}
WORK=${WORK:-runs/device_work}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK"
. "$ROOT/examples/reproduce/device_env.sh"
$PY -c "import torch, slimembed.tables as t; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else '')" || exit 1

t0=$(date +%s)
# The data (CPU) while the parity check uses the device.
DATA="$WORK/data_${PROFILE}_${ROWS}"  # one directory per profile and size: never reused for another
$PY -c "
from slimembed.datasets import generate
import os
if not os.path.exists('$DATA/schema.json'):
    generate('$DATA', rows=$ROWS, seed=0, scale=0.02, profile='$PROFILE', progress=False)
" > "$OUT/generate.log" 2>&1 &
gen=$!
timeout 60 $PY examples/reproduce/device_parity.py --device "$DEVICE" > "$OUT/parity.md" 2>&1
echo "parity exit $? ($(( $(date +%s) - t0 )) s)"; tail -1 "$OUT/parity.md"
timeout 90 $PY -c "from slimembed.ctr.bench_tables import main; main(['--device', '$DEVICE', '--steps', '20', '--rounds', '3', '--json', '$OUT/bench_tables.json'])" > "$OUT/bench_tables.md" 2>&1
echo "bench exit $? ($(( $(date +%s) - t0 )) s)"
wait $gen || { echo "data generation failed"; cat "$OUT/generate.log"; exit 1; }
echo "data ready ($(( $(date +%s) - t0 )) s)"

mkdir -p "$WORK/logs"
pids=()
for model in deepfm dcn; do
  for seed in 0 1 2; do
    timeout "$GRID_SECONDS" $PY examples/reproduce/optembed.py --out "$WORK/optembed" --data "$DATA" \
      --models $model --seeds $seed --methods full optembed optembed-e optembed-d --device "$DEVICE" --threads 1 \
      > "$WORK/logs/optembed_${model}_s$seed.log" 2>&1 &
    pids+=($!)
  done
done
for model in dcnv2 deepfm; do
  for seed in 0 1 2; do
    timeout "$GRID_SECONDS" $PY examples/reproduce/unified.py --out "$WORK/unified" --data "$DATA" \
      --models $model --seeds $seed --methods full hash multiplexed unified 'unified[chunks=4]' \
      --device "$DEVICE" --threads 1 \
      > "$WORK/logs/unified_${model}_s$seed.log" 2>&1 &
    pids+=($!)
  done
done
for p in "${pids[@]}"; do wait "$p"; done
echo "grids stopped ($(( $(date +%s) - t0 )) s)"
$PY examples/reproduce/optembed.py --out "$WORK/optembed" --summary-only > "$OUT/optembed.md" 2>&1
$PY examples/reproduce/unified.py --out "$WORK/unified" --summary-only > "$OUT/unified.md" 2>&1
cat "$OUT/optembed.md" "$OUT/unified.md"
# Records and logs, without checkpoints or data.
tar -czf "$OUT/runs.tar.gz" --exclude='*.pt' --exclude='*/ckpt/*' --exclude="$DATA" -C "$WORK" logs optembed unified 2>/dev/null
echo "done ($(( $(date +%s) - t0 )) s)"
