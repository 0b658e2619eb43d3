// The Python module phasenets._C: importing it registers the phasenets:: ops (their static
// registrations live in the other translation units) and exposes the prefetcher class.
#include "../device_transfer.h"
#include "../prefetcher.h"

#include <ATen/Context.h>
#include <ATen/Parallel.h>

// The narrow pybind11 headers (casters for Tensor, Device, dtype) rather than torch/extension.h,
// which pulls in the whole C++ frontend and doubles the build time.
#include <pybind11/stl.h>
#include <torch/csrc/utils/pybind.h>

namespace py = pybind11;

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "phasenets native ops (torch.ops.phasenets.*) and the batch prefetcher";
  m.def("built_with_cuda", &phasenets::built_with_cuda,
        "Whether this build has the CUDA kernels and device prefetching.");
  // torch.set_flush_denormal sets the calling thread's floating-point control only; the intra-op
  // threads that run most of the arithmetic keep theirs. One chunk per thread sets each of them.
  m.def(
      "set_flush_denormal_all_threads",
      [](bool on) {
        const bool supported = at::globalContext().setFlushDenormal(on);
        const int64_t threads = at::get_num_threads();
        at::parallel_for(0, threads, 1, [on](int64_t, int64_t) { at::globalContext().setFlushDenormal(on); });
        return supported;
      },
      py::arg("on"),
      "Flush float32/float64 denormals to zero (or stop) in this thread and in every intra-op thread; "
      "False where the CPU cannot.");

  // Blocking calls drop the GIL: the workers never need it, and other Python threads keep running.
  py::class_<phasenets::Prefetcher>(m, "Prefetcher")
      .def(py::init<at::Tensor, std::vector<at::Tensor>, std::optional<at::Tensor>, at::ScalarType,
                    int64_t, int64_t, std::optional<at::Device>,
                    std::optional<std::pair<int64_t, int64_t>>>(),
           py::arg("storage"), py::arg("batches"), py::arg("scale"), py::arg("out_dtype"),
           py::arg("depth"), py::arg("num_workers"), py::arg("device"), py::arg("file") = py::none())
      .def("next", &phasenets::Prefetcher::next, py::call_guard<py::gil_scoped_release>())
      .def("close", &phasenets::Prefetcher::close, py::call_guard<py::gil_scoped_release>())
      .def_property_readonly("num_batches", &phasenets::Prefetcher::num_batches);
}
