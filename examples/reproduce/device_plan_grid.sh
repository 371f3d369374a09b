#!/usr/bin/env bash
# One prepared GPU run (about 9 minutes on an H200): the model-level-budget grid (docs/grid_v3.yaml),
# the allocation-rule study (docs/grid_allocation.yaml, three rules) and the new VLDB'24 methods
# (docs/grid_new_methods.yaml), all on one device, 12 benchmark processes sharing the GPU (one per
# method group x seed, or per rule); every cell is a JSON file written when it finishes, so a cut-off
# run is tabulated as far as it got and a rerun continues it.
#
#   OUT=runs/device_v3 GRID_SECONDS=430 bash examples/reproduce/device_plan_grid.sh
#   ROWS=20000 GRID_SECONDS=120 DEVICE=cpu bash examples/reproduce/device_plan_grid.sh   # a rehearsal
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
GRID_SECONDS=${GRID_SECONDS:-430}
. "$ROOT/examples/reproduce/device_bench_common.sh"
# the data once (the dry run generates it and lists the cells), before the processes share it
B --config docs/grid_v3.yaml "${COMMON[@]}" --dry-run > "$OUT/logs/dry_run.log" 2>&1 || { tail -20 "$OUT/logs/dry_run.log"; exit 1; }
echo "data ready ($(( $(date +%s) - t0 )) s)"
for s in 0 1 2; do
  run "v3_a_s$s" --config docs/grid_v3.yaml --set "seeds=[$s]" --set "methods=[hash, double_hash, qr, robe, multiplexed, unified]"
  run "v3_b_s$s" --config docs/grid_v3.yaml --set "seeds=[$s]" --set "methods=[compositional, mde, tt, dhe]" --set reference=false
done
for r in sqrt proportional frequency; do
  run "alloc_$r" --config docs/grid_allocation.yaml --out "runs/alloc_$r" --set "knobs={hash: {allocation: $r}, double_hash: {allocation: $r}}"
done
for s in 0 1 2; do
  run "new_s$s" --config docs/grid_new_methods.yaml --set "seeds=[$s]"
done
for p in "${pids[@]}"; do wait "$p"; done
echo "grids stopped ($(( $(date +%s) - t0 )) s)"
# tabulate what finished (no training: --dry-run)
B --config docs/grid_v3.yaml "${COMMON[@]}" --dry-run > "$OUT/logs/tab_v3.log" 2>&1 &
B --config docs/grid_new_methods.yaml "${COMMON[@]}" --dry-run > "$OUT/logs/tab_new.log" 2>&1 &
for r in sqrt proportional frequency; do
  B --config docs/grid_allocation.yaml --out "runs/alloc_$r" --set "knobs={hash: {allocation: $r}, double_hash: {allocation: $r}}" "${COMMON[@]}" --dry-run > "$OUT/logs/tab_alloc_$r.log" 2>&1 &
done
wait
tar czf "$OUT/cells.tar.gz" runs/grid_v3/cells runs/grid_v3/results.* runs/grid_new_methods/cells runs/grid_new_methods/results.* runs/alloc_*/cells runs/alloc_*/results.* 2>/dev/null
grep -h "FAILED\|Error" "$OUT"/logs/*.log | head -20
echo "done ($(( $(date +%s) - t0 )) s)"
