#include "train/train_config.hpp"

#include <cmath>

#include "failure.hpp"

namespace cfamc::host {

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
  if (c.epochs < 1 || c.steps < 0 || c.batch_size < 1 || c.lr <= 0 || c.log_every < 1 || c.checkpoint_every < 0 ||
      c.keep_checkpoints < 1 || c.warmup_epochs < 0) {
    fail(ExitCode::usage, "train: epochs, batch_size, lr, log_every, keep_checkpoints must be positive; steps, "
                          "checkpoint_every and warmup_epochs not negative");
  }
  return c;
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

TrainingAttackConfig training_attack_defaults() {
  return training_attack_config_from(resolve_options({}, training_attack_schema(), "attack", "(defaults)"), "(defaults)");
}

TrainConfig train_defaults() { return train_config_from(resolve_options({}, train_schema(), "train", "(defaults)")); }

void set_steps_per_epoch(TrainConfig& c, int64_t steps_per_epoch) {
  c.schedule.warmup_steps = static_cast<int64_t>(std::llround(c.warmup_epochs * static_cast<double>(steps_per_epoch)));
  c.schedule.milestones.clear();
  for (double e : c.milestone_epochs) c.schedule.milestones.push_back(static_cast<int64_t>(std::llround(e * steps_per_epoch)));
}

int64_t total_steps(const TrainConfig& c, int64_t steps_per_epoch) {
  return c.steps > 0 ? c.steps : c.epochs * steps_per_epoch;
}

}  // namespace cfamc::host
