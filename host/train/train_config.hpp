// The [train] section: how long, how big, which optimiser and schedule, how often to log and checkpoint.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include <toml++/toml.h>

#include "config/options.hpp"

namespace cfamc::host {

// The settings below have no defaults of their own: train_schema() declares them, once, and
// train_config_from reads every one from the resolved table (train_defaults() for code that builds one).
struct OptimizerConfig {
  std::string kind;  // sgd, lars, adamw
  double momentum;
  bool nesterov;
  double weight_decay;
  double lars_eta;
  bool lars_clip;
  bool lars_exclude_1d;  // biases and BatchNorm: no LARS scaling and no weight decay
  double beta1, beta2;
  double eps;  // not an option: the denominators' guard of LARS and AdamW
};

struct ScheduleConfig {
  std::string kind;  // cosine, constant, multistep
  int64_t warmup_steps;
  double min_lr;                    // cosine's end value
  std::vector<int64_t> milestones;  // multistep: steps at which lr *= gamma
  double gamma;
};

struct TrainConfig {
  int64_t epochs;
  int64_t steps;  // 0: epochs x steps per epoch
  int64_t batch_size;
  double lr;
  OptimizerConfig optimizer;
  ScheduleConfig schedule;
  double warmup_epochs;                  // turned into schedule.warmup_steps once steps per epoch are known
  std::vector<double> milestone_epochs;  // likewise for schedule.milestones
  int64_t log_every;
  int64_t checkpoint_every;  // steps; 0: only at the end
  int64_t keep_checkpoints;
  bool free_schedule_undivided;  // reference quirk: schedule length counts minibatches, not replays
};

// How the host runs the training attack: the [attack] keys besides `plugin`, declared by
// training_attack_schema(); all false and zero when the run has no training attack.
struct TrainingAttackConfig {
  bool eval_mode_bn;             // BatchNorm in eval mode during attack steps
  int64_t from_epoch;            // clean training before this epoch
  bool accumulate_weight_grads;  // reference quirk: attack steps' weight gradients join the update
};

Schema train_schema();
TrainConfig train_config_from(const toml::table& resolved);
// [train] with every key at its declared default.
TrainConfig train_defaults();

Schema training_attack_schema();
// The host's keys of [backbone] (besides `plugin` and the plugin's options).
Schema backbone_host_schema();
TrainingAttackConfig training_attack_config_from(const toml::table& resolved, const std::string& file);

// The most optimiser steps (minibatches) a run, its warm-up or a milestone may span: 2^32, beyond any real
// run, and small enough that steps x replays (an int32) always fits in int64, so the update count of free
// training cannot overflow into a nonsense schedule. Larger settings are usage errors.
constexpr int64_t kMaxTrainSteps = int64_t{1} << 32;

// Epoch-based settings in steps, once the number of steps per epoch is known. Both throw Failure(usage)
// naming the key when a count would exceed kMaxTrainSteps.
void set_steps_per_epoch(TrainConfig& config, int64_t steps_per_epoch);
int64_t total_steps(const TrainConfig& config, int64_t steps_per_epoch);

}  // namespace cfamc::host
