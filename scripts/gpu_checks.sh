#!/usr/bin/env bash
# Everything a machine with a CUDA GPU checks, in one command: prints the machine, builds
# phasenets._C with its CUDA kernels against the torch there, runs the cuda-marked tests, then the
# GPU benchmarks (benchmarks/test_gpu.py: G1, G3, T1 on the GPU) and writes their RESULTS.md.
#
#   bash scripts/gpu_checks.sh
#
# Logs and results go to $OUT when it is set (the device tool's folder that comes back), else to
# build/gpu-checks: machine.log, build.log, cuda-tests.log, gpu-benchmarks.log,
# gpu-benchmarks.json, RESULTS.md. benchmarks/RESULTS.md itself is left as it was.
# Nothing is downloaded: torch, pytest and pytest-benchmark must be there already.
# Stops at once (exit 2) where there is no CUDA GPU. A failed build stops the script; failed tests
# or benchmarks do not stop the later steps, but make the exit code 1.
#
# Knobs: PYTHON (default: python3 if it imports torch, else .venv/bin/python), MAX_JOBS (parallel
# compiles, default: the cores), and each step's limit in seconds: BUILD_TIMEOUT (240),
# TEST_TIMEOUT (120), BENCH_TIMEOUT (180); together they fit one 10-minute device call.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LOGS="${OUT:-$ROOT/build/gpu-checks}"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1

die() { local code=$1; shift; echo "gpu_checks: $*" >&2; exit "$code"; }

if [[ -z "${PYTHON:-}" ]]; then
    for candidate in python3 "$ROOT/.venv/bin/python"; do
        if "$candidate" -c "import torch" >/dev/null 2>&1; then PYTHON="$(command -v "$candidate")"; break; fi
    done
fi
[[ -n "${PYTHON:-}" ]] || die 2 "no Python with torch found; set PYTHON=/path/to/python"

# --- the machine: fail fast without a GPU -------------------------------------------------------
"$PYTHON" - <<'EOF' || die 2 "no CUDA GPU here (see above): this script is for a machine with one; on a CPU machine run python benchmarks/report.py instead"
import sys
import torch
if torch.version.cuda is None:
    sys.exit(f"torch {torch.__version__} is a CPU-only build")
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
EOF
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi
command -v nvcc >/dev/null || die 2 "nvcc not found (not on PATH, not in /usr/local/cuda/bin): the CUDA kernels cannot be built"
"$PYTHON" -c "import pytest, pytest_benchmark" 2>/dev/null \
    || die 2 "$PYTHON lacks pytest or pytest-benchmark, and this script downloads nothing"
# ninja (and any other tool next to the interpreter) on PATH, for torch's extension builder
PATH="$(dirname "$PYTHON"):$PATH"

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), host $(uname -n), $(nproc) cores"
    nvidia-smi || echo "nvidia-smi failed or is missing"
    nvcc --version
    "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], sys.executable); \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version()); \
print('device', torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())"
    "$PYTHON" -c "import pytest, pytest_benchmark; print('pytest', pytest.__version__, 'pytest-benchmark', pytest_benchmark.__version__)"
    echo "ninja: $(ninja --version 2>/dev/null || echo 'not found: the build falls back to serial compiles')"
} 2>&1 | tee "$LOGS/machine.log"

# --- steps --------------------------------------------------------------------------------------
failed=()

# step NAME SECONDS COMMAND...: runs COMMAND under a time limit, its output shown and kept in
# $LOGS/NAME.log; returns COMMAND's exit code (124: it ran out of time).
step() {
    local name=$1 limit=$2 status
    shift 2
    echo
    echo "=== $name (limit ${limit}s): $*"
    set +e
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    status=${PIPESTATUS[0]}
    set -e
    case $status in
        0) echo "=== $name: ok" ;;
        124|137) echo "=== $name: STOPPED after ${limit}s (see $LOGS/$name.log)" ;;
        *) echo "=== $name: FAILED with exit code $status (see $LOGS/$name.log)" ;;
    esac
    return "$status"
}

# In place (phasenets/_C*.so), for this machine's torch; FORCE_CUDA makes a missing kernel build
# an error instead of a quiet CPU-only build. The arch is the visible GPU's (sm_90 on an H100/H200).
step build "${BUILD_TIMEOUT:-240}" env FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PYTHON" setup.py build_ext --inplace || die 1 "the build failed; nothing else can run (see $LOGS/build.log)"
"$PYTHON" -c "import sys; from phasenets import _extension as e; \
sys.exit(0 if e.native_has_cuda() else f'phasenets._C has no CUDA kernels: {e.native_load_error()}')" 2>&1 \
    | tee -a "$LOGS/build.log" || die 1 "the extension does not load with its CUDA kernels (see $LOGS/build.log)"

step cuda-tests "${TEST_TIMEOUT:-120}" "$PYTHON" -m pytest -m cuda tests -q -p no:cacheprovider \
    || failed+=(cuda-tests)

# Straight through pytest: report.py runs the whole benchmarks/ folder (its CPU benchmarks take
# many minutes), so it only renders the JSON here.
bench_status=0
step gpu-benchmarks "${BENCH_TIMEOUT:-180}" "$PYTHON" -m pytest benchmarks/test_gpu.py -q -s -p no:cacheprovider \
    --benchmark-json="$LOGS/gpu-benchmarks.json" || { bench_status=$?; failed+=(gpu-benchmarks); }

if [[ -f "$LOGS/gpu-benchmarks.json" ]]; then
    results="$ROOT/benchmarks/RESULTS.md"
    saved="$(mktemp)"
    cp "$results" "$saved"
    "$PYTHON" benchmarks/report.py --from-json "$LOGS/gpu-benchmarks.json" || failed+=(report)
    cp "$results" "$LOGS/RESULTS.md"
    cp "$saved" "$results"
    rm -f "$saved"
    printf '\nRun by `bash scripts/gpu_checks.sh`: `python -m pytest benchmarks/test_gpu.py -q -s` (exit code %s).\n' \
        "$bench_status" >>"$LOGS/RESULTS.md"
    echo
    cat "$LOGS/RESULTS.md"
else
    echo "no benchmark JSON was written: see $LOGS/gpu-benchmarks.log"
    failed+=(report)
fi

echo
if (( ${#failed[@]} )); then
    die 1 "failed: ${failed[*]} (logs in $LOGS)"
fi
echo "gpu_checks: all passed (logs in $LOGS)"
