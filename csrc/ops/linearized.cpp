// dact_add(d, a, b?) -> d * (a + b), d (*S) broadcast over a's leading dims (a, b: (*P, *S)).
// Reference: fastgeom/ops/linearized/reference.py::dact_add. CUDA twin: csrc/cuda/linearized.cu.
#include <ATen/ATen.h>
#include <torch/library.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

namespace {

void check_shapes(const at::Tensor& d, const at::Tensor& a, const std::optional<at::Tensor>& b) {
  TORCH_CHECK(a.dim() >= d.dim(), "dact_add: a must end with the derivative's shape");
  for (int64_t i = 0; i < d.dim(); ++i)
    TORCH_CHECK(a.size(a.dim() - d.dim() + i) == d.size(i), "dact_add: a ", a.sizes(),
                " must end with the derivative's shape ", d.sizes());
  TORCH_CHECK(a.scalar_type() == d.scalar_type(), "dact_add: d and a must share dtype");
  if (b.has_value()) {
    TORCH_CHECK(b->sizes() == a.sizes(), "dact_add: residual b must have a's shape");
    TORCH_CHECK(b->scalar_type() == a.scalar_type(), "dact_add: b and a must share dtype");
  }
}

at::Tensor dact_add_cpu(const at::Tensor& d, const at::Tensor& a, const std::optional<at::Tensor>& b) {
  check_shapes(d, a, b);
  auto dc = d.contiguous(), ac = a.contiguous();
  at::Tensor bc = b.has_value() ? b->contiguous() : at::Tensor();
  auto out = at::empty_like(ac);
  const int64_t total = ac.numel(), N = std::max<int64_t>(dc.numel(), 1);
  AT_DISPATCH_FLOATING_TYPES(ac.scalar_type(), "dact_add_cpu", [&] {
    const scalar_t* dp = dc.data_ptr<scalar_t>();
    const scalar_t* ap = ac.data_ptr<scalar_t>();
    const scalar_t* bp = b.has_value() ? bc.data_ptr<scalar_t>() : nullptr;
    scalar_t* op = out.data_ptr<scalar_t>();
    at::parallel_for(0, total, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) op[i] = dp[i % N] * (bp ? ap[i] + bp[i] : ap[i]);
    });
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(fastgeom, m) { m.def("dact_add(Tensor d, Tensor a, Tensor? b) -> Tensor"); }
TORCH_LIBRARY_IMPL(fastgeom, CPU, m) { m.impl("dact_add", &dact_add_cpu); }
