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
  TrainConfig c;
  c.epochs = t["epochs"].value_or(int64_t{1});
  c.steps = t["steps"].value_or(int64_t{0});
  c.batch_size = t["batch_size"].value_or(int64_t{100});
  c.lr = t["lr"].value_or(0.3);
  c.optimizer.kind = t["optimizer"].value_or(std::string("lars"));
  c.optimizer.momentum = t["momentum"].value_or(0.9);
  c.optimizer.nesterov = t["nesterov"].value_or(true);
  c.optimizer.weight_decay = t["weight_decay"].value_or(0.0);
  c.optimizer.lars_eta = t["lars_eta"].value_or(0.005);
  c.optimizer.lars_clip = t["lars_clip"].value_or(true);
  c.optimizer.lars_exclude_1d = t["lars_exclude_1d"].value_or(true);
  const toml::array* betas = t["betas"].as_array();
  if (betas == nullptr || betas->size() != 2) fail(ExitCode::usage, "train.betas: expected two numbers");
  c.optimizer.beta1 = betas->get(0)->value_or(0.9);
  c.optimizer.beta2 = betas->get(1)->value_or(0.999);
  c.schedule.kind = t["schedule"].value_or(std::string("cosine"));
  c.warmup_epochs = t["warmup_epochs"].value_or(0.0);
  c.schedule.min_lr = t["min_lr"].value_or(0.0);
  for (const auto& m : *t["milestones"].as_array()) c.milestone_epochs.push_back(m.value_or(0.0));
  c.schedule.gamma = t["gamma"].value_or(0.1);
  c.log_every = t["log_every"].value_or(int64_t{10});
  c.checkpoint_every = t["checkpoint_every"].value_or(int64_t{0});
  c.keep_checkpoints = t["keep_checkpoints"].value_or(int64_t{2});
  c.free_schedule_undivided = t["free_schedule_undivided"].value_or(false);

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

void set_steps_per_epoch(TrainConfig& c, int64_t steps_per_epoch) {
  c.schedule.warmup_steps = static_cast<int64_t>(std::llround(c.warmup_epochs * static_cast<double>(steps_per_epoch)));
  c.schedule.milestones.clear();
  for (double e : c.milestone_epochs) c.schedule.milestones.push_back(static_cast<int64_t>(std::llround(e * steps_per_epoch)));
}

int64_t total_steps(const TrainConfig& c, int64_t steps_per_epoch) {
  return c.steps > 0 ? c.steps : c.epochs * steps_per_epoch;
}

}  // namespace cfamc::host
