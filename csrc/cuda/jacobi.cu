// CUDA twin of csrc/ops/jacobi.cpp: one-sided Jacobi singular values of X (B, p, q), float64.
// One block per matrix; round-robin (circle method) ordering, so the q/2 pairs of a round are
// disjoint: each warp takes pairs of the round, reduces the dot product with shuffles and rotates
// the two columns. Same rotation formula and convergence test as the reference
// (fastgeom/ops/svd/reference.py::jacobi_svdvals); squared norms are recomputed after each rotation.
// The sweeps stop, for the whole block, after one without a rotation. Values are sorted by the host.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>

#include <cfloat>

namespace {

constexpr int THREADS = 256;
constexpr int WARPS = THREADS / 32;

__device__ __forceinline__ double warp_sum(double v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

__device__ double col_dot(const double* __restrict__ x, const double* __restrict__ y, int64_t p, int lane) {
  double s = 0.0;
  for (int64_t k = lane; k < p; k += 32) s += x[k] * y[k];
  return warp_sum(s);
}

// a: (B, q, p) (columns contiguous), nrm: (B, q) workspace, sv: (B, q) unsorted output
__global__ void jacobi_kernel(double* __restrict__ a, double* __restrict__ nrm, double* __restrict__ sv,
                              int64_t p, int64_t q, int64_t max_sweeps, double tol) {
  const int64_t b = blockIdx.x;
  double* A = a + b * p * q;
  double* N = nrm + b * q;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t qq = q + (q & 1);  // a virtual zero column makes q even
  __shared__ int rotated;
  for (int64_t j = warp; j < q; j += WARPS) {
    const double n2 = col_dot(A + j * p, A + j * p, p, lane);
    if (lane == 0) N[j] = n2;
  }
  __syncthreads();
  for (int64_t sweep = 0; sweep < max_sweeps; ++sweep) {
    if (threadIdx.x == 0) rotated = 0;
    __syncthreads();
    for (int64_t r = 0; r < qq - 1; ++r) {
      for (int64_t k = warp; k < qq / 2; k += WARPS) {
        int64_t i, j;
        if (k == 0) {
          i = r;
          j = qq - 1;
        } else {
          i = (r + k) % (qq - 1);
          j = (r - k + qq - 1) % (qq - 1);
        }
        if (i >= q || j >= q) continue;  // the virtual zero column
        double* xi = A + i * p;
        double* xj = A + j * p;
        const double alpha = N[i], beta = N[j];
        const double gamma = col_dot(xi, xj, p, lane);
        if (!(fabs(gamma) > tol * sqrt(alpha) * sqrt(beta))) continue;
        const double zeta = (beta - alpha) / (2.0 * gamma);
        const double t = zeta == 0.0 ? 1.0 : copysign(1.0, zeta) / (fabs(zeta) + hypot(1.0, zeta));
        const double c = 1.0 / sqrt(1.0 + t * t), s = c * t;
        double ni = 0.0, nj = 0.0;
        for (int64_t m = lane; m < p; m += 32) {
          const double u = xi[m], v = xj[m];
          const double nu = c * u - s * v, nv = s * u + c * v;
          xi[m] = nu;
          xj[m] = nv;
          ni += nu * nu;
          nj += nv * nv;
        }
        ni = warp_sum(ni);
        nj = warp_sum(nj);
        if (lane == 0) {
          N[i] = ni;
          N[j] = nj;
          rotated = 1;
        }
      }
      __syncthreads();  // the next round's pairs read columns this round wrote
    }
    const int any = rotated;
    __syncthreads();
    if (!any) break;
  }
  // scaled 2-norms of the final columns (no under/overflow for graded columns)
  for (int64_t j = warp; j < q; j += WARPS) {
    const double* x = A + j * p;
    double mx = 0.0;
    for (int64_t m = lane; m < p; m += 32) mx = fmax(mx, fabs(x[m]));
    for (int o = 16; o > 0; o >>= 1) mx = fmax(mx, __shfl_xor_sync(0xffffffffu, mx, o));
    double s = 0.0;
    if (mx > 0.0)
      for (int64_t m = lane; m < p; m += 32) {
        const double y = x[m] / mx;
        s += y * y;
      }
    s = warp_sum(s);
    if (lane == 0) sv[b * q + j] = mx * sqrt(s);
  }
}

at::Tensor jacobi_svdvals_cuda(const at::Tensor& X, int64_t max_sweeps) {
  TORCH_CHECK(X.dim() == 3, "jacobi_svdvals: X must be (B, p, q), got ", X.sizes());
  TORCH_CHECK(max_sweeps >= 1, "jacobi_svdvals: max_sweeps must be >= 1, got ", max_sweeps);
  c10::cuda::CUDAGuard guard(X.device());
  const int64_t B = X.size(0), p = X.size(1), q = X.size(2);
  auto Xt = X.transpose(1, 2).to(at::kDouble, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
  auto sv = at::zeros({B, q}, Xt.options());
  if (B == 0 || q == 0 || p == 0) return sv;
  auto nrm = at::empty({B, q}, Xt.options());
  const double tol = DBL_EPSILON * static_cast<double>(p > q ? p : q);
  jacobi_kernel<<<B, THREADS, 0, at::cuda::getCurrentCUDAStream()>>>(
      Xt.data_ptr<double>(), nrm.data_ptr<double>(), sv.data_ptr<double>(), p, q, max_sweeps, tol);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return std::get<0>(at::sort(sv, /*dim=*/-1, /*descending=*/true));
}

}  // namespace

TORCH_LIBRARY_IMPL(fastgeom, CUDA, m) { m.impl("jacobi_svdvals", &jacobi_svdvals_cuda); }
