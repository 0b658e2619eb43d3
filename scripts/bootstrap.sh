#!/usr/bin/env bash
# Sets up everything phasenets needs on a fresh machine, then runs one job.
#
#   bash scripts/bootstrap.sh demo     # set up, then phase-wise vs standard training on the demo data
#   bash scripts/bootstrap.sh test     # set up, then the test suite (pytest, then the native CTest checks)
#   bash scripts/bootstrap.sh setup    # set up only
#   bash scripts/bootstrap.sh bench    # set up, then the benchmark suite (writes benchmarks/RESULTS.md)
#
# Environment knobs:
#   PYTHON=python3.11      the interpreter to build the virtual environment from (3.10+)
#   VENV=.venv             where the virtual environment lives
#   TORCH_VERSION=2.13.0   the torch to install when the interpreter has none
#
# torch is installed once, pinned, and never re-resolved: a constraints file pins every later pip call
# to the torch that is there, and the extension is built with --no-build-isolation against it. A user
# whose interpreter already has torch (a CUDA build, say) keeps it: the venv then sees the system
# site-packages and no torch is installed.
#
# Sourcing the script (`source scripts/bootstrap.sh`) defines its functions and runs nothing: the
# tests call them one by one against a stand-in venv.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-$ROOT/.venv}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"

log() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

check_python() {
    "$PYTHON" - <<'EOF' || { log "phasenets needs Python 3.10 or newer (set PYTHON=...)"; exit 1; }
import sys
sys.exit(0 if sys.version_info >= (3, 10) else 1)
EOF
}

make_venv() {
    [[ -x "$VENV/bin/python" ]] && return
    if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
        log "using the torch that $PYTHON already has ($("$PYTHON" -c 'import torch; print(torch.__version__)'))"
        "$PYTHON" -m venv --system-site-packages "$VENV"
    else
        "$PYTHON" -m venv "$VENV"
    fi
}

# numpy goes in before anything imports torch: a torch that finds no numpy warns "Failed to
# initialize NumPy" on every import (write_constraints' is the first).
install_torch() {
    "$VENV/bin/python" -c "import numpy" >/dev/null 2>&1 || "$VENV/bin/pip" install -q numpy
    if "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
        return
    fi
    log "installing torch==$TORCH_VERSION"
    "$VENV/bin/pip" install -q "torch==$TORCH_VERSION"
}

# Pins every later pip call to the torch now installed, so nothing can swap it for another build.
write_constraints() {
    local version
    version="$("$VENV/bin/python" -c 'import torch; print(torch.__version__)')"
    echo "torch==$version" >"$VENV/constraints.txt"
}

# DALI's wheel follows the CUDA major version of the installed torch (a CPU torch gets the CUDA 13
# wheel, whose CPU-only pipelines run anywhere). DALI is optional: without it the torch loader is used.
dali_package() {
    "$VENV/bin/python" - <<'EOF'
import torch
cuda = torch.version.cuda
major = int(cuda.split(".")[0]) if cuda else 13
print({11: "nvidia-dali-cuda110", 12: "nvidia-dali-cuda120"}.get(major, "nvidia-dali-cuda130"))
EOF
}

install_dependencies() {
    local pip=("$VENV/bin/pip" install -q -c "$VENV/constraints.txt")
    "${pip[@]}" setuptools wheel ninja numpy pillow pyyaml tqdm matplotlib \
        pytest pytest-benchmark pytest-timeout scikit-learn safetensors tensorboard onnx onnxscript onnxruntime
    # The native checks (CTest) need cmake; a machine without one gets PyPI's.
    command -v cmake >/dev/null || "${pip[@]}" cmake
    if [[ "$(uname -s)" == "Linux" ]]; then
        "${pip[@]}" "$(dali_package)" || log "DALI did not install: the torch DataLoader will be used"
    fi
}

# Fashion-MNIST comes from a Debian package; it is only needed for the dataset tools and the study.
install_system_data() {
    if dpkg -s dataset-fashion-mnist >/dev/null 2>&1; then return; fi
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null; then
        log "installing the Debian package dataset-fashion-mnist"
        (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist >/dev/null) \
            || log "could not install dataset-fashion-mnist; the tests that need it will be skipped"
    else
        log "dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist as root)"
    fi
}

# A digest of everything the build reads: the package metadata, setup.py and the native sources.
source_digest() {
    { cat pyproject.toml setup.py; find csrc -type f -print0 | sort -z | xargs -0 cat; } | sha256sum | cut -d' ' -f1
}

# Rebuilds the package (and its native extension) only when its sources changed, or when the
# extension does not load. It loads only after torch (it links libc10.so, which torch loads).
install_phasenets() {
    local stamp="$VENV/.phasenets-build" digest
    digest="$(source_digest)"
    if [[ -f "$stamp" && "$(cat "$stamp")" == "$digest" ]] \
        && "$VENV/bin/python" -c "import torch, phasenets._C" >/dev/null 2>&1; then
        return
    fi
    log "building phasenets and its native extension"
    MAX_JOBS="${MAX_JOBS:-2}" "$VENV/bin/pip" install -q --no-build-isolation --no-deps -e .
    echo "$digest" >"$stamp"
}

setup() {
    check_python
    make_venv
    install_torch
    write_constraints
    install_dependencies
    install_system_data
    install_phasenets
    export PATH="$VENV/bin:$PATH"
}

main() {
    local job="${1:-setup}"
    shift || true
    case "$job" in
        setup) setup ;;
        demo) setup; exec "$VENV/bin/phasenets" demo "$@" ;;
        test)
            setup
            "$VENV/bin/python" -m pytest -q "$@"
            bash scripts/native_checks.sh
            ;;
        bench) setup; exec "$VENV/bin/python" benchmarks/report.py "$@" ;;
        *) log "unknown job '$job' (use: setup, demo, test, bench)"; exit 2 ;;
    esac
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
    main "$@"
fi
