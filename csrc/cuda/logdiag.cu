// CUDA twin of csrc/ops/logdiag.cpp: one block per matrix, float64 tree reduction.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

namespace {

template <int THREADS>
__global__ void logdiag_sum_kernel(const double* __restrict__ R, const int64_t* __restrict__ k,
                                   double* __restrict__ out, int64_t p, int64_t q, int64_t r) {
  __shared__ double buf[THREADS];
  const int64_t b = blockIdx.x;
  int64_t kb = k[b];
  kb = kb < 0 ? 0 : (kb > r ? r : kb);
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < kb; i += THREADS) s += log(fabs(R[b * p * q + i * q + i]));
  buf[threadIdx.x] = s;
  __syncthreads();
  for (int w = THREADS / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) buf[threadIdx.x] += buf[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) out[b] = buf[0];
}

at::Tensor logdiag_sum_cuda(const at::Tensor& R, const at::Tensor& k) {
  TORCH_CHECK(R.dim() == 3, "logdiag_sum: R must be (B, p, q), got ", R.sizes());
  TORCH_CHECK(k.dim() == 1 && k.size(0) == R.size(0), "logdiag_sum: k must be (B,)");
  c10::cuda::CUDAGuard guard(R.device());
  auto Rd = R.to(at::kDouble).contiguous();
  auto kk = k.to(R.device(), at::kLong).contiguous();
  const int64_t B = Rd.size(0), p = Rd.size(1), q = Rd.size(2);
  auto out = at::zeros({B}, Rd.options());
  if (B == 0) return out;
  constexpr int T = 256;
  logdiag_sum_kernel<T><<<B, T, 0, at::cuda::getCurrentCUDAStream()>>>(
      Rd.data_ptr<double>(), kk.data_ptr<int64_t>(), out.data_ptr<double>(), p, q, std::min(p, q));
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgeom, CUDA, m) { m.impl("logdiag_sum", &logdiag_sum_cuda); }
