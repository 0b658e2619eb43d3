#!/usr/bin/env bash
# The native checks CI runs beside pytest: builds csrc/ and the C++ tests with AddressSanitizer,
# runs them with CTest, and compiles the CUDA kernels for sm_80 and sm_90 wherever nvcc is found
# (no GPU needed) with their ATen entry points (compiled, not linked), so a broken kernel fails here.
#
#   bash scripts/native_checks.sh
#
# PYTHON (default: the first of python3, python, .venv/bin/python that imports torch) supplies
# torch; BUILD_DIR (default build/native-asan) keeps the objects, so reruns are incremental.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/native-asan}"
JOBS="${JOBS:-2}"

fail() { echo "native_checks: $*" >&2; exit 1; }

if [[ -z "${PYTHON:-}" ]]; then
    for candidate in python3 python "$ROOT/.venv/bin/python"; do
        if "$candidate" -c "import torch" >/dev/null 2>&1; then PYTHON="$(command -v "$candidate")"; break; fi
    done
fi
[[ -n "${PYTHON:-}" ]] || fail "no Python with torch found; set PYTHON=/path/to/python"
command -v cmake >/dev/null || fail "cmake not found (apt-get install cmake, or pip install cmake)"
if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi
generator=()
command -v ninja >/dev/null && generator=(-G Ninja)

cmake -S "$ROOT" -B "$BUILD_DIR" "${generator[@]}" -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DPython3_EXECUTABLE="$PYTHON" -DPHASENETS_ASAN=ON
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure
