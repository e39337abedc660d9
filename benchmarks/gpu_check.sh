#!/usr/bin/env bash
# One-shot GPU check, JSON out, at most 8 min (step limits 40 (pip, only without triton) + 50 + 50 + 90 + 240 s):
#   1. the kernel tests on CUDA;
#   2. bench_ops.py (the op at decode and prefill shapes, pytest-benchmark JSON);
#   3. the op's GB/s at 8x2048x4096 and 8x2048x5376, bf16 and fp32, against a copy, the naive chain
#      and torch.compile of the torch twin (benchmarks/gpu_figures.py ops);
#   4. a random-weight Gemma3-27B-shaped model (random:google/gemma-3-27b-it, bf16, bridge):
#      forward and greedy generation with ablation at every layer + bias + injection vs un-hooked,
#      then sweep trials/s at the memory planner's batch and the projected time of a 5,000-trial
#      cell (benchmarks/gpu_figures.py model).
#
#   bash benchmarks/gpu_check.sh OUTDIR               # on a machine with a CUDA GPU
#   bash benchmarks/gpu_check.sh --cpu-smoke OUTDIR   # the same steps with tiny shapes on CPU (a dry run)
#
# Writes OUTDIR/{env.txt,status.txt,<step>.log,bench_ops.json,ops.json,model.json,gpu_check.json};
# gpu_check.json gathers the environment, each step's status and the figures. A failing step is
# recorded and the script carries on; it exits non-zero if any failed.
set -u
SMOKE=0
if [ "${1:-}" = "--cpu-smoke" ]; then
    SMOKE=1
    shift
fi
OUT="${1:?usage: gpu_check.sh [--cpu-smoke] OUTDIR}"
mkdir -p "$OUT"
OUT="$(cd "$OUT" && pwd)"
cd "$(dirname "$0")/.."
PY="${PYTHON:-python}"
[ -x .venv/bin/python ] && [ -z "${PYTHON:-}" ] && PY=.venv/bin/python
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
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
    date -u +%Y-%m-%dT%H:%M:%SZ
} >"$OUT/env.txt" 2>&1
cat "$OUT/env.txt"

if [ "$SMOKE" -eq 1 ]; then
    FIG=(--smoke)
    # the kernel in Triton's interpreter on CPU tensors (its values, never its speed)
    step test_kernel 300 "$PY" -m pytest tests/kernels/test_kernel.py -q -x -p no:cacheprovider
    step bench_ops 300 "$PY" -m pytest benchmarks/bench_ops.py --benchmark-enable -q -p no:cacheprovider \
        --benchmark-json "$OUT/bench_ops.json" --benchmark-max-time=0.05 -k "decode-8x1x576"
    step gpu_ops 600 "$PY" benchmarks/gpu_figures.py ops --out "$OUT/ops.json" "${FIG[@]}"
    step gpu_model 600 "$PY" benchmarks/gpu_figures.py model --out "$OUT/model.json" "${FIG[@]}"
else
    FIG=()
    unset TRITON_INTERPRET MOIA_FORCE_TRITON  # the real compiler on CUDA tensors
    if ! "$PY" -c "import triton" >/dev/null 2>&1; then
        step pip 40 "$PY" -m pip install "triton>=3.0,<4"
    fi
    step test_kernel 50 "$PY" -m pytest tests/kernels/test_kernel.py -q -p no:cacheprovider
    step bench_ops 50 "$PY" -m pytest benchmarks/bench_ops.py --benchmark-enable -q -p no:cacheprovider \
        --benchmark-json "$OUT/bench_ops.json" --benchmark-max-time=0.1
    step gpu_ops 90 "$PY" benchmarks/gpu_figures.py ops --out "$OUT/ops.json"
    step gpu_model 240 "$PY" benchmarks/gpu_figures.py model --out "$OUT/model.json"
fi

# Activation patching (bench_patching.py): the resid_pre sweep of a 16-token pair on SmolLM2, moia's
# batched sweep against transformer_lens.patching's 480 batch-1 forwards, on CUDA; at most 180 s.
if [ "$SMOKE" -eq 0 ]; then  # on CPU the peer takes many minutes: GPU only
    step bench_patching 180 "$PY" -m pytest benchmarks/bench_patching.py --benchmark-enable -q -s -p no:cacheprovider \
        --benchmark-json "$OUT/bench_patching.json"
fi

"$PY" - "$OUT" "$SMOKE" <<'EOF'
import json, pathlib, sys
out, smoke = pathlib.Path(sys.argv[1]), sys.argv[2] == "1"
summary = {"smoke": smoke, "env": (out / "env.txt").read_text(), "steps": {}}
for line in (out / "status.txt").read_text().splitlines():
    name, rc, secs = line.split()
    summary["steps"][name] = {"rc": int(rc.removeprefix("rc=")), "seconds": int(secs.removesuffix("s"))}
for name in ("ops", "model"):
    path = out / f"{name}.json"
    summary[name] = json.loads(path.read_text()) if path.exists() else None
(out / "gpu_check.json").write_text(json.dumps(summary, indent=1) + "\n")
print(f"wrote {out / 'gpu_check.json'}")
EOF
cat "$STATUS"
exit "$failed"
