// How the prefetcher moves a gathered batch to an accelerator. The CUDA build links
// csrc/cuda/device_transfer_cuda.cpp; the CPU-only build links csrc/cpu/device_transfer_none.cpp,
// so the choice is made by the build, not by #ifdefs in the prefetcher.
#pragma once

#include <ATen/core/Tensor.h>

#include <memory>

namespace phasenets {

class DeviceTransfer {
 public:
  virtual ~DeviceTransfer() = default;

  // A staging buffer on the host, page-locked so the copy can run asynchronously.
  virtual at::Tensor empty_host(at::IntArrayRef sizes, at::ScalarType dtype) = 0;

  // Copies `host` to the device on a side stream and waits (on the calling worker thread) for the
  // copy's event, so `host` may be reused as soon as this returns.
  virtual at::Tensor upload(const at::Tensor& host) = 0;

  // On the consumer's thread: tells the caching allocator that `device_batch` is used on the
  // consumer's current stream, so its memory is not recycled by the side stream too early.
  virtual void hand_over(const at::Tensor& device_batch) = 0;
};

// Whether this build links the CUDA kernels and transfer.
bool built_with_cuda();

// Raises a clear error for a device this build cannot reach.
std::unique_ptr<DeviceTransfer> make_device_transfer(const at::Device& device);

}  // namespace phasenets
