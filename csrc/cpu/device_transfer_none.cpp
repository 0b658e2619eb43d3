// The CPU-only build: there is no device to prefetch to.
#include "../device_transfer.h"

#include <c10/util/Exception.h>

namespace phasenets {

bool built_with_cuda() { return false; }

std::unique_ptr<DeviceTransfer> make_device_transfer(const at::Device& device) {
  TORCH_CHECK(false, "phasenets.Prefetcher: cannot prefetch to ", device,
              ": phasenets._C was built without CUDA (rebuild on a machine with CUDA torch and "
              "nvcc, or with FORCE_CUDA=1)");
}

}  // namespace phasenets
