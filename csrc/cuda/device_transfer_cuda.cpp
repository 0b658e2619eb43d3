// The CUDA build's DeviceTransfer: pinned staging buffers and host-to-device copies on a side
// stream, each followed by an event the worker thread waits on before reusing its buffer.
#include "../device_transfer.h"

#include <ATen/ops/empty.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

namespace phasenets {
namespace {

class CudaTransfer final : public DeviceTransfer {
 public:
  explicit CudaTransfer(const at::Device& device)
      : device_(device), side_stream_(c10::cuda::getStreamFromPool(false, device.index())) {
    const c10::cuda::CUDAGuard device_guard(device_);
    C10_CUDA_CHECK(cudaEventCreateWithFlags(&copied_, cudaEventDisableTiming));
  }

  ~CudaTransfer() override { C10_CUDA_IGNORE_ERROR(cudaEventDestroy(copied_)); }

  at::Tensor empty_host(at::IntArrayRef sizes, at::ScalarType dtype) override {
    return at::empty(sizes, at::TensorOptions().dtype(dtype).pinned_memory(true));
  }

  at::Tensor upload(const at::Tensor& host) override {
    const c10::cuda::CUDAGuard device_guard(device_);
    // Allocating under the side stream ties the block to it; hand_over adds the consumer's stream.
    const c10::cuda::CUDAStreamGuard stream_guard(side_stream_);
    at::Tensor device_batch = at::empty(host.sizes(), host.options().device(device_).pinned_memory(false));
    C10_CUDA_CHECK(cudaMemcpyAsync(device_batch.data_ptr(), host.const_data_ptr(), host.nbytes(),
                                   cudaMemcpyHostToDevice, side_stream_.stream()));
    // The side stream may be shared (it comes from a pool), so wait on this copy's event only.
    C10_CUDA_CHECK(cudaEventRecord(copied_, side_stream_.stream()));
    C10_CUDA_CHECK(cudaEventSynchronize(copied_));  // the worker waits, never the consumer
    return device_batch;
  }

  void hand_over(const at::Tensor& device_batch) override {
    c10::cuda::CUDACachingAllocator::recordStream(device_batch.storage().data_ptr(),
                                                  c10::cuda::getCurrentCUDAStream(device_.index()));
  }

 private:
  at::Device device_;
  c10::cuda::CUDAStream side_stream_;
  cudaEvent_t copied_ = nullptr;
};

}  // namespace

bool built_with_cuda() { return true; }

std::unique_ptr<DeviceTransfer> make_device_transfer(const at::Device& device) {
  TORCH_CHECK(device.is_cuda() && device.has_index(), "phasenets.Prefetcher: cannot prefetch to ",
              device, "; give a CUDA device with an index, such as cuda:0");
  return std::make_unique<CudaTransfer>(device);
}

}  // namespace phasenets
