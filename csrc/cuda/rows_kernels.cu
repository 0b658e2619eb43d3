// CUDA row kernels: a 2-D grid, rows along y and the elements of a row along x, both grid-strided
// so any table fits in a bounded launch. Same-dtype rows move as 16-byte words when aligned; the
// other paths convert element by element through float32, exactly as the CPU kernels and the
// reference do (so the results agree bit for bit).
//
// The gathers read their indices only on the device (the host never checks them: that would cost
// a device-to-host copy and a sync per call). An index outside [0, num_rows) reads nothing and
// its output row is NaN: a bad index can neither fault nor pass for plausible features.
#include "rows_kernels.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>

namespace phasenets::cuda {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocksX = 1024;
constexpr int64_t kMaxBlocksY = 65535;

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename T>
__device__ __forceinline__ T from_float(float v);
template <>
__device__ __forceinline__ float from_float<float>(float v) { return v; }
template <>
__device__ __forceinline__ __half from_float<__half>(float v) { return __float2half_rn(v); }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

// Grid-stride loops over rows (y) and the elements of a row (x).
#define PHASENETS_FOR_EACH_ROW(row, count) \
  for (int64_t row = blockIdx.y; row < (count); row += gridDim.y)
#define PHASENETS_FOR_EACH_COL(col, count)                                     \
  for (int64_t col = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; \
       col < (count); col += static_cast<int64_t>(gridDim.x) * blockDim.x)

__device__ __forceinline__ bool in_range(int64_t row, int64_t num_rows) {
  return row >= 0 && row < num_rows;
}

__device__ __forceinline__ float quiet_nan() { return __int_as_float(0x7fc00000); }

// `nan_word` is a Word of NaNs of the element type being copied.
template <typename Word>
__global__ void gather_copy_kernel(const Word* src, int64_t num_rows, int64_t row_stride,
                                   const int64_t* index, int64_t num_index, int64_t row_words,
                                   Word nan_word, Word* out) {
  PHASENETS_FOR_EACH_ROW(row, num_index) {
    const int64_t source_row = index[row];
    Word* dst = out + row * row_words;
    if (!in_range(source_row, num_rows)) {
      PHASENETS_FOR_EACH_COL(col, row_words) dst[col] = nan_word;
      continue;
    }
    const Word* in = src + source_row * row_stride;
    PHASENETS_FOR_EACH_COL(col, row_words) dst[col] = in[col];
  }
}

template <typename In, typename Out>
__global__ void gather_convert_kernel(const In* src, int64_t num_rows, int64_t row_stride,
                                      const int64_t* index, int64_t num_index, int64_t row_elems,
                                      Out* out) {
  PHASENETS_FOR_EACH_ROW(row, num_index) {
    const int64_t source_row = index[row];
    Out* dst = out + row * row_elems;
    if (!in_range(source_row, num_rows)) {
      PHASENETS_FOR_EACH_COL(col, row_elems) dst[col] = from_float<Out>(quiet_nan());
      continue;
    }
    const In* in = src + source_row * row_stride;
    PHASENETS_FOR_EACH_COL(col, row_elems) dst[col] = from_float<Out>(to_float(in[col]));
  }
}

template <typename Out>
__global__ void gather_dequantize_kernel(const int8_t* src, int64_t num_rows, int64_t row_stride,
                                         const int64_t* index, int64_t num_index,
                                         int64_t row_elems, const float* scale, int64_t spatial,
                                         Out* out) {
  PHASENETS_FOR_EACH_ROW(row, num_index) {
    const int64_t source_row = index[row];
    Out* dst = out + row * row_elems;
    if (!in_range(source_row, num_rows)) {
      PHASENETS_FOR_EACH_COL(col, row_elems) dst[col] = from_float<Out>(quiet_nan());
      continue;
    }
    const int8_t* in = src + source_row * row_stride;
    PHASENETS_FOR_EACH_COL(col, row_elems) {
      dst[col] = from_float<Out>(static_cast<float>(in[col]) * scale[col / spatial]);
    }
  }
}

template <typename In, typename Out>
__global__ void scatter_convert_kernel(const In* rows, int64_t num_index, int64_t row_elems,
                                       const int64_t* index, Out* dst, int64_t row_stride) {
  PHASENETS_FOR_EACH_ROW(row, num_index) {
    const In* in = rows + row * row_elems;
    Out* out = dst + index[row] * row_stride;
    PHASENETS_FOR_EACH_COL(col, row_elems) out[col] = from_float<Out>(to_float(in[col]));
  }
}

// rintf rounds half to even, like torch.round; the division is IEEE-exact (no fast math).
template <typename In>
__global__ void scatter_quantize_kernel(const In* rows, int64_t num_index, int64_t row_elems,
                                        const int64_t* index, const float* scale, int64_t spatial,
                                        int8_t* dst, int64_t row_stride) {
  PHASENETS_FOR_EACH_ROW(row, num_index) {
    const In* in = rows + row * row_elems;
    int8_t* out = dst + index[row] * row_stride;
    PHASENETS_FOR_EACH_COL(col, row_elems) {
      const float q = rintf(to_float(in[col]) / scale[col / spatial]);
      out[col] = static_cast<int8_t>(fminf(fmaxf(q, -127.0f), 127.0f));
    }
  }
}

dim3 grid_for(int64_t num_rows, int64_t row_items) {
  const int64_t blocks_x = std::min<int64_t>((row_items + kThreads - 1) / kThreads, kMaxBlocksX);
  return dim3(static_cast<unsigned>(std::max<int64_t>(blocks_x, 1)),
              static_cast<unsigned>(std::min<int64_t>(num_rows, kMaxBlocksY)));
}

int64_t element_size(ElementType type) {
  switch (type) {
    case ElementType::kFloat32: return 4;
    case ElementType::kFloat16:
    case ElementType::kBFloat16: return 2;
    case ElementType::kInt8: return 1;
  }
  return 0;
}

// Calls fn(T{}) with the CUDA type of a float ElementType.
template <typename Fn>
cudaError_t with_float_type(ElementType type, Fn&& fn) {
  switch (type) {
    case ElementType::kFloat32: fn(float{}); break;
    case ElementType::kFloat16: fn(__half{}); break;
    case ElementType::kBFloat16: fn(__nv_bfloat16{}); break;
    default: return cudaErrorInvalidValue;
  }
  return cudaGetLastError();
}

// 16 bytes of quiet NaNs of a float type.
uint4 nan_word(ElementType type) {
  uint32_t pair = 0x7fc00000u;  // float32
  if (type == ElementType::kFloat16) pair = 0x7e007e00u;
  if (type == ElementType::kBFloat16) pair = 0x7fc07fc0u;
  return make_uint4(pair, pair, pair, pair);
}

bool is_aligned(const void* ptr, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(ptr) % bytes == 0;
}

}  // namespace

cudaError_t launch_gather_rows(const Table& src, const int64_t* index, int64_t num_index,
                               const float* scale, int64_t channels, void* out,
                               ElementType out_type, cudaStream_t stream) {
  if (num_index == 0 || src.row_elems == 0) return cudaSuccess;
  if (src.type == ElementType::kInt8) {
    return with_float_type(out_type, [&](auto out_tag) {
      using Out = decltype(out_tag);
      gather_dequantize_kernel<Out><<<grid_for(num_index, src.row_elems), kThreads, 0, stream>>>(
          static_cast<const int8_t*>(src.data), src.num_rows, src.row_stride, index, num_index,
          src.row_elems, scale, src.row_elems / channels, static_cast<Out*>(out));
    });
  }
  const int64_t elem = element_size(src.type);
  const int64_t row_bytes = src.row_elems * elem;
  constexpr int64_t kWord = sizeof(uint4);
  if (src.type == out_type && row_bytes % kWord == 0 && (src.row_stride * elem) % kWord == 0 &&
      is_aligned(src.data, kWord) && is_aligned(out, kWord)) {
    const int64_t row_words = row_bytes / kWord;
    gather_copy_kernel<uint4><<<grid_for(num_index, row_words), kThreads, 0, stream>>>(
        static_cast<const uint4*>(src.data), src.num_rows, src.row_stride * elem / kWord, index,
        num_index, row_words, nan_word(src.type), static_cast<uint4*>(out));
    return cudaGetLastError();
  }
  return with_float_type(src.type, [&](auto in_tag) {
    using In = decltype(in_tag);
    with_float_type(out_type, [&](auto out_tag) {
      using Out = decltype(out_tag);
      gather_convert_kernel<In, Out><<<grid_for(num_index, src.row_elems), kThreads, 0, stream>>>(
          static_cast<const In*>(src.data), src.num_rows, src.row_stride, index, num_index,
          src.row_elems, static_cast<Out*>(out));
    });
  });
}

cudaError_t launch_scatter_rows(const Table& dst, const int64_t* index, int64_t num_index,
                                const void* rows, ElementType rows_type, const float* scale,
                                int64_t channels, cudaStream_t stream) {
  if (num_index == 0 || dst.row_elems == 0) return cudaSuccess;
  const dim3 grid = grid_for(num_index, dst.row_elems);
  return with_float_type(rows_type, [&](auto in_tag) {
    using In = decltype(in_tag);
    const In* in = static_cast<const In*>(rows);
    if (dst.type == ElementType::kInt8) {
      scatter_quantize_kernel<In><<<grid, kThreads, 0, stream>>>(
          in, num_index, dst.row_elems, index, scale, dst.row_elems / channels,
          static_cast<int8_t*>(dst.data), dst.row_stride);
      return;
    }
    with_float_type(dst.type, [&](auto out_tag) {
      using Out = decltype(out_tag);
      scatter_convert_kernel<In, Out><<<grid, kThreads, 0, stream>>>(
          in, num_index, dst.row_elems, index, static_cast<Out*>(dst.data), dst.row_stride);
    });
  });
}

}  // namespace phasenets::cuda
