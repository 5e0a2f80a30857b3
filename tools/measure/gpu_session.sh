#!/usr/bin/env bash
# The measurement of one lent GPU session, in one command (about 9 minutes on one H100/H200):
#   (0) where the time goes: host and GPU time per op and model step, profiler tables, and
#       the host microseconds of each layer of one op call (host_overhead.py),
#   (a) the GPU report at the current code (GPU tests, goal points, op bandwidth, fla, a sweep
#       cut to its budget),
#   (b) the fused HGRU kernel's launch-configuration sweep,
#   (c) the report again (no tests, no sweep) with the sweep's recommendation loaded through
#       HGRN_HGRU_CONFIG, so one call measures before and after tuning.
# Each step has a hard time limit and writes its report as it goes, so a step cut short still
# leaves what it measured. Usage, from the repository root:
#   bash tools/measure/gpu_session.sh OUTDIR [WHEELS_DIR]
# WHEELS_DIR (optional): wheels to install first (e.g. fla-core for the fla comparison).
set -u
OUT=${1:?usage: bash tools/measure/gpu_session.sh OUTDIR [WHEELS_DIR]}
WHEELS=${2:-}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
log() { echo "== $(date +%H:%M:%S) $*"; }

log "install"
if [ -n "$WHEELS" ] && ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --target /tmp/hgrn-site "$WHEELS"/*.whl \
        && export PYTHONPATH=/tmp/hgrn-site${PYTHONPATH:+:$PYTHONPATH}
fi
$PY -m pip install -q --no-deps --no-build-isolation -e . || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.mem,temperature.gpu --format=csv || true

log "(0) profile"
timeout -k 5 90 $PY -m hgrn_tools.measure.gpu_profile "$OUT/profile"
log "(0) exit $?"
timeout -k 5 60 $PY -m hgrn_tools.measure.host_overhead --device cuda --iters 100 --repeat 5 \
    --json "$OUT/profile/host_overhead.json" | tee "$OUT/profile/host_overhead.txt"
log "(0) host overhead exit $?"

log "(a) report before tuning"
timeout -k 5 240 $PY -m hgrn_tools.measure.gpu_report "$OUT/before" --budget 180 --test-timeout 120
log "(a) exit $?"

log "(b) launch-configuration sweep"
timeout -k 5 120 $PY -m hgrn_tools.measure.tune_hgru "$OUT/tune" --budget 100 >/dev/null
log "(b) exit $?"
grep -A4 "^## Recommended" "$OUT/tune/tune_hgru.md" 2>/dev/null

log "(c) report with the recommended configuration"
if $PY -c "import json,sys; sys.exit(not json.load(open(sys.argv[1])).get('recommended'))" \
        "$OUT/tune/tune_hgru.json" 2>/dev/null; then
    HGRN_HGRU_CONFIG="$OUT/tune/tune_hgru.json" timeout -k 5 100 \
        $PY -m hgrn_tools.measure.gpu_report "$OUT/after" --no-tests --no-sweep
    log "(c) exit $?"
else
    log "(c) skipped: the sweep recommended nothing"
fi
