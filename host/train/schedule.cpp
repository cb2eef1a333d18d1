#include "train/schedule.hpp"

#include <algorithm>
#include <cmath>

namespace cfamc::host {

double learning_rate(const ScheduleConfig& s, double base_lr, int64_t step, int64_t total_steps) {
  if (step < s.warmup_steps) return base_lr * static_cast<double>(step + 1) / static_cast<double>(s.warmup_steps);
  if (s.kind == "constant") return base_lr;
  if (s.kind == "multistep") {
    const auto passed = std::count_if(s.milestones.begin(), s.milestones.end(), [&](int64_t m) { return step >= m; });
    return base_lr * std::pow(s.gamma, static_cast<double>(passed));
  }
  const double span = static_cast<double>(std::max<int64_t>(1, total_steps - s.warmup_steps));
  const double progress = static_cast<double>(step - s.warmup_steps) / span;
  return s.min_lr + (base_lr - s.min_lr) * 0.5 * (1.0 + std::cos(M_PI * progress));
}

}  // namespace cfamc::host
