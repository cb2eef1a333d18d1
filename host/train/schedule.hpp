// Learning-rate schedules, evaluated per iteration: optional linear warm-up, then cosine annealing,
// constant, or multi-step decay.
#pragma once

#include <cstdint>

#include "train/train_config.hpp"

namespace cfamc::host {

// The learning rate of step `step` (0-based) of `total_steps`.
double learning_rate(const ScheduleConfig& schedule, double base_lr, int64_t step, int64_t total_steps);

}  // namespace cfamc::host
