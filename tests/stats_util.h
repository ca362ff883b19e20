// tests/stats_util.h — Pearson's chi-square goodness-of-fit test for the statistical tests of
// sampling (DESIGN §8: fixed seeds, a threshold at p = 1e-9).
//
// The p-value is Q(df/2, chi2/2), the regularized upper incomplete gamma function, computed
// by its power series below a + 1 and by its continued fraction (modified Lentz) above.
#ifndef SPECMOE_TESTS_STATS_UTIL_H_
#define SPECMOE_TESTS_STATS_UTIL_H_

#include <cmath>
#include <vector>

namespace specmoe {

// Q(a, x) = Gamma(a, x) / Gamma(a).
inline double UpperRegularizedGamma(double a, double x) {
  if (x <= 0) return 1.0;
  const double log_prefix = a * std::log(x) - x - std::lgamma(a);
  if (x < a + 1) {
    // P(a, x) = x^a e^-x / Gamma(a) * sum_n x^n / (a (a+1) ... (a+n)).
    double term = 1.0 / a, sum = term;
    for (int n = 1; n < 10000 && std::fabs(term) > 1e-17 * std::fabs(sum); ++n) {
      term *= x / (a + n);
      sum += term;
    }
    return 1.0 - sum * std::exp(log_prefix);
  }
  // Continued fraction for Q(a, x).
  const double tiny = 1e-300;
  double b = x + 1 - a, c = 1 / tiny, d = 1 / b, h = d;
  for (int i = 1; i < 10000; ++i) {
    const double an = -i * (i - a);
    b += 2;
    d = an * d + b;
    if (std::fabs(d) < tiny) d = tiny;
    c = b + an / c;
    if (std::fabs(c) < tiny) c = tiny;
    d = 1 / d;
    const double delta = d * c;
    h *= delta;
    if (std::fabs(delta - 1) < 1e-16) break;
  }
  return std::exp(log_prefix) * h;
}

// p-value of observed counts against expected counts (same order, same total). Cells with
// an expected count below 5 are pooled into one cell so the chi-square law holds.
inline double ChiSquarePValue(const std::vector<double>& observed,
                              const std::vector<double>& expected) {
  double chi2 = 0, pooled_obs = 0, pooled_exp = 0;
  int cells = 0;
  for (size_t i = 0; i < expected.size(); ++i) {
    if (expected[i] < 5) {
      pooled_obs += observed[i];
      pooled_exp += expected[i];
      continue;
    }
    chi2 += (observed[i] - expected[i]) * (observed[i] - expected[i]) / expected[i];
    ++cells;
  }
  if (pooled_exp > 0) {
    chi2 += (pooled_obs - pooled_exp) * (pooled_obs - pooled_exp) / pooled_exp;
    ++cells;
  }
  if (cells < 2) return 1.0;
  return UpperRegularizedGamma((cells - 1) / 2.0, chi2 / 2.0);
}

}  // namespace specmoe

#endif  // SPECMOE_TESTS_STATS_UTIL_H_
