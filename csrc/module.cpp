// fastgeom._C: the Python module. Ops register themselves in the `fastgeom` torch library
// (csrc/ops/*.cpp for CPU, csrc/cuda/*.cu for CUDA) and are called as torch.ops.fastgeom.<op>;
// importing this module loads them. build_info() reports how the extension was built.
#include <torch/extension.h>

#ifndef FASTGEOM_TORCH_VERSION
#define FASTGEOM_TORCH_VERSION "unknown"
#endif
#ifndef FASTGEOM_CXX_VERSION
#define FASTGEOM_CXX_VERSION "unknown"
#endif
#ifndef FASTGEOM_NVCC_VERSION
#define FASTGEOM_NVCC_VERSION "none"
#endif
#ifndef FASTGEOM_CUDA_ARCH_LIST
#define FASTGEOM_CUDA_ARCH_LIST "none"
#endif

TORCH_LIBRARY(fastgeom, m) {}

static pybind11::dict build_info() {
  pybind11::dict d;
  d["torch"] = FASTGEOM_TORCH_VERSION;
  d["cxx"] = FASTGEOM_CXX_VERSION;
  d["nvcc"] = FASTGEOM_NVCC_VERSION;
  d["cuda_arch_list"] = FASTGEOM_CUDA_ARCH_LIST;
#ifdef FASTGEOM_WITH_CUDA
  d["with_cuda"] = true;
#else
  d["with_cuda"] = false;
#endif
  d["openmp_threads"] = at::get_num_threads();
  return d;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "fastgeom compiled kernels (ops are registered under torch.ops.fastgeom)";
  m.def("build_info", &build_info, "How this extension was built");
}
