#!/usr/bin/env bash
# Benchmark cells on a CUDA machine, one process per (method, seed), all at once: the slow-on-CPU
# methods of the hashing grid (tt, dhe) without the full-table reference (which the CPU grid has).
#
#   OUT=runs/device_cells CELLS="dhe:0 dhe:1 dhe:2 tt:1 tt:2" bash examples/reproduce/device_cells.sh
#
# Cells land in $WORK/grid/cells (the same files as `slimembed benchmark --config
# docs/grid_hashing.yaml` writes); $OUT/cells.tar is refreshed every 5 s so a run cut short still
# returns what finished. Copy the cells into the CPU grid's cells/ and rerun the benchmark with
# --dry-run to tabulate them together. PROFILE is the synthetic preset of that grid's data (v1 for
# docs/grid_hashing.yaml).
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
OUT=${OUT:-runs/device_cells}
WORK=${WORK:-runs/device_cells_work}
CELLS=${CELLS:-"dhe:0 dhe:1 dhe:2 tt:1 tt:2"}
PROFILE=${PROFILE:-v1}
DEVICE=${DEVICE:-cuda}
PY=${PY:-python3}
mkdir -p "$OUT" "$WORK/logs"
. "$ROOT/examples/reproduce/device_env.sh"
t0=$(date +%s)
DATA="$WORK/data_${PROFILE}_${ROWS:-2000000}"  # one directory per profile and size
$PY -c "
import os
from slimembed.datasets import generate
if not os.path.exists('$DATA/schema.json'):
    generate('$DATA', format='processed', rows=${ROWS:-2000000}, seed=0, profile='$PROFILE')
" || exit 1
echo "data ready ($(( $(date +%s) - t0 )) s)"
pids=()
for cell in $CELLS; do
  m=${cell%%:*}; s=${cell##*:}
  $PY -c "from slimembed.ctr.cli import main; raise SystemExit(main(['benchmark', '--config', 'docs/grid_hashing.yaml',
    '--set', 'methods=[$m]', '--set', 'seeds=[$s]', '--set', 'reference=false', '--set', 'experiment.data.path=$DATA',
    '--set', 'experiment.train.device=$DEVICE', '--set', 'generate.profile=$PROFILE',
    '--set', 'generate.rows=${ROWS:-2000000}', '--out', '$WORK/grid']))" > "$WORK/logs/${m}_s$s.log" 2>&1 &
  pids+=($!)
done
( while true; do tar -cf "$OUT/cells.tar" -C "$WORK" grid/cells logs 2>/dev/null; sleep 5; done ) &
saver=$!
for p in "${pids[@]}"; do wait "$p"; done
kill $saver
tar -cf "$OUT/cells.tar" -C "$WORK" grid/cells logs
grep -h "test AUC" "$WORK"/logs/*.log
echo "done ($(( $(date +%s) - t0 )) s)"
