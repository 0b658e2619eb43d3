// CUDA entries of the row ops: the CPU entries' checks of metadata (device, dtype, layout, shapes),
// then the raw-pointer kernels of rows_kernels.cu on the current stream. The gathers alone leave
// the index values to the kernel's guard (see gather_rows_cuda).
#include "../checks.h"
#include "rows_kernels.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

namespace phasenets::cuda {
namespace {

constexpr const char* kGather = "phasenets.gather_rows";
constexpr const char* kGatherOut = "phasenets.gather_rows_out";
constexpr const char* kScatter = "phasenets.scatter_rows";

ElementType element_type(at::ScalarType dtype) {
  switch (dtype) {
    case at::kFloat: return ElementType::kFloat32;
    case at::kHalf: return ElementType::kFloat16;
    case at::kBFloat16: return ElementType::kBFloat16;
    case at::kChar: return ElementType::kInt8;
    default: TORCH_CHECK(false, "phasenets: no CUDA kernel for dtype ", dtype_name(dtype));
  }
}

Table table_of(const at::Tensor& t) {
  return Table{t.data_ptr(), element_type(t.scalar_type()), t.size(0), t.size(1), t.stride(0)};
}

// scatter_rows validates its targets on the host: one small device-to-host copy and a sync per
// call. Writing is the build path (each row once per cache), and only the host can report an
// out-of-range or repeated target exactly, before a wild or racing write could happen.
at::Tensor host_checked_targets(const at::Tensor& index, int64_t num_rows) {
  const at::Tensor on_host = index.cpu();
  check_index_bounds(on_host.const_data_ptr<int64_t>(), on_host.numel(), num_rows, kScatter, "dst");
  check_index_unique(on_host.const_data_ptr<int64_t>(), on_host.numel(), kScatter);
  return index.contiguous();
}

void gather(const at::Tensor& src, const at::Tensor& index, const std::optional<at::Tensor>& scale,
            const at::Tensor& out) {
  const at::Tensor scale_c = scale.has_value() ? scale->contiguous() : at::Tensor();
  C10_CUDA_CHECK(launch_gather_rows(table_of(src), index.const_data_ptr<int64_t>(), index.numel(),
                                    scale_c.defined() ? scale_c.const_data_ptr<float>() : nullptr,
                                    scale_c.defined() ? scale_c.numel() : 0, out.data_ptr(),
                                    element_type(out.scalar_type()),
                                    c10::cuda::getCurrentCUDAStream()));
}

// The gathers are the read path (every batch of every epoch) and never read the indices back:
// a range check here would cost a device-to-host copy and a sync per call, stall the training
// stream and break CUDA graphs and torch.compile. The kernel guards instead: an index outside
// [0, rows) reads nothing and its output row is NaN, so a bad index neither faults nor passes for
// plausible features. A caller that needs an IndexError checks its indices on the host before
// they go to the device (FeatureCache does, once per epoch). Every other argument is checked
// here from metadata alone.
at::Tensor gather_rows_cuda(const at::Tensor& src, const at::Tensor& index,
                            const std::optional<at::Tensor>& scale, at::ScalarType out_dtype) {
  check_storage(src, kGather, "src");
  check_index(index, src, kGather, "src");
  check_scale(scale, src, kGather, "src");
  check_output_dtype(out_dtype, kGather);
  const c10::cuda::CUDAGuard device_guard(src.device());
  const at::Tensor rows = index.contiguous();
  at::Tensor out = at::empty({rows.numel(), src.size(1)}, src.options().dtype(out_dtype));
  gather(src, rows, scale, out);
  return out;
}

void gather_rows_out_cuda(const at::Tensor& src, const at::Tensor& index,
                          const std::optional<at::Tensor>& scale, const at::Tensor& out) {
  check_storage(src, kGatherOut, "src");
  check_index(index, src, kGatherOut, "src");
  check_scale(scale, src, kGatherOut, "src");
  check_gather_output(out, src, index.numel(), kGatherOut);
  const c10::cuda::CUDAGuard device_guard(src.device());
  gather(src, index.contiguous(), scale, out);
}

void scatter_rows_cuda(const at::Tensor& dst, const at::Tensor& index, const at::Tensor& rows,
                       const std::optional<at::Tensor>& scale) {
  check_storage(dst, kScatter, "dst");
  check_index(index, dst, kScatter, "dst");
  check_scatter_rows(rows, dst, index.numel(), kScatter);
  check_scale(scale, dst, kScatter, "dst");
  const c10::cuda::CUDAGuard device_guard(dst.device());
  const at::Tensor targets = host_checked_targets(index, dst.size(0));
  const at::Tensor values = rows.contiguous();
  const at::Tensor scale_c = scale.has_value() ? scale->contiguous() : at::Tensor();
  C10_CUDA_CHECK(launch_scatter_rows(table_of(dst), targets.const_data_ptr<int64_t>(),
                                     targets.numel(), values.const_data_ptr(),
                                     element_type(values.scalar_type()),
                                     scale_c.defined() ? scale_c.const_data_ptr<float>() : nullptr,
                                     scale_c.defined() ? scale_c.numel() : 0,
                                     c10::cuda::getCurrentCUDAStream()));
}

}  // namespace

TORCH_LIBRARY_IMPL(phasenets, CUDA, m) {
  m.impl("gather_rows", &gather_rows_cuda);
  m.impl("gather_rows_out", &gather_rows_out_cuda);
  m.impl("scatter_rows", &scatter_rows_cuda);
}

}  // namespace phasenets::cuda
