#!/usr/bin/env bash
# One-shot GPU check (at most 8 min: 90 + 120 + 150 + 120 s of step limits): kernel tests on CUDA, then the op (and model) benchmarks.
#   bash benchmarks/gpu_check.sh OUTDIR
# Writes OUTDIR/{env.txt,pip.log,test_kernel.log,bench_ops.log,bench_ops.json,bench_model.*,status.txt}.
# A failing step is recorded in status.txt and the script carries on; it exits non-zero if any failed.
set -u
OUT="${1:?usage: gpu_check.sh OUTDIR}"
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
unset TRITON_INTERPRET MOIA_FORCE_TRITON  # the real compiler on CUDA tensors
STATUS="$OUT/status.txt"
: >"$STATUS"
failed=0

step() {  # step NAME TIMEOUT_S CMD...: run with a time limit, log to OUT/NAME.log, record the rc
    local name="$1" limit="$2"
    shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc $((SECONDS - t0))s" >>"$STATUS"
    [ "$rc" -eq 0 ] || failed=1
    tail -n 3 "$OUT/$name.log"
}

{
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
    "$PY" -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.is_available())"
    "$PY" -c "import triton; print('triton', triton.__version__)" 2>&1
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if ! "$PY" -c "import triton" >/dev/null 2>&1; then
    step pip 90 "$PY" -m pip install "triton>=3.0,<4"
fi

step test_kernel 120 "$PY" -m pytest tests/test_kernel.py -q -p no:cacheprovider
step bench_ops 150 "$PY" -m pytest benchmarks/bench_ops.py --benchmark-enable -q -p no:cacheprovider \
    --benchmark-json "$OUT/bench_ops.json" --benchmark-max-time=0.5
if [ -f benchmarks/bench_model.py ]; then
    step bench_model 120 "$PY" -m pytest benchmarks/bench_model.py --benchmark-enable -q -p no:cacheprovider \
        --benchmark-json "$OUT/bench_model.json" --benchmark-max-time=0.5
fi

# Activation patching (bench_patching.py): the resid_pre sweep of a 16-token pair on SmolLM2, moia's
# batched sweep against transformer_lens.patching's 480 batch-1 forwards, on CUDA; at most 180 s.
if [ -f benchmarks/bench_patching.py ]; then
    step bench_patching 180 "$PY" -m pytest benchmarks/bench_patching.py --benchmark-enable -q -s -p no:cacheprovider \
        --benchmark-json "$OUT/bench_patching.json"
fi

cat "$STATUS"
exit "$failed"
