# Sourced by device_plan_grid.sh and device_plan_grid_more.sh (ROOT set, cwd = the checkout): the
# defaults, the PYTHONPATH shim, and B / run, which run `slimembed benchmark` in this process or in
# the background (stopped after GRID_SECONDS) with the shared --set options in COMMON.
OUT=${OUT:-runs/device_v3}
ROWS=${ROWS:-2000000}
DEVICE=${DEVICE:-cuda}
GRID_SECONDS=${GRID_SECONDS:-430}
PY=${PY:-python3}
mkdir -p "$OUT/logs"
. "$ROOT/examples/reproduce/device_env.sh"
t0=$(date +%s)
BENCH="import sys; from slimembed.ctr.cli import main; sys.exit(main(['benchmark'] + sys.argv[1:]))"
COMMON=(--set "generate.rows=$ROWS" --set "experiment.train.device=$DEVICE")
B() { $PY -c "$BENCH" "$@"; }
pids=()
run() { local name=$1; shift; timeout "$GRID_SECONDS" $PY -c "$BENCH" "$@" "${COMMON[@]}" > "$OUT/logs/$name.log" 2>&1 & pids+=($!); }
