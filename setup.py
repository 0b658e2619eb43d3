"""Builds the native extension ``phasenets._C``; the package metadata lives in pyproject.toml.

Install against the torch already present (an isolated build would fetch another torch)::

    pip install --no-build-isolation -e .     # or: pip install --no-build-isolation .

The CUDA kernels are compiled when torch has CUDA and nvcc is found, or when ``FORCE_CUDA=1``
(building on a machine without a GPU). ``MAX_JOBS`` caps ninja's parallel compiles.
"""
from __future__ import annotations

import os
from pathlib import Path

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

ROOT = Path(__file__).parent
CSRC = Path("csrc")

# Sources every build compiles; each list below adds the device-specific half.
COMMON_SOURCES = ["ops.cpp", "checks.cpp", "prefetcher.cpp", "cpu/rows_cpu.cpp", "python/bindings.cpp"]
CPU_ONLY_SOURCES = ["cpu/device_transfer_none.cpp"]
# With no GPU to ask, build for the data-centre GPUs we target (A100, H100) plus PTX for newer ones.
DEFAULT_CUDA_ARCHS = "8.0;9.0+PTX"


def build_with_cuda() -> bool:
    if os.environ.get("FORCE_CUDA", "0") == "1":
        return True
    return torch.version.cuda is not None and CUDA_HOME is not None


def cuda_sources() -> list[str]:
    cuda_dir = ROOT / CSRC / "cuda"
    return sorted(str(p.relative_to(ROOT / CSRC)) for p in cuda_dir.iterdir() if p.suffix in {".cu", ".cpp"})


def native_extension():
    cxx_flags = ["-O3"]  # the C++ standard is the one torch's headers need, set by cpp_extension
    link_flags = []
    if torch.backends.openmp.is_available():
        # at::parallel_for is inlined from ATen's OpenMP header: without -fopenmp it runs serially.
        cxx_flags.append("-fopenmp")
        link_flags.append("-fopenmp")
    sources = list(COMMON_SOURCES)
    if build_with_cuda():
        if not torch.cuda.is_available():
            os.environ.setdefault("TORCH_CUDA_ARCH_LIST", DEFAULT_CUDA_ARCHS)
        sources += cuda_sources()
        extension, extra = CUDAExtension, {"nvcc": ["-O3"]}
    else:
        sources += CPU_ONLY_SOURCES
        extension, extra = CppExtension, {}
    return extension(
        name="phasenets._C",
        sources=[str(CSRC / s) for s in sources],
        extra_compile_args={"cxx": cxx_flags, **extra},
        extra_link_args=link_flags,
    )


setup(
    ext_modules=[native_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
