// The [train] section: how long, how big, which optimiser and schedule, how often to log and checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <toml++/toml.h>

#include "config/options.hpp"

namespace cfamc::host {

struct OptimizerConfig {
  std::string kind = "sgd";  // sgd, lars, adamw
  double momentum = 0.9;
  bool nesterov = false;
  double weight_decay = 0.0;
  double lars_eta = 0.005;
  bool lars_clip = true;
  bool lars_exclude_1d = true;  // biases and BatchNorm: no LARS scaling and no weight decay
  double beta1 = 0.9, beta2 = 0.999, eps = 1e-8;
};

struct ScheduleConfig {
  std::string kind = "cosine";  // cosine, constant, multistep
  int64_t warmup_steps = 0;
  double min_lr = 0.0;              // cosine's end value
  std::vector<int64_t> milestones;  // multistep: steps at which lr *= gamma
  double gamma = 0.1;
};

struct TrainConfig {
  int64_t epochs = 1;
  int64_t steps = 0;  // 0: epochs x steps per epoch
  int64_t batch_size = 100;
  double lr = 0.3;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  double warmup_epochs = 0;             // turned into schedule.warmup_steps once steps per epoch are known
  std::vector<double> milestone_epochs;  // likewise for schedule.milestones
  int64_t log_every = 10;
  int64_t checkpoint_every = 0;  // steps; 0: only at the end
  int64_t keep_checkpoints = 2;
  bool free_schedule_undivided = false;  // reference quirk: schedule length counts minibatches, not replays
};

Schema train_schema();
TrainConfig train_config_from(const toml::table& resolved);

// Epoch-based settings in steps, once the number of steps per epoch is known.
void set_steps_per_epoch(TrainConfig& config, int64_t steps_per_epoch);
int64_t total_steps(const TrainConfig& config, int64_t steps_per_epoch);

}  // namespace cfamc::host
