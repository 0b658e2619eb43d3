// CPU row kernels, shared by the registered ops and the prefetcher's worker threads.
#pragma once

#include <ATen/core/Tensor.h>

#include <optional>

namespace phasenets::cpu {

// Gathers rows `index` of `src` into `out`, dequantizing int8 rows with `scale`. Arguments must
// already be validated: index contiguous and in bounds, scale contiguous (int8 only), out a
// contiguous float tensor [index.numel(), src.size(1)]. `parallel` spreads rows over ATen's
// intra-op threads; the prefetcher passes false because it runs its own worker threads.
void gather_rows_into(const at::Tensor& src, const at::Tensor& index,
                      const std::optional<at::Tensor>& scale, const at::Tensor& out, bool parallel);

}  // namespace phasenets::cpu
