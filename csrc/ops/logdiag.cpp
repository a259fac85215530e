// logdiag_sum(R, k) -> float64 [B]: out[b] = sum_{i < k[b]} log|R[b, i, i]|, accumulated in float64.
// Reference: fastgeom/ops/logdet/reference.py::logdiag_sum.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/Parallel.h>
#include <cmath>

namespace {

at::Tensor logdiag_sum_cpu(const at::Tensor& R, const at::Tensor& k) {
  TORCH_CHECK(R.dim() == 3, "logdiag_sum: R must be (B, p, q), got ", R.sizes());
  TORCH_CHECK(k.dim() == 1 && k.size(0) == R.size(0), "logdiag_sum: k must be (B,)");
  auto Rd = R.to(at::kDouble).contiguous();
  auto kk = k.to(at::kLong).contiguous();
  const int64_t B = Rd.size(0), p = Rd.size(1), q = Rd.size(2), r = std::min(p, q);
  auto out = at::zeros({B}, Rd.options());
  const double* a = Rd.data_ptr<double>();
  const int64_t* kp = kk.data_ptr<int64_t>();
  double* o = out.data_ptr<double>();
  at::parallel_for(0, B, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t b = b0; b < b1; ++b) {
      const int64_t kb = std::min<int64_t>(std::max<int64_t>(kp[b], 0), r);
      double s = 0.0;
      for (int64_t i = 0; i < kb; ++i) s += std::log(std::fabs(a[b * p * q + i * q + i]));
      o[b] = s;
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastgeom, m) { m.def("logdiag_sum(Tensor R, Tensor k) -> Tensor"); }
TORCH_LIBRARY_IMPL(fastgeom, CPU, m) { m.impl("logdiag_sum", &logdiag_sum_cpu); }
