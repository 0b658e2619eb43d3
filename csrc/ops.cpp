// The phasenets operator library: every schema lives here, kernels register per device under
// csrc/cpu/ and csrc/cuda/. Mutation is declared in the schema (Tensor(a!)) so that functionalization
// and torch.compile see it.
#include "checks.h"

#include <ATen/core/Tensor.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <torch/library.h>

namespace phasenets {
namespace {

constexpr const char* kScaleOp = "phasenets.compute_int8_scale";

// Per-channel absmax / 127 over a batch of rows [B, channels * spatial]: the largest magnitude of
// each channel maps to 127. A channel that is all zeros gets scale 1 so it still quantizes exactly.
// A channel holding NaN or an infinity gets a non-finite scale: refusing it here would need its
// value on the host (a sync on CUDA, a graph break under torch.compile), so the Python wrapper
// refuses it where that is free (CPU) and the cache where the scale comes to the host anyway.
// Written with ATen ops, so it runs on every device (CompositeExplicitAutograd; its fake is
// registered in phasenets/_extension.py).
at::Tensor compute_int8_scale(const at::Tensor& rows, int64_t channels) {
  TORCH_CHECK(rows.dim() == 2, kScaleOp, ": rows must be a 2-D tensor [rows, row_elems], got shape ",
              rows.sizes());
  TORCH_CHECK(is_float_dtype(rows.scalar_type()), kScaleOp,
              ": rows dtype must be one of float32, float16, bfloat16, got ",
              dtype_name(rows.scalar_type()));
  TORCH_CHECK(channels > 0 && rows.size(1) % channels == 0, kScaleOp, ": channels = ", channels,
              " does not divide the ", rows.size(1), " elements of a row");
  TORCH_CHECK(rows.size(0) > 0, kScaleOp, ": rows is empty; the scale needs at least one row");
  const at::Tensor absmax =
      rows.detach().reshape({rows.size(0), channels, -1}).abs().amax({0, 2}).to(at::kFloat);
  return absmax.div(127.0f).masked_fill(absmax.eq(0), 1.0f);
}

// The scale is a statistic of the rows, not a function to differentiate: under autograd the op
// runs below it, so the scale never requires grad (as the detached computation above implies).
at::Tensor compute_int8_scale_autograd(const at::Tensor& rows, int64_t channels) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("phasenets::compute_int8_scale", "")
                             .typed<at::Tensor(const at::Tensor&, int64_t)>();
  const at::AutoDispatchBelowADInplaceOrView below_autograd;
  return op.call(rows, channels);
}

}  // namespace

TORCH_LIBRARY(phasenets, m) {
  m.def("gather_rows(Tensor src, Tensor index, Tensor? scale, ScalarType out_dtype) -> Tensor");
  m.def("gather_rows_out(Tensor src, Tensor index, Tensor? scale, Tensor(a!) out) -> ()");
  m.def("scatter_rows(Tensor(a!) dst, Tensor index, Tensor rows, Tensor? scale) -> ()");
  m.def("compute_int8_scale(Tensor rows, int channels) -> Tensor");
}

TORCH_LIBRARY_IMPL(phasenets, CompositeExplicitAutograd, m) {
  m.impl("compute_int8_scale", &compute_int8_scale);
}

TORCH_LIBRARY_IMPL(phasenets, Autograd, m) {
  m.impl("compute_int8_scale", &compute_int8_scale_autograd);
}

}  // namespace phasenets
