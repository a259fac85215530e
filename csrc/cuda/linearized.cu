// CUDA twin of csrc/ops/linearized.cpp: out = d * (a + b), d broadcast over a's leading dims.
// Grid-stride loop; d (one point batch's activation derivatives) stays in L2 across the tangents.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

template <typename T, bool HAS_B>
__global__ void dact_add_kernel(const T* __restrict__ d, const T* __restrict__ a, const T* __restrict__ b,
                                T* __restrict__ out, int64_t total, int64_t N) {
  for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < total;
       i += (int64_t)blockDim.x * gridDim.x) {
    T s = a[i];
    if (HAS_B) s += b[i];
    out[i] = d[i % N] * s;
  }
}

at::Tensor dact_add_cuda(const at::Tensor& d, const at::Tensor& a, const std::optional<at::Tensor>& b) {
  TORCH_CHECK(a.dim() >= d.dim(), "dact_add: a must end with the derivative's shape");
  for (int64_t i = 0; i < d.dim(); ++i)
    TORCH_CHECK(a.size(a.dim() - d.dim() + i) == d.size(i), "dact_add: a ", a.sizes(),
                " must end with the derivative's shape ", d.sizes());
  TORCH_CHECK(a.scalar_type() == d.scalar_type(), "dact_add: d and a must share dtype");
  if (b.has_value()) {
    TORCH_CHECK(b->sizes() == a.sizes() && b->scalar_type() == a.scalar_type(),
                "dact_add: residual b must have a's shape and dtype");
  }
  c10::cuda::CUDAGuard guard(a.device());
  auto dc = d.contiguous(), ac = a.contiguous();
  at::Tensor bc = b.has_value() ? b->contiguous() : at::Tensor();
  auto out = at::empty_like(ac);
  const int64_t total = ac.numel(), N = std::max<int64_t>(dc.numel(), 1);
  if (total == 0) return out;
  const int threads = 256;
  const int64_t blocks = std::min<int64_t>((total + threads - 1) / threads, 65535LL * 32);
  auto stream = at::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, ac.scalar_type(), "dact_add_cuda", [&] {
    if (b.has_value()) {
      dact_add_kernel<scalar_t, true><<<blocks, threads, 0, stream>>>(
          dc.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(), bc.data_ptr<scalar_t>(), out.data_ptr<scalar_t>(), total, N);
    } else {
      dact_add_kernel<scalar_t, false><<<blocks, threads, 0, stream>>>(
          dc.data_ptr<scalar_t>(), ac.data_ptr<scalar_t>(), nullptr, out.data_ptr<scalar_t>(), total, N);
    }
  });
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgeom, CUDA, m) { m.impl("dact_add", &dact_add_cuda); }
