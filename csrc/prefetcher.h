// A background gatherer: given a storage table and a sequence of index batches, worker threads
// gather the next `depth` batches ahead of the consumer (never holding the GIL) and hand them out
// in order. With a CUDA device, each batch is staged in pinned memory and copied to the device on a
// side stream.
//
// With a `file` (descriptor, byte offset of row 0), the rows are read from that file with
// positioned reads (pread) instead of from the storage's memory, which then only gives the table's
// shape and dtype: a disk-tier cache mapped in memory would otherwise keep every page it touched
// resident, so the process's memory would grow with the file however little of it is in use.
#pragma once

#include <ATen/core/Tensor.h>

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

namespace phasenets {

class DeviceTransfer;

class Prefetcher {
 public:
  // Validates everything (storage, scale, every batch's bounds) before any worker starts, so bad
  // input fails here, in the caller's thread.
  Prefetcher(at::Tensor storage, std::vector<at::Tensor> batches, std::optional<at::Tensor> scale,
             at::ScalarType out_dtype, int64_t depth, int64_t num_workers,
             std::optional<at::Device> device,
             std::optional<std::pair<int64_t, int64_t>> file = std::nullopt);
  ~Prefetcher();

  Prefetcher(const Prefetcher&) = delete;
  Prefetcher& operator=(const Prefetcher&) = delete;

  // The next batch [rows, row_elems], or nullopt once all were handed out or after close().
  // Rethrows the first error a worker hit. A CPU batch lives in a reusable buffer that is only
  // recycled once every tensor viewing it has been released, so batches may be kept freely.
  std::optional<at::Tensor> next();

  // Stops and joins the workers; pending batches are dropped. Idempotent.
  void close();

  int64_t num_batches() const { return static_cast<int64_t>(batches_.size()); }

 private:
  void work();
  at::Tensor produce(int64_t batch);
  at::Tensor acquire_buffer(int64_t rows);  // a free [rows, row_elems] view into the pool
  at::Tensor read_rows(const at::Tensor& index);  // file mode: the rows, in storage dtype, by pread

  at::Tensor storage_;
  std::vector<at::Tensor> batches_;
  std::optional<at::Tensor> scale_;
  at::ScalarType out_dtype_;
  int64_t depth_;
  int64_t max_rows_ = 0;
  std::optional<std::pair<int64_t, int64_t>> file_;  // (descriptor, offset of row 0)
  at::Tensor identity_;  // file mode: 0 .. max_rows - 1, gathering read rows in their order
  std::unique_ptr<DeviceTransfer> transfer_;

  std::mutex mutex_;  // guards everything below
  std::condition_variable changed_;
  int64_t next_to_claim_ = 0;
  int64_t handed_out_ = 0;
  bool stopping_ = false;
  std::exception_ptr error_;
  std::map<int64_t, at::Tensor> ready_;

  std::mutex pool_mutex_;
  std::vector<at::Tensor> pool_;  // full-size buffers; free when nothing else references them

  std::vector<std::thread> workers_;
};

}  // namespace phasenets
