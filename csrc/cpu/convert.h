// Element conversions of one row: float32/float16/bfloat16 to each other, int8 dequantization and
// quantization. Every path goes through float32 and rounds to nearest even, like torch's `.to()`,
// so the results equal the reference bit for bit.
//
// The scalar c10 conversions of half and bfloat16 do not vectorize, so on x86-64 CPUs with AVX2,
// F16C and FMA (checked at run time; the build itself targets baseline x86-64) eight elements at a
// time go through the AVX2 versions below.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define PHASENETS_X86_AVX2 1
#include <immintrin.h>
#endif

namespace phasenets::cpu {
namespace scalar {

template <typename In, typename Out>
void convert(const In* in, Out* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) out[j] = static_cast<Out>(static_cast<float>(in[j]));
}

// out[j] = in[j] * scale[j] (one scale per element) or in[j] * scale[0] (one for the run).
template <typename Out, bool kScalePerElement>
void dequantize(const int8_t* in, const float* scale, Out* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    out[j] = static_cast<Out>(static_cast<float>(in[j]) * scale[kScalePerElement ? j : 0]);
  }
}

// std::nearbyint in the default rounding mode rounds half to even, like torch.round.
template <typename In>
void quantize(const In* in, float scale, int8_t* out, int64_t n) {
  for (int64_t j = 0; j < n; ++j) {
    const float q = std::nearbyint(static_cast<float>(in[j]) / scale);
    out[j] = static_cast<int8_t>(std::clamp(q, -127.0f, 127.0f));
  }
}

}  // namespace scalar

#ifdef PHASENETS_X86_AVX2
namespace avx2 {

#define PHASENETS_AVX2 __attribute__((target("avx2,f16c,fma"), always_inline)) inline

PHASENETS_AVX2 __m256 load8(const float* p) { return _mm256_loadu_ps(p); }
PHASENETS_AVX2 __m256 load8(const c10::Half* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
PHASENETS_AVX2 __m256 load8(const c10::BFloat16* p) {  // bfloat16 is the top half of a float32
  const __m256i wide = _mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  return _mm256_castsi256_ps(_mm256_slli_epi32(wide, 16));
}
PHASENETS_AVX2 __m256 load8(const int8_t* p) {
  const __m128i bytes = _mm_loadl_epi64(reinterpret_cast<const __m128i*>(p));
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes));
}

PHASENETS_AVX2 void store8(float* p, __m256 v) { _mm256_storeu_ps(p, v); }
PHASENETS_AVX2 void store8(c10::Half* p, __m256 v) {
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p),
                   _mm256_cvtps_ph(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
}
// Round to nearest even on the bits, as c10::BFloat16 does; NaN becomes the canonical 0x7FC0.
PHASENETS_AVX2 void store8(c10::BFloat16* p, __m256 v) {
  const __m256i bits = _mm256_castps_si256(v);
  const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(bits, 16), _mm256_set1_epi32(1));
  const __m256i bias = _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF));
  __m256i rounded = _mm256_srli_epi32(_mm256_add_epi32(bits, bias), 16);
  const __m256i is_nan = _mm256_castps_si256(_mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  rounded = _mm256_blendv_epi8(rounded, _mm256_set1_epi32(0x7FC0), is_nan);
  // Pack 8 x 32-bit to 8 x 16-bit: packus works per 128-bit lane, so gather the lanes after.
  const __m256i packed = _mm256_permute4x64_epi64(_mm256_packus_epi32(rounded, rounded), 0b1000);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(packed));
}

template <typename In, typename Out>
__attribute__((target("avx2,f16c,fma"))) void convert(const In* in, Out* out, int64_t n) {
  int64_t j = 0;
  for (; j + 8 <= n; j += 8) store8(out + j, load8(in + j));
  scalar::convert(in + j, out + j, n - j);
}

// A whole row per call: with small channel runs (spatial 16, say) a call per run would cost
// more than the conversion itself.
template <typename Out>
__attribute__((target("avx2,f16c,fma"))) void dequantize_row(const int8_t* in, const float* scale,
                                                              int64_t channels, int64_t spatial,
                                                              Out* out) {
  if (spatial == 1) {  // flat features: one scale per element
    int64_t j = 0;
    for (; j + 8 <= channels; j += 8) {
      store8(out + j, _mm256_mul_ps(load8(in + j), _mm256_loadu_ps(scale + j)));
    }
    scalar::dequantize<Out, true>(in + j, scale + j, out + j, channels - j);
    return;
  }
  for (int64_t c = 0; c < channels; ++c) {
    const __m256 s = _mm256_set1_ps(scale[c]);
    const int8_t* in_c = in + c * spatial;
    Out* out_c = out + c * spatial;
    int64_t j = 0;
    for (; j + 8 <= spatial; j += 8) store8(out_c + j, _mm256_mul_ps(load8(in_c + j), s));
    scalar::dequantize<Out, false>(in_c + j, scale + c, out_c + j, spatial - j);
  }
}

bool cpu_supported();

}  // namespace avx2
#endif

// The entry points: the AVX2 path when the CPU has it, the scalar loop otherwise.
template <typename In, typename Out>
void convert_row(const In* in, Out* out, int64_t n) {
  if constexpr (std::is_same_v<In, Out>) {
    std::memcpy(out, in, static_cast<size_t>(n) * sizeof(In));
  } else {
#ifdef PHASENETS_X86_AVX2
    if (avx2::cpu_supported()) return avx2::convert(in, out, n);
#endif
    scalar::convert(in, out, n);
  }
}

// One int8 row of `channels` runs of `spatial` elements, each run sharing its channel's scale.
template <typename Out>
void dequantize_row(const int8_t* in, const float* scale, int64_t channels, int64_t spatial,
                    Out* out) {
#ifdef PHASENETS_X86_AVX2
  if (avx2::cpu_supported()) return avx2::dequantize_row(in, scale, channels, spatial, out);
#endif
  if (spatial == 1) return scalar::dequantize<Out, true>(in, scale, out, channels);
  for (int64_t c = 0; c < channels; ++c) {
    scalar::dequantize<Out, false>(in + c * spatial, scale + c, out + c * spatial, spatial);
  }
}

// Writing is not the hot path (each row is written once per cache build): scalar is enough.
template <typename In>
void quantize_row(const In* in, const float* scale, int64_t channels, int64_t spatial,
                  int8_t* out) {
  for (int64_t c = 0; c < channels; ++c) {
    scalar::quantize(in + c * spatial, scale[c], out + c * spatial, spatial);
  }
}

}  // namespace phasenets::cpu
