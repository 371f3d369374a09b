#!/usr/bin/env bash
# The second GPU pass of the grids in device_plan_grid.sh (same data, protocol and device, resumed
# from the cells of the first pass): the methods the first pass did not reach (robe, multiplexed,
# unified; adaptive, dpq, mgqe, cafe and their hash baseline), the remaining allocation seeds, and
# the former hash default (proportional rows with fields of <= 200 values kept whole) as a fourth
# allocation arm. tt and dhe (about 3 min a cell on the shared GPU) are left out.
#   OUT=runs/device_v3 GRID_SECONDS=300 bash examples/reproduce/device_plan_grid_more.sh
set -u
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
cd "$ROOT"
GRID_SECONDS=${GRID_SECONDS:-300}
. "$ROOT/examples/reproduce/device_bench_common.sh"
B --config docs/grid_v3.yaml "${COMMON[@]}" --set "methods=[robe]" --dry-run > "$OUT/logs/dry_run2.log" 2>&1 || { tail -20 "$OUT/logs/dry_run2.log"; exit 1; }
echo "data ready ($(( $(date +%s) - t0 )) s)"
for s in 0 1 2; do
  run "v3_c_s$s" --config docs/grid_v3.yaml --set "seeds=[$s]" --set "methods=[robe, multiplexed]" --set reference=false
  run "v3_d_s$s" --config docs/grid_v3.yaml --set "seeds=[$s]" --set "methods=[unified]" --set reference=false
  run "floor_s$s" --config docs/grid_allocation.yaml --out runs/alloc_proportional200 --set "seeds=[$s]" --set "methods=[hash]" \
      --set "knobs={hash: {allocation: proportional, collisionless_max: 200}}"
  run "new2_s$s" --config docs/grid_new_methods.yaml --set "seeds=[$s]" --set "methods=[adaptive, dpq, mgqe, cafe, hash]" --set "budgets=[4, 10, 100]" --set reference=false
done
for r in sqrt proportional frequency; do
  run "alloc2_$r" --config docs/grid_allocation.yaml --out "runs/alloc_$r" --set "knobs={hash: {allocation: $r}, double_hash: {allocation: $r}}"
done
for p in "${pids[@]}"; do wait "$p"; done
echo "grids stopped ($(( $(date +%s) - t0 )) s)"
B --config docs/grid_v3.yaml "${COMMON[@]}" --dry-run > "$OUT/logs/tab_v3.log" 2>&1 &
B --config docs/grid_new_methods.yaml "${COMMON[@]}" --dry-run > "$OUT/logs/tab_new.log" 2>&1 &
for r in sqrt proportional frequency; do
  B --config docs/grid_allocation.yaml --out "runs/alloc_$r" --set "knobs={hash: {allocation: $r}, double_hash: {allocation: $r}}" "${COMMON[@]}" --dry-run > "$OUT/logs/tab_alloc_$r.log" 2>&1 &
done
B --config docs/grid_allocation.yaml --out runs/alloc_proportional200 --set "methods=[hash]" --set "knobs={hash: {allocation: proportional, collisionless_max: 200}}" "${COMMON[@]}" --dry-run > "$OUT/logs/tab_alloc_floor.log" 2>&1 &
wait
tar czf "$OUT/all.tgz" runs/grid_v3/results.* runs/grid_v3/cells runs/grid_new_methods/results.* runs/grid_new_methods/cells runs/alloc_*/results.* runs/alloc_*/cells "$OUT/logs"
echo "done ($(( $(date +%s) - t0 )) s)"
