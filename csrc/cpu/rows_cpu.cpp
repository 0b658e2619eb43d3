// CPU kernels of gather_rows / gather_rows_out / scatter_rows.
//
// Rows are independent, so the parallelism is over rows; within a row, convert.h's (vectorized)
// conversions run, and same-dtype rows are one memcpy.
#include "rows_cpu.h"

#include "../checks.h"
#include "convert.h"

#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <algorithm>

namespace phasenets::cpu {

#ifdef PHASENETS_X86_AVX2
bool avx2::cpu_supported() {
  static const bool supported = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("f16c") &&
                                __builtin_cpu_supports("fma");
  return supported;
}
#endif

namespace {

// Rows per task: enough bytes that a thread's share outweighs the cost of waking it.
constexpr int64_t kGrainBytes = 64 * 1024;

int64_t grain_rows(int64_t row_bytes) {
  return std::max<int64_t>(1, kGrainBytes / std::max<int64_t>(1, row_bytes));
}

// Rows of a large table are scattered in memory, so the hardware prefetcher, which follows
// streams, cannot see the next row coming; reading it ahead hides most of its latency.
constexpr int64_t kRowsAhead = 2;
constexpr int64_t kCacheLine = 64;

void prefetch_row(const void* row, int64_t bytes) {
  const char* start = static_cast<const char*>(row);
  for (int64_t offset = 0; offset < bytes; offset += kCacheLine) {
    __builtin_prefetch(start + offset, /*rw=*/0, /*locality=*/2);  // into L2: a row can exceed L1
  }
}

template <typename Fn>
void for_each_row(int64_t num_rows, int64_t row_bytes, bool parallel, const Fn& fn) {
  if (!parallel) {
    for (int64_t i = 0; i < num_rows; ++i) fn(i);
    return;
  }
  at::parallel_for(0, num_rows, grain_rows(row_bytes), [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) fn(i);
  });
}

// Dispatches over the three float dtypes (rows, outputs).
#define PHASENETS_DISPATCH_FLOAT(dtype, name, ...) \
  AT_DISPATCH_SWITCH(dtype, name, AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) \
                     AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__))

}  // namespace

void gather_rows_into(const at::Tensor& src, const at::Tensor& index,
                      const std::optional<at::Tensor>& scale, const at::Tensor& out, bool parallel) {
  const int64_t num_index = index.numel();
  const int64_t row_elems = src.size(1);
  if (num_index == 0 || row_elems == 0) return;
  const int64_t* rows = index.const_data_ptr<int64_t>();
  const int64_t src_stride = src.stride(0);
  const int64_t row_bytes = row_elems * static_cast<int64_t>(out.element_size());

  if (src.scalar_type() == at::kChar) {
    const int8_t* base = src.const_data_ptr<int8_t>();
    const float* scale_data = scale->const_data_ptr<float>();
    const int64_t channels = scale->numel();
    const int64_t spatial = row_elems / channels;
    PHASENETS_DISPATCH_FLOAT(out.scalar_type(), "gather_rows", [&] {
      scalar_t* dst = out.mutable_data_ptr<scalar_t>();
      for_each_row(num_index, row_bytes, parallel, [&](int64_t i) {
        if (i + kRowsAhead < num_index) prefetch_row(base + rows[i + kRowsAhead] * src_stride, row_elems);
        dequantize_row(base + rows[i] * src_stride, scale_data, channels, spatial,
                       dst + i * row_elems);
      });
    });
    return;
  }
  PHASENETS_DISPATCH_FLOAT(src.scalar_type(), "gather_rows", [&] {
    using in_t = scalar_t;
    const in_t* base = src.const_data_ptr<in_t>();
    PHASENETS_DISPATCH_FLOAT(out.scalar_type(), "gather_rows", [&] {
      scalar_t* dst = out.mutable_data_ptr<scalar_t>();
      for_each_row(num_index, row_bytes, parallel, [&](int64_t i) {
        if (i + kRowsAhead < num_index) {
          prefetch_row(base + rows[i + kRowsAhead] * src_stride, row_elems * sizeof(in_t));
        }
        convert_row(base + rows[i] * src_stride, dst + i * row_elems, row_elems);
      });
    });
  });
}

namespace {

constexpr const char* kGather = "phasenets.gather_rows";
constexpr const char* kGatherOut = "phasenets.gather_rows_out";
constexpr const char* kScatter = "phasenets.scatter_rows";

std::optional<at::Tensor> contiguous(const std::optional<at::Tensor>& t) {
  return t.has_value() ? std::optional<at::Tensor>(t->contiguous()) : std::nullopt;
}

// Validation common to both gather entries; returns the contiguous index.
at::Tensor checked_gather_index(const at::Tensor& src, const at::Tensor& index,
                                const std::optional<at::Tensor>& scale, const char* op) {
  check_storage(src, op, "src");
  check_index(index, src, op, "src");
  check_scale(scale, src, op, "src");
  return index.contiguous();
}

void gather_rows_out_cpu(const at::Tensor& src, const at::Tensor& index,
                         const std::optional<at::Tensor>& scale, const at::Tensor& out) {
  const at::Tensor rows = checked_gather_index(src, index, scale, kGatherOut);
  check_gather_output(out, src, rows.numel(), kGatherOut);
  check_index_bounds(rows.const_data_ptr<int64_t>(), rows.numel(), src.size(0), kGatherOut, "src");
  gather_rows_into(src, rows, contiguous(scale), out, /*parallel=*/true);
}

at::Tensor gather_rows_cpu(const at::Tensor& src, const at::Tensor& index,
                           const std::optional<at::Tensor>& scale, at::ScalarType out_dtype) {
  const at::Tensor rows = checked_gather_index(src, index, scale, kGather);
  check_output_dtype(out_dtype, kGather);
  check_index_bounds(rows.const_data_ptr<int64_t>(), rows.numel(), src.size(0), kGather, "src");
  at::Tensor out = at::empty({rows.numel(), src.size(1)}, src.options().dtype(out_dtype));
  gather_rows_into(src, rows, contiguous(scale), out, /*parallel=*/true);
  return out;
}

void scatter_rows_cpu(const at::Tensor& dst, const at::Tensor& index, const at::Tensor& rows,
                      const std::optional<at::Tensor>& scale) {
  check_storage(dst, kScatter, "dst");
  check_index(index, dst, kScatter, "dst");
  check_scatter_rows(rows, dst, index.numel(), kScatter);
  check_scale(scale, dst, kScatter, "dst");
  const at::Tensor positions = index.contiguous();
  const int64_t* targets = positions.const_data_ptr<int64_t>();
  const int64_t num_index = positions.numel();
  check_index_bounds(targets, num_index, dst.size(0), kScatter, "dst");
  check_index_unique(targets, num_index, kScatter);
  const int64_t row_elems = dst.size(1);
  if (num_index == 0 || row_elems == 0) return;

  const at::Tensor values = rows.contiguous();
  const int64_t dst_stride = dst.stride(0);
  const int64_t row_bytes = row_elems * static_cast<int64_t>(dst.element_size());
  PHASENETS_DISPATCH_FLOAT(values.scalar_type(), "scatter_rows", [&] {
    using in_t = scalar_t;
    const in_t* in = values.const_data_ptr<in_t>();
    if (dst.scalar_type() == at::kChar) {
      const at::Tensor scale_c = scale->contiguous();
      const float* scale_data = scale_c.const_data_ptr<float>();
      const int64_t channels = scale_c.numel();
      int8_t* base = dst.mutable_data_ptr<int8_t>();
      for_each_row(num_index, row_bytes, true, [&](int64_t i) {
        quantize_row(in + i * row_elems, scale_data, channels, row_elems / channels,
                     base + targets[i] * dst_stride);
      });
      return;
    }
    PHASENETS_DISPATCH_FLOAT(dst.scalar_type(), "scatter_rows", [&] {
      scalar_t* base = dst.mutable_data_ptr<scalar_t>();
      for_each_row(num_index, row_bytes, true, [&](int64_t i) {
        convert_row(in + i * row_elems, base + targets[i] * dst_stride, row_elems);
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(phasenets, CPU, m) {
  m.impl("gather_rows", &gather_rows_cpu);
  m.impl("gather_rows_out", &gather_rows_out_cpu);
  m.impl("scatter_rows", &scatter_rows_cpu);
}

}  // namespace phasenets::cpu
