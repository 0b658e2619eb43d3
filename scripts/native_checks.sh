#!/usr/bin/env bash
# The native checks CI runs beside pytest: builds csrc/ and the C++ tests with AddressSanitizer,
# runs them with CTest, and compiles the CUDA kernels for sm_80 and sm_90 wherever nvcc is found
# (no GPU needed), so a broken kernel fails here.
#
#   bash scripts/native_checks.sh            # PYTHON=.venv/bin/python BUILD_DIR=build/native-asan
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
BUILD_DIR="${BUILD_DIR:-$ROOT/build/native-asan}"
JOBS="${JOBS:-2}"

if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then
    export PATH="/usr/local/cuda/bin:$PATH"
fi

cmake -S "$ROOT" -B "$BUILD_DIR" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
    -DPython3_EXECUTABLE="$PYTHON" -DPHASENETS_ASAN=ON
cmake --build "$BUILD_DIR" -j "$JOBS"
ctest --test-dir "$BUILD_DIR" --output-on-failure
