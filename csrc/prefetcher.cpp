#include "prefetcher.h"

#include "checks.h"
#include "cpu/rows_cpu.h"
#include "device_transfer.h"

#include <ATen/ops/arange.h>
#include <ATen/ops/empty.h>
#include <c10/util/Exception.h>

#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <string>

namespace phasenets {
namespace {
constexpr const char* kOp = "phasenets.Prefetcher";
}  // namespace

Prefetcher::Prefetcher(at::Tensor storage, std::vector<at::Tensor> batches,
                       std::optional<at::Tensor> scale, at::ScalarType out_dtype, int64_t depth,
                       int64_t num_workers, std::optional<at::Device> device,
                       std::optional<std::pair<int64_t, int64_t>> file)
    // An alias of our own: the caller resizing or re-pointing its tensor cannot pull the table
    // out from under the workers.
    : storage_(storage.alias()), out_dtype_(out_dtype), depth_(depth), file_(file) {
  check_storage(storage_, kOp, "storage");
  TORCH_CHECK(storage_.device().is_cpu(), kOp, ": storage must be on the CPU, got ",
              storage_.device(), " (a table already on the device is read with gather_rows)");
  check_scale(scale, storage_, kOp, "storage");
  check_output_dtype(out_dtype, kOp);
  TORCH_CHECK(depth >= 1, kOp, ": depth must be at least 1, got ", depth);
  TORCH_CHECK(num_workers >= 1, kOp, ": num_workers must be at least 1, got ", num_workers);
  // Private copies of the small inputs: an index changed in place after the bounds check would
  // otherwise send a worker outside the table.
  if (scale.has_value()) scale_ = scale->clone(at::MemoryFormat::Contiguous);

  batches_.reserve(batches.size());
  for (size_t i = 0; i < batches.size(); ++i) {
    const std::string where = std::string(kOp) + " (batch " + std::to_string(i) + ")";
    check_index(batches[i], storage_, where.c_str(), "storage");
    at::Tensor index = batches[i].clone(at::MemoryFormat::Contiguous);
    check_index_bounds(index.const_data_ptr<int64_t>(), index.numel(), storage_.size(0),
                       where.c_str(), "storage");
    max_rows_ = std::max(max_rows_, index.numel());
    batches_.push_back(std::move(index));
  }
  if (file_.has_value()) {
    TORCH_CHECK(file_->first >= 0 && file_->second >= 0, kOp, ": file needs a descriptor and an offset >= 0, got (",
                file_->first, ", ", file_->second, ")");
    TORCH_CHECK(storage_.is_contiguous(), kOp, ": a file-backed storage must be contiguous rows");
    identity_ = at::arange(max_rows_, storage_.options().dtype(at::kLong));
  }
  if (device.has_value() && !device->is_cpu()) transfer_ = make_device_transfer(*device);

  const int64_t useful_workers = std::min<int64_t>(num_workers, depth);
  for (int64_t w = 0; w < useful_workers; ++w) workers_.emplace_back([this] { work(); });
}

Prefetcher::~Prefetcher() { close(); }

void Prefetcher::close() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  changed_.notify_all();
  for (auto& worker : workers_) {
    if (worker.joinable()) worker.join();
  }
  workers_.clear();
  std::lock_guard<std::mutex> lock(mutex_);
  ready_.clear();
}

std::optional<at::Tensor> Prefetcher::next() {
  at::Tensor batch;
  {
    std::unique_lock<std::mutex> lock(mutex_);
    changed_.wait(lock, [&] {
      return error_ || stopping_ || handed_out_ == num_batches() || ready_.count(handed_out_) > 0;
    });
    if (error_) std::rethrow_exception(error_);
    if (stopping_ || handed_out_ == num_batches()) return std::nullopt;
    batch = std::move(ready_.extract(handed_out_).mapped());
    ++handed_out_;
  }
  changed_.notify_all();  // a worker may claim the batch `depth` ahead now
  if (transfer_) transfer_->hand_over(batch);
  return batch;
}

void Prefetcher::work() {
  while (true) {
    int64_t batch = 0;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      changed_.wait(lock, [&] {
        return stopping_ || next_to_claim_ == num_batches() ||
               next_to_claim_ < handed_out_ + depth_;
      });
      if (stopping_ || next_to_claim_ == num_batches()) return;
      batch = next_to_claim_++;
    }
    try {
      at::Tensor result = produce(batch);
      std::lock_guard<std::mutex> lock(mutex_);
      ready_.emplace(batch, std::move(result));
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!error_) error_ = std::current_exception();
      stopping_ = true;  // the consumer only ever sees this error now: stop gathering
    }
    changed_.notify_all();
  }
}

at::Tensor Prefetcher::produce(int64_t batch) {
  const at::Tensor& index = batches_[batch];
  const at::Tensor host = acquire_buffer(index.numel());
  if (file_.has_value()) {
    // the rows as stored, then converted (dequantized) in place of a gather from memory
    const at::Tensor rows = read_rows(index);
    cpu::gather_rows_into(rows, identity_.narrow(0, 0, index.numel()), scale_, host, /*parallel=*/false);
  } else {
    cpu::gather_rows_into(storage_, index, scale_, host, /*parallel=*/false);
  }
  return transfer_ ? transfer_->upload(host) : host;
}

at::Tensor Prefetcher::read_rows(const at::Tensor& index) {
  const int64_t num = index.numel();
  const int64_t row_bytes = storage_.size(1) * static_cast<int64_t>(storage_.element_size());
  at::Tensor rows = at::empty({num, storage_.size(1)}, storage_.options());
  char* out = static_cast<char*>(rows.data_ptr());
  const int64_t* ids = index.const_data_ptr<int64_t>();
  for (int64_t i = 0; i < num; ++i) {
    int64_t done = 0;
    const off_t at = static_cast<off_t>(file_->second + ids[i] * row_bytes);
    while (done < row_bytes) {  // pread may return less than asked (a signal, a pipe-like file)
      const ssize_t got = ::pread(static_cast<int>(file_->first), out + i * row_bytes + done,
                                  static_cast<size_t>(row_bytes - done), at + done);
      if (got < 0 && errno == EINTR) continue;
      TORCH_CHECK(got > 0, kOp, ": reading row ", ids[i], " of the cache file failed: ",
                  got == 0 ? "the file ends early" : std::strerror(errno));
      done += got;
    }
  }
  return rows;
}

at::Tensor Prefetcher::acquire_buffer(int64_t rows) {
  // A buffer is free when the pool's tensor is the only one viewing its storage: every batch
  // handed out is a view, so the count drops back to one once the consumer lets go of it. The
  // view is taken under the lock so that no other worker can see the buffer as free meanwhile.
  std::lock_guard<std::mutex> lock(pool_mutex_);
  for (const auto& buffer : pool_) {
    if (buffer.storage().use_count() == 1) return buffer.narrow(0, 0, rows);
  }
  const std::vector<int64_t> sizes = {max_rows_, storage_.size(1)};
  pool_.push_back(transfer_ ? transfer_->empty_host(sizes, out_dtype_)
                            : at::empty(sizes, storage_.options().dtype(out_dtype_)));
  return pool_.back().narrow(0, 0, rows);
}

}  // namespace phasenets
