#!/usr/bin/env bash
# Everything a machine with a CUDA GPU checks, in one command (about 8 minutes at most):
#
#   bash scripts/gpu_checks.sh
#
#  1. what needs no GPU first, so that only the GPU can be missing once it starts: the Python with
#     torch, nvcc, pytest and pytest-benchmark, the shipped dataset unpacked to a temporary folder
#     (scripts/data/fashion-mnist-small.tar.gz), every training command line checked;
#  2. the machine (GPU, driver, nvcc, torch); stops here (exit 2) where there is no CUDA GPU;
#  3. builds phasenets._C with its CUDA kernels against the torch there (MAX_JOBS: the cores);
#  4. the cuda-marked tests (pytest -m cuda);
#  5. AlexNet at 224 px (Fashion-MNIST upscaled): one standard phase with fp16 autocast and its
#     GradScaler, and one under torchrun --nproc_per_node=1, which must use the NCCL backend;
#  6. the GPU benchmarks G1, G3 and T1 (benchmarks/test_gpu.py) and their RESULTS.md;
#  7. T2 on the GPU: AlexNet at 224 px with bf16 autocast, 2 epochs per phase, phase-wise reading
#     a cuda-tier cache, phase-wise recomputing (--cache off), and standard training (which keeps
#     its images on the GPU, as the cached run's phase 1 does: level 0 of the cache); their wall
#     times and test accuracies go to t2-gpu.json and t2-gpu.md, with the GPU model.
#
# Logs and results go to $OUT when it is set (the device tool's folder that comes back), else to
# build/gpu-checks: machine.log, one <step>.log per step, steps.tsv (each step's status, seconds
# and limit), gpu-benchmarks.json, RESULTS.md, t2-gpu.json, t2-gpu.md, and runs/<run>/ (each
# training run's summary.json, metrics.csv and config.yaml; checkpoints stay in the temporary
# folder, which is deleted at the end). benchmarks/RESULTS.md itself is left as it was.
# Nothing is downloaded: torch, pytest and pytest-benchmark must be there already.
#
# Every step has its own time limit, and none starts past the whole run's budget (TOTAL_TIMEOUT);
# a failed step does not stop the later ones (only a failed build does: nothing can run without
# it). Exit code: 0 when every step passed, 1 when one failed or did not run, 2 when the machine
# cannot run the checks (no CUDA GPU, no nvcc, no pytest).
#
# Knobs: PYTHON (default: python3 if it imports torch, else .venv/bin/python), MAX_JOBS (parallel
# compiles, default: the cores), LOADER_WORKERS (data loading processes of the training runs, 8),
# TOTAL_TIMEOUT (seconds for the whole run, 480) and each step's limit in seconds: BUILD_TIMEOUT
# (240), TEST_TIMEOUT (150), RUN_TIMEOUT (120, each training run), BENCH_TIMEOUT (180).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LOGS="${OUT:-$ROOT/build/gpu-checks}"
mkdir -p "$LOGS"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's phasenets, also in torchrun's workers
TOTAL_TIMEOUT="${TOTAL_TIMEOUT:-480}"
DEADLINE=$((SECONDS + TOTAL_TIMEOUT))
STARTED=$EPOCHREALTIME
DATASET="$ROOT/scripts/data/fashion-mnist-small.tar.gz"

die() { local code=$1; shift; echo "gpu_checks: $*" >&2; exit "$code"; }
seconds_since() { awk -v start="$1" -v now="$EPOCHREALTIME" 'BEGIN { printf "%.1f", now - start }'; }

# --- 1. what needs no GPU ---------------------------------------------------------------------------
if [[ -z "${PYTHON:-}" ]]; then
    for candidate in python3 "$ROOT/.venv/bin/python"; do
        if "$candidate" -c "import torch" >/dev/null 2>&1; then PYTHON="$(command -v "$candidate")"; break; fi
    done
fi
[[ -n "${PYTHON:-}" ]] || die 2 "no Python with torch found; set PYTHON=/path/to/python"
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi
command -v nvcc >/dev/null || die 2 "nvcc not found (not on PATH, not in /usr/local/cuda/bin): the CUDA kernels cannot be built"
"$PYTHON" -c "import pytest, pytest_benchmark" 2>/dev/null \
    || die 2 "$PYTHON lacks pytest or pytest-benchmark, and this script downloads nothing"
# ninja (and any other tool next to the interpreter) on PATH, for torch's extension builder
PATH="$(dirname "$PYTHON"):$PATH"

WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu-checks.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
tar -xzf "$DATASET" -C "$WORK"
DATA="$WORK/fashion-mnist-small"
for split in train validation test; do
    [[ $(find "$DATA/$split" -mindepth 1 -maxdepth 1 -type d | wc -l) == 10 ]] \
        || die 1 "$DATASET: $split/ should hold 10 class folders"
done
RUNS="$WORK/runs"

# The training runs: AlexNet at 224 px from the 28 px images, seed 0, no TensorBoard.
ALEXNET=(--data-dir "$DATA" --model alexnet --in-channels 1 --image-size 224 --seed 0 --patience 0
         --num-workers "${LOADER_WORKERS:-8}" --tensorboard false --device cuda)
declare -A RUN_ARGS=(
    [fp16-standard]="--schedule standard --amp fp16 --max-epochs 1 --cache off"
    [torchrun-nccl]="--schedule standard --amp bf16 --max-epochs 1 --cache off"
    [phasewise-cache-cuda]="--schedule phasewise --amp bf16 --max-epochs 2 --cache cuda"
    [phasewise-recompute]="--schedule phasewise --amp bf16 --max-epochs 2 --cache off"
    [standard]="--schedule standard --amp bf16 --max-epochs 2 --cache auto"  # its images kept on the GPU, as phase 1's are
)
T2_RUNS=(phasewise-cache-cuda standard phasewise-recompute)  # T2 needs the first two

# $WORK/commands/NAME: the arguments of `phasenets train` for run NAME, one per line.
mkdir -p "$WORK/commands"
for name in "${!RUN_ARGS[@]}"; do
    read -r -a extra <<<"${RUN_ARGS[$name]}"
    printf '%s\n' "${ALEXNET[@]}" "${extra[@]}" --output "$RUNS/$name" >"$WORK/commands/$name"
done
# Every command line is checked now, so that a typo fails here rather than on the GPU.
"$PYTHON" -W ignore::RuntimeWarning - "$WORK"/commands/* <<'EOF' || die 1 "a training command line is invalid (see above)"
import sys
from pathlib import Path
from phasenets.cli import build_parser
from phasenets.config import ConfigError, config_from_args
for path in sys.argv[1:]:
    try:
        config_from_args(build_parser().parse_args(["train", *Path(path).read_text().splitlines()]))
    except (ConfigError, SystemExit) as error:
        sys.exit(f"run {Path(path).name}: {error}")
EOF
echo "gpu_checks: ready after $(seconds_since "$STARTED")s (Python, nvcc, pytest, data, command lines); looking for a GPU"

# --- 2. the machine: stop without a GPU ------------------------------------------------------------
"$PYTHON" - <<'EOF' || die 2 "no CUDA GPU here (see above): this script is for a machine with one; on a CPU machine run python benchmarks/report.py instead"
import sys
import torch
if torch.version.cuda is None:
    sys.exit(f"torch {torch.__version__} is a CPU-only build")
if not torch.cuda.is_available():
    sys.exit(f"torch {torch.__version__} (CUDA {torch.version.cuda}) sees no CUDA device")
EOF

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), host $(uname -n), $(nproc) cores"
    nvidia-smi || echo "nvidia-smi failed or is missing"
    nvcc --version
    "$PYTHON" -c "import sys, torch; print('python', sys.version.split()[0], sys.executable); \
print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version(), \
'NCCL', '.'.join(map(str, torch.cuda.nccl.version()))); \
print('device', torch.cuda.get_device_name(), 'capability', torch.cuda.get_device_capability())"
    "$PYTHON" -c "import pytest, pytest_benchmark; print('pytest', pytest.__version__, 'pytest-benchmark', pytest_benchmark.__version__)"
    echo "ninja: $(ninja --version 2>/dev/null || echo 'not found: the build falls back to serial compiles')"
} 2>&1 | tee "$LOGS/machine.log"

# --- steps -------------------------------------------------------------------------------------------
failed=()
: >"$LOGS/steps.tsv"
status=0

# step NAME SECONDS COMMAND...: runs COMMAND under a time limit (cut to what is left of the whole
# budget), its output shown and kept in $LOGS/NAME.log; records the outcome in steps.tsv and in
# `failed`, and leaves COMMAND's exit code in `status` (124: out of time). Always returns 0.
step() {
    local name=$1 limit=$2 left started outcome
    shift 2
    left=$((DEADLINE - SECONDS))
    if ((left < 20)); then
        echo "=== $name: NOT RUN: ${left}s left of the ${TOTAL_TIMEOUT}s budget"
        printf '%s\tnot run\t0\t%s\n' "$name" "$limit" >>"$LOGS/steps.tsv"
        failed+=("$name (not run)")
        status=124
        return 0
    fi
    ((limit <= left)) || limit=$left
    echo
    echo "=== $name (limit ${limit}s): $*"
    started=$EPOCHREALTIME
    set +e
    timeout --kill-after=15 "$limit" "$@" 2>&1 | tee "$LOGS/$name.log"
    status=${PIPESTATUS[0]}
    set -e
    case $status in
        0) outcome=ok ;;
        124|137) outcome="stopped after ${limit}s" ;;
        *) outcome="failed ($status)" ;;
    esac
    printf '%s\t%s\t%s\t%s\n' "$name" "$outcome" "$(seconds_since "$started")" "$limit" >>"$LOGS/steps.tsv"
    echo "=== $name: $outcome in $(seconds_since "$started")s (log: $LOGS/$name.log)"
    ((status == 0)) || failed+=("$name")
    return 0
}

# train NAME [LAUNCHER...]: `phasenets train` run NAME, started by LAUNCHER (default: this Python);
# its small files are kept under $LOGS/runs/NAME.
train() {
    local name=$1 args
    shift
    (($#)) || set -- "$PYTHON"
    mapfile -t args <"$WORK/commands/$name"
    step "$name" "${RUN_TIMEOUT:-120}" "$@" -m phasenets train "${args[@]}"
    mkdir -p "$LOGS/runs/$name"
    for file in summary.json metrics.csv config.yaml; do
        [[ ! -f "$RUNS/$name/$file" ]] || cp "$RUNS/$name/$file" "$LOGS/runs/$name/"
    done
}

# 3. In place (phasenets/_C*.so), for this machine's torch; FORCE_CUDA makes a missing kernel build an
# error instead of a quiet CPU-only build. The arch is the visible GPU's (sm_90 on an H100/H200).
step build "${BUILD_TIMEOUT:-240}" env FORCE_CUDA=1 MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$PYTHON" setup.py build_ext --inplace
((status == 0)) || die 1 "the build failed; nothing else can run (see $LOGS/build.log)"
"$PYTHON" -c "import sys; from phasenets import _extension as e; \
sys.exit(0 if e.native_has_cuda() else f'phasenets._C has no CUDA kernels: {e.native_load_error()}')" 2>&1 \
    | tee -a "$LOGS/build.log" || die 1 "the extension does not load with its CUDA kernels (see $LOGS/build.log)"

# 4.
step cuda-tests "${TEST_TIMEOUT:-150}" "$PYTHON" -m pytest -m cuda tests -q -p no:cacheprovider

# 5. fp16 autocast with its GradScaler; then one process under torchrun, which must run NCCL (its
# log shows NCCL's own lines only where a process group was made).
train fp16-standard
NCCL_DEBUG=INFO train torchrun-nccl "$PYTHON" -m torch.distributed.run --standalone --nproc_per_node=1
if ((status == 0)) && ! grep -q "NCCL INFO" "$LOGS/torchrun-nccl.log"; then
    echo "=== torchrun-nccl: the run passed but never used NCCL: phasenets made no process group" \
        "at WORLD_SIZE=1, so this step checked torchrun's environment only"
    failed+=("torchrun-nccl (no NCCL process group)")
fi

# 6. Straight through pytest: report.py runs the whole benchmarks/ folder (its CPU benchmarks take
# many minutes), so it only renders the JSON here.
step gpu-benchmarks "${BENCH_TIMEOUT:-180}" "$PYTHON" -m pytest benchmarks/test_gpu.py -q -s -p no:cacheprovider \
    --benchmark-json="$LOGS/gpu-benchmarks.json"
bench_status=$status
if [[ -f "$LOGS/gpu-benchmarks.json" ]]; then
    results="$ROOT/benchmarks/RESULTS.md"
    saved="$(mktemp)"
    cp "$results" "$saved"
    "$PYTHON" benchmarks/report.py --from-json "$LOGS/gpu-benchmarks.json" || failed+=(benchmark-report)
    cp "$results" "$LOGS/RESULTS.md"
    cp "$saved" "$results"
    rm -f "$saved"
    # shellcheck disable=SC2016  # the backticks are markdown, not a command
    printf '\nRun by `bash scripts/gpu_checks.sh`: `python -m pytest benchmarks/test_gpu.py -q -s` (exit code %s).\n' \
        "$bench_status" >>"$LOGS/RESULTS.md"
    echo
    cat "$LOGS/RESULTS.md"
else
    echo "no benchmark JSON was written: see $LOGS/gpu-benchmarks.log"
    failed+=(benchmark-report)
fi

# 7.
for name in "${T2_RUNS[@]}"; do
    train "$name"
done
"$PYTHON" scripts/gpu_t2_report.py --out "$LOGS" --runs "$LOGS/runs" --steps "$LOGS/steps.tsv" "${T2_RUNS[@]}" \
    || failed+=(t2-report)

echo
echo "=== steps (status, seconds, limit):"
column -t -s $'\t' "$LOGS/steps.tsv" 2>/dev/null || cat "$LOGS/steps.tsv"
echo "gpu_checks: $(seconds_since "$STARTED")s in all"
if ((${#failed[@]})); then
    die 1 "failed: ${failed[*]} (logs in $LOGS)"
fi
echo "gpu_checks: all passed (logs in $LOGS)"
