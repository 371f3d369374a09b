# Sourced by the examples/reproduce/device_*.sh scripts (with ROOT set to the checkout): run slimembed from
# this checkout on a machine where it is not installed (a GPU image has torch and the rest),
# through a PYTHONPATH shim that maps slimembed.{ctr,tables,search,datasets} to the top-level
# folders, as pyproject.toml does.
# PYTHONSAFEPATH: the checkout's own slimembed/ (only __init__) must not shadow the shim.
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 PYTHONSAFEPATH=1
shim=$(mktemp -d)/shim
mkdir -p "$shim/slimembed"
cp "$ROOT/slimembed/__init__.py" "$shim/slimembed/"
for p in ctr tables search datasets; do ln -s "$ROOT/$p" "$shim/slimembed/$p"; done
export PYTHONPATH="$shim${PYTHONPATH:+:$PYTHONPATH}"
