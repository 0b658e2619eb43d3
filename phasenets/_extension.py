"""Loads the native extension ``phasenets._C`` and registers its ops' fake implementations.

Importing this module never fails: when ``_C`` is missing (not built) or cannot be loaded (built
against another torch, say), one warning per process says why and :func:`native_available`
returns False, so :mod:`phasenets.cache.ops` falls back to the pure-torch reference.
Set ``PHASENETS_DISABLE_NATIVE=1`` to force the fallback.
"""
from __future__ import annotations

import importlib
import os
import warnings
from types import ModuleType

import torch

__all__ = ["native_available", "native_module", "native_has_cuda", "native_load_error"]


def _load() -> tuple[ModuleType | None, str | None]:
    if os.environ.get("PHASENETS_DISABLE_NATIVE", "0") == "1":
        return None, "disabled by PHASENETS_DISABLE_NATIVE=1"
    try:
        return importlib.import_module("phasenets._C"), None
    except (ImportError, OSError) as error:  # OSError: a shared library it links is missing
        return None, f"{type(error).__name__}: {error}"


_native, _load_error = _load()
if _native is None:
    warnings.warn(
        f"phasenets: the native extension phasenets._C is unavailable ({_load_error}); using the "
        "pure-torch reference ops, which are slower. Build it with "
        "`pip install --no-build-isolation -e .`.",
        RuntimeWarning,
        stacklevel=2,
    )


def native_available() -> bool:
    """Whether the native extension loaded (its ops are then used on the CPU, and on CUDA when
    :func:`native_has_cuda`)."""
    return _native is not None


def native_module() -> ModuleType | None:
    """The loaded ``phasenets._C`` module, or None."""
    return _native


def native_has_cuda() -> bool:
    """Whether the loaded extension was built with its CUDA kernels."""
    return _native is not None and _native.built_with_cuda()


def set_flush_denormal(on: bool) -> bool:
    """Flush denormal floats to zero on the CPU (``on``) or stop, in the calling thread and, with
    the native extension, in torch's intra-op threads too (``torch.set_flush_denormal`` reaches
    only the calling thread). Returns False where the CPU has no such mode."""
    if _native is not None and hasattr(_native, "set_flush_denormal_all_threads"):
        return bool(_native.set_flush_denormal_all_threads(on))
    return torch.set_flush_denormal(on)


def native_load_error() -> str | None:
    """Why the extension is unavailable, or None when it loaded."""
    return _load_error


def _register_fake_impls() -> None:
    """Shape-only implementations, so the ops trace under torch.compile / FakeTensor."""

    @torch.library.register_fake("phasenets::gather_rows")
    def _gather_rows(src, index, scale, out_dtype):
        return src.new_empty((index.shape[0], src.shape[1]), dtype=out_dtype)

    @torch.library.register_fake("phasenets::gather_rows_out")
    def _gather_rows_out(src, index, scale, out):
        return None

    @torch.library.register_fake("phasenets::scatter_rows")
    def _scatter_rows(dst, index, rows, scale):
        return None

    @torch.library.register_fake("phasenets::compute_int8_scale")
    def _compute_int8_scale(rows, channels):
        return rows.new_empty((channels,), dtype=torch.float32)


if _native is not None:
    _register_fake_impls()
