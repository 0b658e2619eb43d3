// The native prefetcher: order, kept batches, early shutdown and errors. Under AddressSanitizer a
// buffer recycled while still in use, or a worker outliving the prefetcher, shows up here.
#include "expect.h"
#include "prefetcher.h"

#include <ATen/ATen.h>

#include <algorithm>
#include <vector>

using phasenets::Prefetcher;
using phasenets::testing::throws;

namespace {

// An int64 index tensor (at::tensor's brace overloads are ambiguous for literals).
at::Tensor int64s(std::initializer_list<int64_t> values) {
  return at::tensor(std::vector<int64_t>(values));
}

std::vector<at::Tensor> random_batches(int64_t num_rows, std::vector<int64_t> sizes) {
  std::vector<at::Tensor> batches;
  for (const int64_t size : sizes) batches.push_back(at::randint(0, num_rows, {size}, at::kLong));
  return batches;
}

at::Tensor dequantize(const at::Tensor& table, const at::Tensor& scale, int64_t spatial) {
  const int64_t channels = scale.numel();
  return (table.to(at::kFloat).view({table.size(0), channels, spatial}) * scale.view({1, channels, 1}))
      .view(table.sizes());
}

void yields_every_batch_in_order() {
  const at::Tensor table = at::randn({50, 8}).to(at::kHalf);
  const auto batches = random_batches(50, {9, 9, 0, 9, 4, 9, 9, 9, 1});
  for (const int64_t depth : {1, 3}) {
    for (const int64_t workers : {1, 3}) {
      Prefetcher prefetcher(table, batches, std::nullopt, at::kFloat, depth, workers, std::nullopt);
      std::vector<at::Tensor> received;  // all kept: their buffers must not be recycled
      while (auto batch = prefetcher.next()) received.push_back(*batch);
      EXPECT(received.size() == batches.size());
      for (size_t i = 0; i < received.size() && i < batches.size(); ++i) {
        EXPECT(at::equal(received[i], table.index_select(0, batches[i]).to(at::kFloat)));
      }
    }
  }
}

void dequantizes_int8_storage() {
  const at::Tensor table = at::randint(-127, 128, {30, 6}, at::kChar);
  const at::Tensor scale = at::rand({2}) + 0.5;
  const auto batches = random_batches(30, {7, 7, 7});
  Prefetcher prefetcher(table, batches, scale, at::kBFloat16, 2, 2, std::nullopt);
  const at::Tensor expected = dequantize(table, scale, 3);
  for (const auto& index : batches) {
    const auto batch = prefetcher.next();
    EXPECT(batch.has_value() && at::equal(*batch, expected.index_select(0, index).to(at::kBFloat16)));
  }
  EXPECT(!prefetcher.next().has_value());
}

void closes_mid_iteration() {
  const at::Tensor table = at::randn({100, 16});
  Prefetcher prefetcher(table, random_batches(100, std::vector<int64_t>(40, 32)), std::nullopt,
                        at::kFloat, 4, 2, std::nullopt);
  EXPECT(prefetcher.next().has_value());
  prefetcher.close();
  prefetcher.close();
  EXPECT(!prefetcher.next().has_value());
}

void destructs_with_workers_waiting() {
  const at::Tensor table = at::randn({100, 16});
  // Workers fill `depth` batches and wait for a consumer that never comes; the destructor must
  // wake and join them.
  Prefetcher prefetcher(table, random_batches(100, std::vector<int64_t>(20, 8)), std::nullopt,
                        at::kHalf, 2, 2, std::nullopt);
}

void recycles_released_buffers() {
  const at::Tensor table = at::randn({64, 32});
  Prefetcher prefetcher(table, random_batches(64, std::vector<int64_t>(30, 16)), std::nullopt,
                        at::kFloat, 2, 1, std::nullopt);
  std::vector<const void*> buffers;
  while (auto batch = prefetcher.next()) {
    const void* data = batch->const_data_ptr();
    if (std::find(buffers.begin(), buffers.end(), data) == buffers.end()) buffers.push_back(data);
  }
  EXPECT(buffers.size() <= 4);
}

void snapshots_index_batches() {
  const at::Tensor table = at::randn({10, 4});
  std::vector<at::Tensor> batches = {int64s({0}), int64s({1, 2, 3})};
  // depth 1: batch 1 is gathered only after batch 0 is handed out, i.e. after the edit below
  Prefetcher prefetcher(table, batches, std::nullopt, at::kFloat, 1, 1, std::nullopt);
  batches[1].fill_(1LL << 40);
  EXPECT(prefetcher.next().has_value());
  const auto second = prefetcher.next();
  EXPECT(second.has_value() && at::equal(*second, table.index_select(0, int64s({1, 2, 3}))));
}

void rejects_bad_input_up_front() {
  const at::Tensor table = at::randn({10, 4});
  const std::vector<at::Tensor> batches = {int64s({0, 9}), int64s({10})};
  EXPECT(throws<c10::IndexError>(
      [&] { Prefetcher(table, batches, std::nullopt, at::kFloat, 2, 1, std::nullopt); },
      "phasenets.Prefetcher (batch 1): index[0] = 10 is out of range"));
  EXPECT(throws<c10::Error>(
      [&] { Prefetcher(table, {}, std::nullopt, at::kChar, 2, 1, std::nullopt); },
      "out dtype must be one of float32, float16, bfloat16, got int8"));
  EXPECT(throws<c10::Error>(
      [&] { Prefetcher(table, {}, std::nullopt, at::kFloat, 2, 1, at::Device("cuda:0")); },
      "built without CUDA"));
}

}  // namespace

int main() {
  at::manual_seed(0);
  return phasenets::testing::run({
      {"yields_every_batch_in_order", yields_every_batch_in_order},
      {"dequantizes_int8_storage", dequantizes_int8_storage},
      {"closes_mid_iteration", closes_mid_iteration},
      {"destructs_with_workers_waiting", destructs_with_workers_waiting},
      {"recycles_released_buffers", recycles_released_buffers},
      {"snapshots_index_batches", snapshots_index_batches},
      {"rejects_bad_input_up_front", rejects_bad_input_up_front},
  });
}
