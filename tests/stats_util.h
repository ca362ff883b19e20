// tests/stats_util.h — Pearson's chi-square goodness-of-fit test shared by the statistical
// tests of sampling (tests/README.md, Conventions: fixed seeds, a threshold at p = 1e-9). Checked
// against table values in tests/verifier_stat_test.cc.
#ifndef SPECMOE_TESTS_STATS_UTIL_H_
#define SPECMOE_TESTS_STATS_UTIL_H_

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

namespace specmoe {

// Q(a, x) = Gamma(a, x) / Gamma(a), the regularized upper incomplete gamma function.
// For x < a + 1 the power series P(a, x) = x^a e^-x / Gamma(a + 1) * sum_n x^n / ((a+1)...(a+n))
// converges fast and Q = 1 - P; otherwise Legendre's continued fraction
//   Gamma(a, x) = x^a e^-x / (x + 1 - a - 1(1 - a) / (x + 3 - a - 2(2 - a) / (x + 5 - a - ...)))
// evaluated by the modified Lentz method gives Q directly, accurate even when it is tiny.
inline double RegularizedGammaQ(double a, double x) {
  if (x <= 0.0) return 1.0;
  const double log_prefactor = a * std::log(x) - x - std::lgamma(a);
  if (x < a + 1.0) {
    double term = 1.0 / a;
    double sum = term;
    for (int n = 1; n < 10000; ++n) {
      term *= x / (a + n);
      sum += term;
      if (term < sum * 1e-17) break;
    }
    return std::max(0.0, 1.0 - sum * std::exp(log_prefactor));
  }
  constexpr double kTiny = 1e-300;
  double b = x + 1.0 - a;  // b_0
  double c = 1.0 / kTiny;
  double d = 1.0 / b;
  double fraction = d;
  for (int i = 1; i < 10000; ++i) {
    const double an = -i * (i - a);  // a_i
    b += 2.0;                        // b_i = x + 2i + 1 - a
    d = an * d + b;
    if (std::fabs(d) < kTiny) d = kTiny;
    c = b + an / c;
    if (std::fabs(c) < kTiny) c = kTiny;
    d = 1.0 / d;
    const double delta = d * c;
    fraction *= delta;
    if (std::fabs(delta - 1.0) < 1e-16) break;
  }
  return std::exp(log_prefactor) * fraction;
}

// P(X >= statistic) for X ~ chi-square with `dof` degrees of freedom.
inline double ChiSquareSurvival(double statistic, int dof) {
  return RegularizedGammaQ(0.5 * dof, 0.5 * statistic);
}

struct ChiSquareResult {
  double statistic = 0.0;
  int dof = 0;
  double p_value = 1.0;
  int64_t impossible = 0;  // draws of zero-probability cells (p_value is then 0)
};

// Goodness of fit of `observed` counts to cell probabilities `probs` (sum 1). Cells with
// expected count < 5 are pooled into one so the chi-square approximation holds.
inline ChiSquareResult ChiSquareTest(const std::vector<int64_t>& observed,
                              const std::vector<double>& probs) {
  ChiSquareResult r;
  int64_t n = 0;
  for (int64_t o : observed) n += o;
  double pooled_expected = 0.0;
  int64_t pooled_observed = 0;
  int cells = 0;
  for (size_t i = 0; i < observed.size(); ++i) {
    const double expected = probs[i] * static_cast<double>(n);
    if (probs[i] == 0.0) {
      r.impossible += observed[i];
    } else if (expected < 5.0) {
      pooled_expected += expected;
      pooled_observed += observed[i];
    } else {
      const double diff = static_cast<double>(observed[i]) - expected;
      r.statistic += diff * diff / expected;
      ++cells;
    }
  }
  if (pooled_expected > 0.0) {
    const double diff = static_cast<double>(pooled_observed) - pooled_expected;
    r.statistic += diff * diff / pooled_expected;
    ++cells;
  }
  r.dof = std::max(1, cells - 1);
  r.p_value = r.impossible > 0 ? 0.0 : ChiSquareSurvival(r.statistic, r.dof);
  return r;
}

}  // namespace specmoe

#endif  // SPECMOE_TESTS_STATS_UTIL_H_
