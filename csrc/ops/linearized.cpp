// Schema of dact_add(d, a, b?) -> d * (a + b), d (*S) broadcast over a's leading dims (a, b: (*P, *S)).
// Reference: fastgeom/ops/linearized/reference.py::dact_add. Kernel: csrc/cuda/linearized.cu (CUDA only;
// a compiled CPU kernel measured 1.56x slower than torch's d * (a + b) and was removed).
#include <torch/library.h>

TORCH_LIBRARY_FRAGMENT(fastgeom, m) { m.def("dact_add(Tensor d, Tensor a, Tensor? b) -> Tensor"); }
