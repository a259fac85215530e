// scaled_norm(x, len): the 2-norm of x[0..len) with LAPACK dnrm2-style scaling, so graded columns
// (entries ~1e-200 or ~1e200) neither under- nor overflow. Shared by qrcp.cpp and jacobi.cpp.
#pragma once

#include <cmath>
#include <cstdint>

namespace fastgeom_norms {

inline double scaled_norm(const double* x, int64_t len) {
  double scale = 0.0, ssq = 1.0;
  for (int64_t i = 0; i < len; ++i) {
    const double a = std::fabs(x[i]);
    if (a != 0.0) {
      if (scale < a) {
        ssq = 1.0 + ssq * (scale / a) * (scale / a);
        scale = a;
      } else {
        ssq += (a / scale) * (a / scale);
      }
    }
  }
  return scale * std::sqrt(ssq);
}

}  // namespace fastgeom_norms
