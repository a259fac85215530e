// qrcp(A) -> (R, perm): Householder QR with column pivoting (LAPACK geqp3 semantics, unblocked,
// float64), batched and parallel over the batch. A: (B, m, n). R: (B, min(m, n), n) upper
// trapezoidal, A[:, :, perm] = Q R, |R[i, i]| non-increasing. perm: (B, n) int64.
// Column norms are downdated as in LAPACK (dlaqp2) and recomputed when cancellation is likely;
// norms are computed with scaling so graded columns (entries ~1e-200) neither under- nor overflow.
// Reference: fastgeom/ops/logdet/reference.py::qrcp.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "ops/scaled_norm.h"
#include <ATen/Parallel.h>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

namespace {

using fastgeom_norms::scaled_norm;

// One matrix, column-major in `a` (column j at a + j*m). Writes R into r (row-major k x n).
void qrcp_one(double* a, int64_t m, int64_t n, double* r, int64_t* perm) {
  const int64_t kmax = std::min(m, n);
  const double tol3z = std::sqrt(std::numeric_limits<double>::epsilon());
  std::vector<double> vn1(n), vn2(n), v(m);
  std::iota(perm, perm + n, int64_t(0));
  for (int64_t j = 0; j < n; ++j) vn1[j] = vn2[j] = scaled_norm(a + j * m, m);
  for (int64_t k = 0; k < kmax; ++k) {
    int64_t p = k;
    for (int64_t j = k + 1; j < n; ++j)
      if (vn1[j] > vn1[p]) p = j;
    if (p != k) {
      std::swap_ranges(a + p * m, a + (p + 1) * m, a + k * m);
      std::swap(perm[p], perm[k]);
      std::swap(vn1[p], vn1[k]);
      std::swap(vn2[p], vn2[k]);
    }
    double* x = a + k * m;
    const double alpha = x[k];
    const double xnorm = scaled_norm(x + k + 1, m - k - 1);
    double tau = 0.0, beta = alpha;
    if (xnorm != 0.0) {
      beta = -std::copysign(std::hypot(alpha, xnorm), alpha);
      tau = (beta - alpha) / beta;
      const double sc = 1.0 / (alpha - beta);
      v[k] = 1.0;
      for (int64_t i = k + 1; i < m; ++i) v[i] = x[i] * sc;
    }
    x[k] = beta;
    for (int64_t i = k + 1; i < m; ++i) x[i] = 0.0;
    if (tau != 0.0) {
      for (int64_t j = k + 1; j < n; ++j) {
        double* c = a + j * m;
        double w = c[k];
        for (int64_t i = k + 1; i < m; ++i) w += v[i] * c[i];
        w *= tau;
        c[k] -= w;
        for (int64_t i = k + 1; i < m; ++i) c[i] -= w * v[i];
      }
    }
    for (int64_t j = k + 1; j < n; ++j) {
      if (vn1[j] == 0.0) continue;
      const double* c = a + j * m;
      double temp = std::fabs(c[k]) / vn1[j];
      temp = std::max(0.0, 1.0 - temp * temp);
      const double ratio = vn1[j] / vn2[j];
      if (temp * ratio * ratio <= tol3z) {
        vn1[j] = scaled_norm(c + k + 1, m - k - 1);
        vn2[j] = vn1[j];
      } else {
        vn1[j] *= std::sqrt(temp);
      }
    }
  }
  for (int64_t i = 0; i < kmax; ++i)
    for (int64_t j = 0; j < n; ++j) r[i * n + j] = j >= i ? a[j * m + i] : 0.0;
}

std::tuple<at::Tensor, at::Tensor> qrcp_cpu(const at::Tensor& A) {
  TORCH_CHECK(A.dim() == 3, "qrcp: A must be (B, m, n), got ", A.sizes());
  const int64_t B = A.size(0), m = A.size(1), n = A.size(2), k = std::min(m, n);
  // column-major per matrix: a float64 copy of A^T, always a fresh buffer (the factorisation works in
  // place; .contiguous() alone returns A itself when A^T is already contiguous, e.g. m == 1 or n == 1)
  auto At = A.transpose(1, 2).to(at::kDouble, /*non_blocking=*/false, /*copy=*/true, at::MemoryFormat::Contiguous);
  auto R = at::zeros({B, k, n}, At.options());
  auto perm = at::empty({B, n}, At.options().dtype(at::kLong));
  double* a = At.data_ptr<double>();
  double* r = R.data_ptr<double>();
  int64_t* pp = perm.data_ptr<int64_t>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) qrcp_one(a + b * m * n, m, n, r + b * k * n, pp + b * n);
  });
  return {R, perm};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastgeom, m) { m.def("qrcp(Tensor A) -> (Tensor, Tensor)"); }
TORCH_LIBRARY_IMPL(fastgeom, CPU, m) { m.impl("qrcp", &qrcp_cpu); }
