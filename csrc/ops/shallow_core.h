// Per-point core of the fused shallow-network geometry op (shared by csrc/ops/shallow.cpp and
// csrc/cuda/shallow.cu). Reference (the spec): fastgeom/ops/shallow/reference.py.
//
// Phi(x) = sigma(W x + b) / sqrt(n), W (n, d) row-major, d <= 4. For one point x:
//   pass 1: streaming Givens QR of the rows s_j w_j / sqrt(n) (s = sigma'(z_j), z_j = w_j . x + b_j):
//           upper triangular Rf with Rf^T Rf = g; L = Rf^T, logvol = sum_i log L_ii
//   pass 2: u_j = L^-1 w_j (so G_jk = w_j^T g^-1 w_k = u_j . u_k), P_j = sigma'(z_j) sigma''(z_j)
//           T = sum_j P_j u_j (x) u_j (x) u_j,  v = sum_j P_j |u_j|^2 u_j
//           R = (|T|^2 - |v|^2) / n^2   (the Gram form of MATH 3.5 expanded; true convention)
// A metric that is not positive definite gives logvol = -inf (or NaN) and R = NaN; so does R when a
// unit's sigma' sigma'' underflows (see pass 2).
#pragma once
#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define FG_HD __host__ __device__ __forceinline__
#else
#define FG_HD inline
#endif

namespace fastgeom_shallow {

constexpr int MAXD = 4;
// activation codes: fastgeom/activations.py::KERNEL_CODES
enum { SIGMOID = 0, TANH = 1, ERF = 2, GELU = 3, SOFTPLUS = 4, SIN = 5, MONOMIAL = 6 };

// sigma'(z), sigma''(z)
FG_HD void act_d12(int code, int power, double z, double& d1, double& d2) {
  switch (code) {
    case SIGMOID: {  // sigma(z) sigma(-z): keeps relative accuracy for saturated units
      const double sp = 1.0 / (1.0 + exp(-z)), sm = 1.0 / (1.0 + exp(z));
      d1 = sp * sm;
      d2 = d1 * (sm - sp);
      break;
    }
    case TANH: {  // cosh^-2 rather than 1 - tanh^2
      const double c = cosh(z);
      d1 = 1.0 / (c * c);
      d2 = -2.0 * tanh(z) * d1;
      break;
    }
    case ERF: {
      d1 = 1.1283791670955126 * exp(-z * z);  // 2/sqrt(pi)
      d2 = -2.0 * z * d1;
      break;
    }
    case GELU: {
      const double phi = 0.3989422804014327 * exp(-0.5 * z * z);
      d1 = 0.5 * erfc(-z * 0.7071067811865476) + z * phi;
      d2 = (2.0 - z * z) * phi;
      break;
    }
    case SOFTPLUS: {
      const double s = 1.0 / (1.0 + exp(-z));
      d1 = s;
      d2 = s / (1.0 + exp(z));
      break;
    }
    case SIN: {
      d1 = cos(z);
      d2 = -sin(z);
      break;
    }
    default: {  // MONOMIAL z^power
      double zk2 = 1.0;  // z^(power-2)
      for (int i = 0; i < power - 2; ++i) zk2 *= z;
      if (power >= 2) {
        d1 = power * zk2 * z;
        d2 = double(power) * (power - 1) * zk2;
      } else {
        d1 = 1.0;
        d2 = 0.0;
      }
    }
  }
}

// One point. W (n, d) row-major; g_out (d, d) or nullptr; returns logvol and R (R only if want_ricci).
FG_HD void point(const double* __restrict__ W, const double* __restrict__ b, const double* __restrict__ x,
                 int64_t n, int d, int code, int power, bool want_ricci, double* g_out, double* logvol,
                 double* ricci) {
  // pass 1: streaming Givens QR of the rows s_j w_j / sqrt(n): Rf upper triangular, Rf^T Rf = g.
  // (never forms g, so the condition number is not squared)
  double Rf[MAXD][MAXD];
  for (int a = 0; a < MAXD; ++a)
    for (int c = 0; c < MAXD; ++c) Rf[a][c] = 0.0;
  const double inv_sqrt_n = 1.0 / sqrt(double(n));
  for (int64_t j = 0; j < n; ++j) {
    const double* w = W + j * d;
    double z = b[j];
    for (int a = 0; a < d; ++a) z += w[a] * x[a];
    double d1, d2;
    act_d12(code, power, z, d1, d2);
    double r[MAXD];
    for (int a = 0; a < d; ++a) r[a] = d1 * inv_sqrt_n * w[a];
    for (int i = 0; i < d; ++i) {
      const double bi = r[i];
      if (bi == 0.0) continue;
      const double ai = Rf[i][i];
      const double h = hypot(ai, bi);  // scaled: ai, bi ~ 1e-170 (saturated units) must not underflow
      const double c = ai / h, s = bi / h;
      Rf[i][i] = h;
      for (int k = i + 1; k < d; ++k) {
        const double t = Rf[i][k];
        Rf[i][k] = c * t + s * r[k];
        r[k] = c * r[k] - s * t;
      }
    }
  }
  if (g_out)
    for (int a = 0; a < d; ++a)
      for (int c = 0; c < d; ++c) {
        double s = 0.0;
        for (int m = 0; m <= (a < c ? a : c); ++m) s += Rf[m][a] * Rf[m][c];
        g_out[a * d + c] = s;
      }
  bool pd = true;
  double lv = 0.0;
  for (int i = 0; i < d; ++i) {
    if (!(Rf[i][i] > 0.0)) pd = false;
    lv += log(Rf[i][i]);
  }
  *logvol = pd ? lv : (lv == lv ? -INFINITY : lv);
  const double inv_n = 1.0 / double(n);
  double L[MAXD][MAXD];  // L = Rf^T, g = L L^T
  for (int a = 0; a < d; ++a)
    for (int c = 0; c < d; ++c) L[a][c] = Rf[c][a];
  if (!want_ricci) return;
  if (!pd) {
    *ricci = NAN;
    return;
  }
  double T[MAXD][MAXD][MAXD];
  double v[MAXD];
  for (int a = 0; a < MAXD; ++a) {
    v[a] = 0.0;
    for (int c = 0; c < MAXD; ++c)
      for (int e = 0; e < MAXD; ++e) T[a][c][e] = 0.0;
  }
  for (int64_t j = 0; j < n; ++j) {
    const double* w = W + j * d;
    double z = b[j];
    for (int a = 0; a < d; ++a) z += w[a] * x[a];
    double d1, d2;
    act_d12(code, power, z, d1, d2);
    const double P = d1 * d2;
    // sigma' sigma'' below the normal range while neither factor is 0 (a unit saturated past
    // sigma' ~ 1e-154): its term P u^3 ~ sigma''/sigma'^2 is lost to underflow, so R is not trustworthy
    if (fabs(P) < 2.2250738585072014e-308 && d1 != 0.0 && d2 != 0.0) {
      *ricci = NAN;
      return;
    }
    double u[MAXD];
    double uu = 0.0;
    for (int i = 0; i < d; ++i) {  // forward substitution L u = w
      double s = w[i];
      for (int m = 0; m < i; ++m) s -= L[i][m] * u[m];
      u[i] = s / L[i][i];
      uu += u[i] * u[i];
    }
    for (int a = 0; a < d; ++a) {
      const double pa = P * u[a];
      v[a] += pa * uu;
      for (int c = a; c < d; ++c) {
        const double pac = pa * u[c];
        for (int e = c; e < d; ++e) T[a][c][e] += pac * u[e];
      }
    }
  }
  double t2 = 0.0, v2 = 0.0;
  for (int a = 0; a < d; ++a) {
    v2 += v[a] * v[a];
    for (int c = a; c < d; ++c)
      for (int e = c; e < d; ++e) {
        const double mult = (a == c && c == e) ? 1.0 : ((a == c || c == e) ? 3.0 : 6.0);
        t2 += mult * T[a][c][e] * T[a][c][e];
      }
  }
  *ricci = (t2 - v2) * inv_n * inv_n;
}

}  // namespace fastgeom_shallow
