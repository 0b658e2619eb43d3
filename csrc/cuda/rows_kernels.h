// Launchers of the CUDA row kernels. Plain C++ over raw pointers and a stream (no ATen), so nvcc
// compiles the kernels on a machine without a GPU and CI catches a broken kernel.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace phasenets::cuda {

enum class ElementType { kFloat32, kFloat16, kBFloat16, kInt8 };

// A 2-D table whose rows are contiguous, `row_stride` elements apart.
struct Table {
  void* data;
  ElementType type;
  int64_t num_rows;
  int64_t row_elems;
  int64_t row_stride;
};

// out[i, :] = convert(src[index[i], :]); int8 rows are dequantized by `scale` (float32 [channels],
// `row_elems / channels` consecutive elements per channel); `out` is contiguous [num_index,
// row_elems] of a float type. Indices are read on the device only: where index[i] is outside
// [0, src.num_rows), nothing is read and out[i, :] is NaN.
cudaError_t launch_gather_rows(const Table& src, const int64_t* index, int64_t num_index,
                               const float* scale, int64_t channels, void* out,
                               ElementType out_type, cudaStream_t stream);

// dst[index[i], :] = convert(rows[i, :]); int8 rows are quantized with `scale`. `rows` is
// contiguous [num_index, row_elems] of a float type; indices validated and unique.
cudaError_t launch_scatter_rows(const Table& dst, const int64_t* index, int64_t num_index,
                                const void* rows, ElementType rows_type, const float* scale,
                                int64_t channels, cudaStream_t stream);

}  // namespace phasenets::cuda
