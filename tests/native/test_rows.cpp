// The CPU row ops through the dispatcher, against plain ATen indexing. Run under AddressSanitizer
// by scripts/native_checks.sh, so a kernel touching memory outside a table fails here.
#include "cpu/rows_cpu.h"
#include "expect.h"

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

#include <cmath>
#include <limits>
#include <optional>
#include <vector>

using phasenets::testing::throws;

namespace {

// An int64 index tensor (at::tensor's brace overloads are ambiguous for literals).
at::Tensor int64s(std::initializer_list<int64_t> values) {
  return at::tensor(std::vector<int64_t>(values));
}

using OptTensor = std::optional<at::Tensor>;

at::Tensor gather(const at::Tensor& src, const at::Tensor& index, const OptTensor& scale,
                  at::ScalarType out_dtype) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("phasenets::gather_rows", "")
                       .typed<at::Tensor(const at::Tensor&, const at::Tensor&, const OptTensor&,
                                         at::ScalarType)>();
  return op.call(src, index, scale, out_dtype);
}

void scatter(const at::Tensor& dst, const at::Tensor& index, const at::Tensor& rows,
             const OptTensor& scale) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("phasenets::scatter_rows", "")
                       .typed<void(const at::Tensor&, const at::Tensor&, const at::Tensor&,
                                   const OptTensor&)>();
  op.call(dst, index, rows, scale);
}

at::Tensor int8_scale(const at::Tensor& rows, int64_t channels) {
  static auto op = c10::Dispatcher::singleton()
                       .findSchemaOrThrow("phasenets::compute_int8_scale", "")
                       .typed<at::Tensor(const at::Tensor&, int64_t)>();
  return op.call(rows, channels);
}

const at::ScalarType kFloatTypes[] = {at::kFloat, at::kHalf, at::kBFloat16};

void gather_matches_index_select() {
  const at::Tensor values = at::randn({64, 12});
  const at::Tensor index = at::randint(0, 64, {40}, at::kLong);
  for (const auto storage_dtype : kFloatTypes) {
    const at::Tensor table = values.to(storage_dtype);
    for (const auto out_dtype : kFloatTypes) {
      EXPECT(at::equal(gather(table, index, std::nullopt, out_dtype),
                       table.index_select(0, index).to(out_dtype)));
    }
  }
}

void gather_dequantizes_int8() {
  const at::Tensor table = at::randint(-127, 128, {20, 12}, at::kChar);
  const at::Tensor scale = at::rand({3}) + 0.1;
  const at::Tensor index = int64s({19, 0, 7, 7});
  const at::Tensor dequantized =
      (table.to(at::kFloat).view({20, 3, 4}) * scale.view({1, 3, 1})).view({20, 12});
  for (const auto out_dtype : kFloatTypes) {
    EXPECT(at::equal(gather(table, index, scale, out_dtype),
                     dequantized.index_select(0, index).to(out_dtype)));
  }
}

void int8_round_trip_within_half_a_step() {
  const at::Tensor values = at::randn({32, 15}) * 5;
  const at::Tensor scale = int8_scale(values, 5);
  at::Tensor table = at::zeros({32, 15}, at::kChar);
  scatter(table, at::arange(32), values, scale);
  const at::Tensor restored = gather(table, at::arange(32), scale, at::kFloat);
  const at::Tensor half_step = scale.repeat_interleave(3) / 2 * (1 + 1e-5);
  EXPECT((restored - values).abs().le(half_step).all().item<bool>());
}

// The scale never comes to the host inside the op (on CUDA that is a sync): non-finite rows give
// a non-finite scale for the caller to refuse, and no error here.
void int8_scale_of_non_finite_rows_is_non_finite() {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const at::Tensor rows = at::tensor(std::vector<float>{1, inf, 0, -2, 0, nan}).view({2, 3});
  const at::Tensor scale = int8_scale(rows, 3);
  EXPECT(scale[0].item<float>() == 2.0f / 127);
  EXPECT(std::isinf(scale[1].item<float>()));
  EXPECT(std::isnan(scale[2].item<float>()));
  EXPECT(!int8_scale(at::randn({4, 6}).requires_grad_(), 2).requires_grad());
}

void scatter_converts_into_strided_rows() {
  at::Tensor backing = at::zeros({10, 6}, at::kHalf);
  at::Tensor every_other = backing.slice(0, 0, 10, 2);  // row stride 12 elements
  const at::Tensor rows = at::randn({3, 6});
  scatter(every_other, int64s({4, 0, 2}), rows, std::nullopt);
  EXPECT(at::equal(backing[8], rows[0].to(at::kHalf)));
  EXPECT(at::equal(backing[0], rows[1].to(at::kHalf)));
  EXPECT(at::equal(backing[1], at::zeros({6}, at::kHalf)));
  EXPECT(at::equal(gather(every_other, int64s({2}), std::nullopt, at::kFloat),
                   rows[2].to(at::kHalf).to(at::kFloat).view({1, 6})));
}

void bad_indices_throw_before_touching_memory() {
  const at::Tensor table = at::randn({8, 4});
  const at::Tensor before = table.clone();
  EXPECT(throws<c10::IndexError>(
      [&] { gather(table, int64s({0, 8}), std::nullopt, at::kFloat); },
      "index[1] = 8 is out of range for src with 8 rows (valid: 0 <= index < 8)"));
  EXPECT(throws<c10::IndexError>(
      [&] { gather(table, int64s({-3}), std::nullopt, at::kFloat); },
      "index[0] = -3"));
  EXPECT(throws<c10::IndexError>(
      [&] { scatter(table, int64s({1, 1LL << 40}), at::ones({2, 4}), std::nullopt); },
      "index[1] = 1099511627776"));
  EXPECT(throws<c10::Error>(
      [&] { scatter(table, int64s({5, 2, 5}), at::ones({3, 4}), std::nullopt); },
      "index holds row 5 twice (positions 0 and 2)"));
  EXPECT(throws<c10::Error>(
      [&] { gather(table, at::tensor(std::vector<int32_t>{0}), std::nullopt, at::kFloat); },
      "index must be a 1-D int64 tensor, got a 1-D int32 tensor"));
  EXPECT(throws<c10::Error>(
      [&] { gather(table.to(at::kChar), int64s({0}), std::nullopt, at::kFloat); },
      "int8 src needs a per-channel float32 scale"));
  EXPECT(at::equal(table, before));
}

void empty_index_is_a_no_op() {
  at::Tensor table = at::randn({5, 3});
  const at::Tensor before = table.clone();
  const at::Tensor none = at::empty({0}, at::kLong);
  EXPECT(gather(table, none, std::nullopt, at::kHalf).sizes() == at::IntArrayRef({0, 3}));
  scatter(table, none, at::empty({0, 3}), std::nullopt);
  EXPECT(at::equal(table, before));
}

void serial_and_parallel_gathers_agree() {
  // Enough rows that at::parallel_for splits them across threads.
  const at::Tensor table = at::randn({4000, 300}).to(at::kBFloat16);
  const at::Tensor index = at::randint(0, 4000, {3000}, at::kLong);
  at::Tensor serial = at::empty({3000, 300});
  at::Tensor parallel = at::empty({3000, 300});
  phasenets::cpu::gather_rows_into(table, index, std::nullopt, serial, false);
  phasenets::cpu::gather_rows_into(table, index, std::nullopt, parallel, true);
  EXPECT(at::equal(serial, parallel));
  EXPECT(at::equal(serial, table.index_select(0, index).to(at::kFloat)));
}

}  // namespace

int main() {
  at::manual_seed(0);
  return phasenets::testing::run({
      {"gather_matches_index_select", gather_matches_index_select},
      {"gather_dequantizes_int8", gather_dequantizes_int8},
      {"int8_round_trip_within_half_a_step", int8_round_trip_within_half_a_step},
      {"int8_scale_of_non_finite_rows_is_non_finite", int8_scale_of_non_finite_rows_is_non_finite},
      {"scatter_converts_into_strided_rows", scatter_converts_into_strided_rows},
      {"bad_indices_throw_before_touching_memory", bad_indices_throw_before_touching_memory},
      {"empty_index_is_a_no_op", empty_index_is_a_no_op},
      {"serial_and_parallel_gathers_agree", serial_and_parallel_gathers_agree},
  });
}
