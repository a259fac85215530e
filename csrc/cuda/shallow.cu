// CUDA twin of csrc/ops/shallow.cpp: one thread per point looping over the hidden units (all threads of
// a warp read the same W row, a broadcast through L1). Algorithm: csrc/ops/shallow_core.h.
#include <torch/extension.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include "ops/shallow_core.h"

namespace {

constexpr int THREADS = 128;

__global__ void shallow_geometry_kernel(const double* __restrict__ W, const double* __restrict__ b,
                                        const double* __restrict__ x, int64_t N, int64_t n, int d, int code,
                                        int power, bool want_ricci, double* __restrict__ g,
                                        double* __restrict__ lv, double* __restrict__ R) {
  const int64_t p = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
  if (p >= N) return;
  double r = NAN;
  fastgeom_shallow::point(W, b, x + p * d, n, d, code, power, want_ricci, g + p * d * d, lv + p, &r);
  if (want_ricci) R[p] = r;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> shallow_geometry_cuda(const at::Tensor& W_, const at::Tensor& b_,
                                                                     const at::Tensor& x_, int64_t code,
                                                                     int64_t power, bool want_ricci) {
  TORCH_CHECK(W_.dim() == 2 && b_.dim() == 1 && x_.dim() == 2 && x_.size(1) == W_.size(1) &&
                  b_.size(0) == W_.size(0),
              "shallow_geometry: expected W (n, d), b (n,), x (N, d)");
  TORCH_CHECK(W_.size(1) >= 1 && W_.size(1) <= fastgeom_shallow::MAXD, "shallow_geometry: d must be 1..4");
  c10::cuda::CUDAGuard guard(x_.device());
  auto W = W_.to(x_.device(), at::kDouble).contiguous();
  auto b = b_.to(x_.device(), at::kDouble).contiguous();
  auto x = x_.to(at::kDouble).contiguous();
  const int64_t N = x.size(0), n = W.size(0);
  const int d = static_cast<int>(W.size(1));
  auto g = at::empty({N, d, d}, x.options());
  auto lv = at::empty({N}, x.options());
  auto R = at::full({N}, NAN, x.options());
  if (N == 0) return {g, lv, R};
  const int blocks = static_cast<int>((N + THREADS - 1) / THREADS);
  shallow_geometry_kernel<<<blocks, THREADS, 0, at::cuda::getCurrentCUDAStream()>>>(
      W.data_ptr<double>(), b.data_ptr<double>(), x.data_ptr<double>(), N, n, d, static_cast<int>(code),
      static_cast<int>(power), want_ricci, g.data_ptr<double>(), lv.data_ptr<double>(), R.data_ptr<double>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return {g, lv, R};
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgeom, CUDA, m) { m.impl("shallow_geometry", &shallow_geometry_cuda); }
