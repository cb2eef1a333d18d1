#include "train/train_config.hpp"

#include <cmath>
#include <limits>
#include <sstream>

#include "failure.hpp"

namespace cfamc::host {
namespace {

// The trainer multiplies the step count by an attack's replays (an int32) without a check of its own.
static_assert(kMaxTrainSteps <= std::numeric_limits<int64_t>::max() / std::numeric_limits<int32_t>::max());

// One line per broken rule, naming the key and the value: "train.lr: must be positive, got -1".
template <class T>
void require(bool ok, const std::string& key, const std::string& rule, T value) {
  if (ok) return;
  std::ostringstream given;
  given << value;
  fail(ExitCode::usage, "train." + key + ": " + rule + ", got " + given.str());
}

void check_ranges(const TrainConfig& c) {
  require(c.epochs >= 1, "epochs", "must be positive", c.epochs);
  require(c.steps >= 0, "steps", "must not be negative", c.steps);
  require(c.batch_size >= 1, "batch_size", "must be positive", c.batch_size);
  require(c.lr > 0, "lr", "must be positive", c.lr);
  require(c.log_every >= 1, "log_every", "must be positive", c.log_every);
  require(c.checkpoint_every >= 0, "checkpoint_every", "must not be negative", c.checkpoint_every);
  require(c.keep_checkpoints >= 1, "keep_checkpoints", "must be positive", c.keep_checkpoints);
  require(c.warmup_epochs >= 0, "warmup_epochs", "must not be negative", c.warmup_epochs);
  // An epoch has at least one step, so these are refused already at --validate; set_steps_per_epoch and
  // total_steps catch the products, which need the data's size.
  const std::string at_most = "must be at most " + std::to_string(kMaxTrainSteps);
  require(c.epochs <= kMaxTrainSteps, "epochs", at_most, c.epochs);
  require(c.steps <= kMaxTrainSteps, "steps", at_most, c.steps);
  require(c.warmup_epochs <= static_cast<double>(kMaxTrainSteps), "warmup_epochs", at_most, c.warmup_epochs);
  for (double m : c.milestone_epochs) {
    require(m >= 0 && m <= static_cast<double>(kMaxTrainSteps), "milestones",
            "must be between 0 and " + std::to_string(kMaxTrainSteps), m);
  }
}

template <class T>
[[noreturn]] void too_many_steps(const std::string& key, T epochs, int64_t steps_per_epoch) {
  std::ostringstream given;
  given << epochs;
  fail(ExitCode::usage, "train." + key + ": " + given.str() + " epochs of " + std::to_string(steps_per_epoch) +
                            " steps are more than " + std::to_string(kMaxTrainSteps) + " steps");
}

// `epochs` of `steps_per_epoch` steps, rounded to a whole step.
int64_t epochs_in_steps(double epochs, int64_t steps_per_epoch, const std::string& key) {
  const double steps = std::round(epochs * static_cast<double>(steps_per_epoch));
  if (!(steps <= static_cast<double>(kMaxTrainSteps))) too_many_steps(key, epochs, steps_per_epoch);
  return static_cast<int64_t>(steps);
}

}  // namespace

Schema train_schema() {
  return {
      {"epochs", CFAMC_OPTION_INT, "1", "passes over the training set"},
      {"steps", CFAMC_OPTION_INT, "0", "total optimiser steps; 0: epochs x steps per epoch"},
      {"batch_size", CFAMC_OPTION_INT, "100", "images per minibatch (before views)"},
      {"optimizer", CFAMC_OPTION_STRING, "\"lars\"", "\"sgd\", \"lars\" (EMP-SSL's LARS around SGD) or \"adamw\""},
      {"lr", CFAMC_OPTION_FLOAT, "0.3", "base learning rate"},
      {"momentum", CFAMC_OPTION_FLOAT, "0.9", "SGD / LARS momentum"},
      {"nesterov", CFAMC_OPTION_BOOL, "true", "Nesterov momentum (SGD / LARS)"},
      {"weight_decay", CFAMC_OPTION_FLOAT, "1e-4", "weight decay (decoupled for AdamW; inside LARS for LARS)"},
      {"lars_eta", CFAMC_OPTION_FLOAT, "0.005", "LARS trust coefficient"},
      {"lars_clip", CFAMC_OPTION_BOOL, "true", "LARS: local rate = min(local / lr, 1)"},
      {"lars_exclude_1d", CFAMC_OPTION_BOOL, "true", "LARS: 1-D tensors (biases, BatchNorm) get neither LARS nor weight decay"},
      {"betas", CFAMC_OPTION_FLOAT_LIST, "[0.9, 0.999]", "AdamW betas"},
      {"schedule", CFAMC_OPTION_STRING, "\"cosine\"", "\"cosine\" (per iteration, to min_lr), \"constant\" or \"multistep\""},
      {"warmup_epochs", CFAMC_OPTION_FLOAT, "0", "linear warm-up from 0, in epochs (fractions allowed)"},
      {"min_lr", CFAMC_OPTION_FLOAT, "0", "the cosine schedule's final learning rate"},
      {"milestones", CFAMC_OPTION_FLOAT_LIST, "[]", "multistep: epochs at which the rate is multiplied by gamma"},
      {"gamma", CFAMC_OPTION_FLOAT, "0.1", "multistep factor"},
      {"log_every", CFAMC_OPTION_INT, "10", "steps between lines of metrics.jsonl (and progress lines)"},
      {"checkpoint_every", CFAMC_OPTION_INT, "0", "steps between checkpoints; 0: only at the end"},
      {"keep_checkpoints", CFAMC_OPTION_INT, "2", "newest checkpoints kept"},
      {"free_schedule_undivided", CFAMC_OPTION_BOOL, "false",
       "reference quirk (CF-AMC-SSL): with m replays the schedule still spans steps, not steps x m (cosine runs past its end)"},
  };
}

TrainConfig train_config_from(const toml::table& t) {
  TrainConfig c{};
  c.epochs = resolved_value<int64_t>(t, "epochs");
  c.steps = resolved_value<int64_t>(t, "steps");
  c.batch_size = resolved_value<int64_t>(t, "batch_size");
  c.lr = resolved_value<double>(t, "lr");
  c.optimizer.kind = resolved_value<std::string>(t, "optimizer");
  c.optimizer.momentum = resolved_value<double>(t, "momentum");
  c.optimizer.nesterov = resolved_value<bool>(t, "nesterov");
  c.optimizer.weight_decay = resolved_value<double>(t, "weight_decay");
  c.optimizer.lars_eta = resolved_value<double>(t, "lars_eta");
  c.optimizer.lars_clip = resolved_value<bool>(t, "lars_clip");
  c.optimizer.lars_exclude_1d = resolved_value<bool>(t, "lars_exclude_1d");
  const toml::array* betas = t["betas"].as_array();
  if (betas == nullptr || betas->size() != 2) fail(ExitCode::usage, "train.betas: expected two numbers");
  c.optimizer.beta1 = betas->get(0)->value_or(0.0);
  c.optimizer.beta2 = betas->get(1)->value_or(0.0);
  c.optimizer.eps = 1e-8;
  c.schedule.kind = resolved_value<std::string>(t, "schedule");
  c.warmup_epochs = resolved_value<double>(t, "warmup_epochs");
  c.schedule.min_lr = resolved_value<double>(t, "min_lr");
  for (const auto& m : *t["milestones"].as_array()) c.milestone_epochs.push_back(m.value_or(0.0));
  c.schedule.gamma = resolved_value<double>(t, "gamma");
  c.log_every = resolved_value<int64_t>(t, "log_every");
  c.checkpoint_every = resolved_value<int64_t>(t, "checkpoint_every");
  c.keep_checkpoints = resolved_value<int64_t>(t, "keep_checkpoints");
  c.free_schedule_undivided = resolved_value<bool>(t, "free_schedule_undivided");

  if (c.optimizer.kind != "sgd" && c.optimizer.kind != "lars" && c.optimizer.kind != "adamw") {
    fail(ExitCode::usage, "train.optimizer: '" + c.optimizer.kind + "' is not one of sgd, lars, adamw");
  }
  if (c.schedule.kind != "cosine" && c.schedule.kind != "constant" && c.schedule.kind != "multistep") {
    fail(ExitCode::usage, "train.schedule: '" + c.schedule.kind + "' is not one of cosine, constant, multistep");
  }
  check_ranges(c);
  return c;
}

Schema backbone_host_schema() {
  return {
      {"sync_bn", CFAMC_OPTION_BOOL, "false",
       "data-parallel runs: every BatchNorm of the encoder (backbone and the objective's heads) normalises with the "
       "statistics of the global batch, so that the run computes what one process on the whole batch would"},
  };
}

Schema training_attack_schema() {
  return {
      {"bn_mode", CFAMC_OPTION_STRING, "\"train\"", "BatchNorm mode during attack steps: \"train\" or \"eval\""},
      {"from_epoch", CFAMC_OPTION_INT, "0", "train clean before this epoch, then with the attack"},
      {"accumulate_weight_grads", CFAMC_OPTION_BOOL, "false",
       "reference quirk (robust EMP-SSL): weight gradients of every attack step join the update"},
  };
}

TrainingAttackConfig training_attack_config_from(const toml::table& resolved, const std::string& file) {
  const std::string bn = resolved_value<std::string>(resolved, "bn_mode");
  if (bn != "train" && bn != "eval") fail(ExitCode::usage, file + ": attack.bn_mode: \"train\" or \"eval\", not '" + bn + "'");
  TrainingAttackConfig out{};
  out.eval_mode_bn = bn == "eval";
  out.from_epoch = resolved_value<int64_t>(resolved, "from_epoch");
  out.accumulate_weight_grads = resolved_value<bool>(resolved, "accumulate_weight_grads");
  return out;
}

TrainConfig train_defaults() { return train_config_from(resolve_options({}, train_schema(), "train", "(defaults)")); }

void set_steps_per_epoch(TrainConfig& c, int64_t steps_per_epoch) {
  c.schedule.warmup_steps = epochs_in_steps(c.warmup_epochs, steps_per_epoch, "warmup_epochs");
  c.schedule.milestones.clear();
  for (double e : c.milestone_epochs) c.schedule.milestones.push_back(epochs_in_steps(e, steps_per_epoch, "milestones"));
}

int64_t total_steps(const TrainConfig& c, int64_t steps_per_epoch) {
  if (c.steps > 0) return c.steps;
  int64_t total = 0;
  if (__builtin_mul_overflow(c.epochs, steps_per_epoch, &total) || total > kMaxTrainSteps) {
    too_many_steps("epochs", c.epochs, steps_per_epoch);
  }
  return total;
}

}  // namespace cfamc::host
