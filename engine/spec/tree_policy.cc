// TEMPORARY (replaced by the policy8 branch): static trees only.
#include "engine/spec/tree_policy.h"

namespace specmoe::engine {

CostCurve::CostCurve(std::vector<std::pair<int, double>> points) : points_(std::move(points)) {}
double CostCurve::Seconds(int) const { return 0; }
double CostCurve::Extra(int, int) const { return 0; }
void CostCurve::Observe(int, double) {}
void AcceptanceModel::Record(const StepStats&, std::span<const float>) {}
double AcceptanceModel::Calibrated(int, float q, const AcceptanceModel&) const { return q; }
TreePolicy::TreePolicy(Kind kind, CostCurve target, CostCurve draft)
    : kind_(kind), target_(std::move(target)), draft_(std::move(draft)) {}
void TreePolicy::BeginStep(int, int, int) {}
std::vector<std::vector<int>> TreePolicy::Expand(std::span<const LevelRequest> level, int) {
  std::vector<std::vector<int>> out;
  for (const LevelRequest& r : level) out.emplace_back(r.frontier_value.size(), r.max_children);
  return out;
}
double TreePolicy::ChildValue(double parent, int, float q, const AcceptanceModel&) const {
  return parent * q;
}
void TreePolicy::ObserveTarget(int, double) {}
void TreePolicy::ObserveDraft(int, double) {}
void TreePolicy::ObserveStep(const StepStats&, std::span<const float>) {}

}  // namespace specmoe::engine
