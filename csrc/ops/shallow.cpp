// shallow_geometry(W, b, x, act_code, power, want_ricci) -> (g (N, d, d), logvol (N,), ricci (N,)), float64.
// Fused metric, log volume element and true Ricci scalar of Phi(x) = sigma(W x + b)/sqrt(n) for d <= 4;
// multithreaded over points (at::parallel_for). Algorithm: csrc/ops/shallow_core.h.
// Reference (the spec): fastgeom/ops/shallow/reference.py.
#include <torch/extension.h>
#include <ATen/Parallel.h>

#include "ops/shallow_core.h"

namespace {

void check_inputs(const at::Tensor& W, const at::Tensor& b, const at::Tensor& x) {
  TORCH_CHECK(W.dim() == 2, "shallow_geometry: W must be (n, d), got ", W.sizes());
  TORCH_CHECK(b.dim() == 1 && b.size(0) == W.size(0), "shallow_geometry: b must be (n,) with n = W.size(0)");
  TORCH_CHECK(x.dim() == 2 && x.size(1) == W.size(1), "shallow_geometry: x must be (N, d) with d = W.size(1)");
  TORCH_CHECK(W.size(1) >= 1 && W.size(1) <= fastgeom_shallow::MAXD,
              "shallow_geometry: fused kernel handles 1 <= d <= 4, got d = ", W.size(1));
  TORCH_CHECK(W.size(0) >= 1, "shallow_geometry: need at least one hidden unit");
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> shallow_geometry_cpu(const at::Tensor& W_, const at::Tensor& b_,
                                                                    const at::Tensor& x_, int64_t code,
                                                                    int64_t power, bool want_ricci) {
  check_inputs(W_, b_, x_);
  auto W = W_.to(at::kDouble).contiguous();
  auto b = b_.to(at::kDouble).contiguous();
  auto x = x_.to(at::kDouble).contiguous();
  const int64_t N = x.size(0), n = W.size(0);
  const int d = static_cast<int>(W.size(1));
  auto g = at::empty({N, d, d}, x.options());
  auto lv = at::empty({N}, x.options());
  auto R = want_ricci ? at::empty({N}, x.options()) : at::full({N}, NAN, x.options());
  const double *Wp = W.data_ptr<double>(), *bp = b.data_ptr<double>(), *xp = x.data_ptr<double>();
  double *gp = g.data_ptr<double>(), *lp = lv.data_ptr<double>(), *rp = R.data_ptr<double>();
  at::parallel_for(0, N, 1, [&](int64_t p0, int64_t p1) {
    for (int64_t p = p0; p < p1; ++p) {
      double r = NAN;
      fastgeom_shallow::point(Wp, bp, xp + p * d, n, d, static_cast<int>(code), static_cast<int>(power),
                              want_ricci, gp + p * d * d, lp + p, &r);
      if (want_ricci) rp[p] = r;
    }
  });
  return {g, lv, R};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastgeom, m) {
  m.def("shallow_geometry(Tensor W, Tensor b, Tensor x, int act_code, int power, bool want_ricci) -> (Tensor, Tensor, Tensor)");
}
TORCH_LIBRARY_IMPL(fastgeom, CPU, m) { m.impl("shallow_geometry", &shallow_geometry_cpu); }
