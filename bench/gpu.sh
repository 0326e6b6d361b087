#!/usr/bin/env bash
# bench/gpu.sh OUTDIR -- everything a GPU machine should run, in one command (~5 minutes on an H200):
#   (a) the GPU tests (pytest tests -m "gpu or tensorrt": the Triton kernel on real CUDA, backend
#       and tile exactness, stream overlap, TensorRT engines where TensorRT is installed),
#   (b) the GPU benchmarks, file by file -> OUTDIR/<device>.json,
#   (c) the quality guard for the CUDA precisions -> OUTDIR/quality_guard.json,
#   (d) only when SRTRT_TRAIN_MINUTES=N is set: N wall-clock minutes of training, both phases
#       from the shipped weights (bench/gpu_train.py) -> OUTDIR/train/; N adds to the total,
#   (e) the report -> OUTDIR/REPORT.md, OUTDIR/throughput.png; a short table is printed last.
# Everything it prints also goes to OUTDIR/gpu.log.
#
# Needs a python with torch (CUDA), triton and srtrt's light dependencies (zlib-ng, safetensors,
# pillow; spandrel for the zoo part, which skips without it); srtrt need not be installed
# (bench/srtrt_path.py maps the checkout), nothing is installed and no network is used. If pytest
# or pytest-benchmark are missing, their pure-Python packages are taken from a carried
# .venv/lib/python3*/site-packages when one is there. Set5 and the big image come from
# ../shared/data, or from shared/data inside the checkout (bench/workloads.py).
#
# The time limits of the steps add up to under 9.5 minutes (tests 90 s, benchmarks 390 s,
# guard 40 s, report 40 s).
# Exit codes: 0 every step passed (a guard refused for lack of the trained model or Set5 counts as
#   skipped); 1 a step failed (see the log); 2 usage; 3 no CUDA GPU visible: nothing was run.
# SRTRT_GPU_SH_ON_CPU=1 runs every step on a CPU anyway, in smoke mode, to check the script.
# PYTHON=/path/to/python chooses the interpreter.
set -u -o pipefail

if [ $# -ne 1 ]; then
    echo "usage: bench/gpu.sh OUTDIR" >&2
    exit 2
fi
mkdir -p "$1" && OUT=$(cd "$1" && pwd)
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
LOG="$OUT/gpu.log"
: > "$LOG"
exec > >(tee -a "$LOG") 2>&1
STARTED=$(date +%s)

# -- interpreter: the repository's venv when it has torch, else the system python ----------
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -x .venv/bin/python ] && .venv/bin/python -c "import torch" 2>/dev/null; then
    PY=.venv/bin/python
else
    PY=$(command -v python3 || command -v python)
fi
RUN=("$PY" bench/srtrt_path.py)

# -- pytest from a carried venv's pure-Python packages, when the interpreter lacks it ---------
PLUGINS=()
if ! "$PY" -c "import pytest, pytest_benchmark" 2>/dev/null; then
    SITE=$(ls -d .venv/lib/python3*/site-packages 2>/dev/null | head -n 1)
    if [ -n "$SITE" ]; then
        DEPS=$(mktemp -d)
        for pkg in pytest _pytest pluggy iniconfig pytest_benchmark cpuinfo py.py packaging; do
            if [ -e "$SITE/$pkg" ] && ! "$PY" -c "import ${pkg%.py}" 2>/dev/null; then
                ln -s "$REPO/$SITE/$pkg" "$DEPS/$pkg"
            fi
        done
        export PYTHONPATH="$DEPS${PYTHONPATH:+:$PYTHONPATH}"
        # without its *.dist-info, pytest finds no entry point for the plugin: load it by name
        [ -e "$DEPS/pytest_benchmark" ] && PLUGINS=(-p pytest_benchmark.plugin)
        echo "pytest packages taken from $SITE: $(ls "$DEPS" | tr '\n' ' ')"
    fi
fi

echo "== environment ($(date -u +%FT%TZ), $(hostname))"
"$PY" - <<'EOF'
import importlib, sys
print(f"python {sys.version.split()[0]} ({sys.executable})")
for name in ("torch", "triton", "onnxruntime", "tensorrt", "numpy", "PIL", "safetensors", "pytest",
             "pytest_benchmark", "matplotlib", "onnx", "onnxscript", "hypothesis"):
    try:
        module = importlib.import_module(name)
        print(f"  {name:<17} {getattr(module, '__version__', 'present')}")
    except Exception as e:  # absent, or present but broken: either way, say so
        print(f"  {name:<17} absent ({e.__class__.__name__})")
try:
    import torch
    print(f"torch CUDA {torch.version.cuda}, GPUs visible: {torch.cuda.device_count()}")
    for i in range(torch.cuda.device_count()):
        p = torch.cuda.get_device_properties(i)
        print(f"  cuda:{i} {p.name}, sm {p.major}.{p.minor}, {p.total_memory / 2**30:.0f} GiB")
except Exception as e:
    print(f"torch unusable: {e}")
EOF
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader

ON_CPU=0
if ! "$PY" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)" 2>/dev/null; then
    if [ "${SRTRT_GPU_SH_ON_CPU:-0}" != "1" ]; then
        echo "no CUDA GPU is visible to $PY: nothing to run here (exit 3). Run bench/gpu.sh on the GPU machine;"
        echo "SRTRT_GPU_SH_ON_CPU=1 bench/gpu.sh OUTDIR checks the script's steps on a CPU in smoke mode."
        exit 3
    fi
    ON_CPU=1
    echo "no CUDA GPU: SRTRT_GPU_SH_ON_CPU=1, so every step runs on the CPU in smoke mode (a check of this script)"
fi

SLUG=$("${RUN[@]}" bench/machine_info.py --slug)
declare -A STATUS
STEPS=()
step() {  # step NAME SECONDS COMMAND...: run with a time limit, note how it ended
    local name=$1 limit=$2
    shift 2
    STEPS+=("$name")
    echo
    echo "== $name (limit ${limit}s): $*"
    local t0 rc
    t0=$(date +%s)
    timeout --kill-after=10 "$limit" "$@"
    rc=$?
    STATUS[$name]="rc $rc, $(( $(date +%s) - t0 ))s"
    return $rc
}

FAILED=0
# (a) GPU tests, TensorRT's real engines included (marked `tensorrt`; they skip where TensorRT is not
#     installed): modules that need absent packages fail to collect; the others still run.
step gpu-tests 90 "${RUN[@]}" -m pytest tests -m "gpu or tensorrt" -q -rs -p no:cacheprovider \
    --continue-on-collection-errors --junitxml="$OUT/gpu-tests.xml" || FAILED=1

# (b) benchmarks, one pytest run per part (pytest-benchmark writes its JSON only when a run
#     ends, so a part that overruns its limit loses its own results, not the others'), most
#     wanted first; then merged into one JSON for this device. Limits add up to 390 s (an H200
#     machine with 16 cores took 13/46/27/37/30 s for the first five).
if [ $ON_CPU = 1 ]; then MODE=(--smoke); else MODE=(); fi
PARTS="$OUT/parts"
rm -rf "$PARTS"  # an earlier run's part must not stand in for one that wrote nothing this time
mkdir -p "$PARTS"
PART_FILES=()  # merged in this order: the first part's machine info (and mode) is the run's
# encoding is a CPU benchmark: on a GPU machine its full mode (level 9 on every core) overran 90 s,
# so it runs there in quick mode.
BENCH_PARTS=(  # name limit target [mode]
    "peak 20 bench/test_peak.py"
    "throughput 70 bench/test_throughput.py::test_throughput"
    "sweeps 40 bench/test_throughput.py::test_sweep"
    "pipeline 50 bench/test_pipeline.py"
    "varied 50 bench/test_varied.py"
    "encoding 90 bench/test_encoding.py --quick"
    "zoo 70 bench/test_zoo.py"
)
for part in "${BENCH_PARTS[@]}"; do
    read -r name limit target part_mode <<< "$part"
    if [ $ON_CPU = 1 ] || [ -z "$part_mode" ]; then part_mode=${MODE[@]+"${MODE[@]}"}; fi
    # the CPU check exports and compiles every zoo model on two cores: more than a GPU machine's limits
    if [ $ON_CPU = 1 ]; then limit=$((limit * 3)); fi
    step "bench-$name" "$limit" "${RUN[@]}" -m pytest "$target" -q -p no:cacheprovider $part_mode \
        ${PLUGINS[@]+"${PLUGINS[@]}"} --benchmark-json="$PARTS/$name.json" --benchmark-columns=min,median,rounds \
        || FAILED=1
    PART_FILES+=("$PARTS/$name.json")
done
"$PY" bench/merge_results.py "$OUT/$SLUG.json" "${PART_FILES[@]}" || FAILED=1

# (c) quality guard (needs the trained default model; exit 2 = refused, not a failure)
if [ $ON_CPU = 1 ]; then GUARD_DEVICE=cpu; else GUARD_DEVICE=cuda; fi
# Measured into a copy of the shipped file: the checkout's own stays as it is (a CPU check run must
# not rewrite shipped data); copy OUTDIR/quality_guard.json into srtrt/weights/ to keep a GPU run's.
[ -f srtrt/weights/quality_guard.json ] && cp srtrt/weights/quality_guard.json "$OUT/quality_guard.json"
step quality-guard 40 "${RUN[@]}" bench/quality_guard.py --device $GUARD_DEVICE --json "$OUT/quality_guard.json"
rc=$?
if [ $rc = 2 ]; then STATUS[quality-guard]="refused (no trained default model, or no Set5: see above)"; elif [ $rc != 0 ]; then FAILED=1; fi

# (d) training, when a budget is given: checkpoints and metrics for a later CPU evaluation (never shipped from here)
if [ -n "${SRTRT_TRAIN_MINUTES:-}" ]; then
    TRAIN_LIMIT=$("$PY" -c "import sys; print(int(float(sys.argv[1]) * 72) + 120)" "$SRTRT_TRAIN_MINUTES")  # +20%, +2 min set-up
    step train "$TRAIN_LIMIT" "${RUN[@]}" bench/gpu_train.py "$OUT/train" --minutes "$SRTRT_TRAIN_MINUTES" \
        ${MODE[@]+"${MODE[@]}"} || FAILED=1
fi

# (e) report, whose short table is the last thing printed
echo
echo "== steps ($(( $(date +%s) - STARTED ))s in all; results in $OUT)"
for name in "${STEPS[@]}"; do
    printf '  %-17s %s\n' "$name" "${STATUS[$name]}"
done
if [ -f "$OUT/$SLUG.json" ]; then
    echo
    step report 40 "${RUN[@]}" bench/report.py "$OUT/$SLUG.json" --out "$OUT" || FAILED=1
else
    echo "no benchmark JSON was written: no report"
    FAILED=1
fi
exit $FAILED
