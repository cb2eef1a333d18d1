// The optimisers of the run file: SGD (momentum, Nesterov), LARS as EMP-SSL uses it (a wrapper that
// rescales each weight's gradient before SGD), and AdamW. Their state is named tensors, checkpointed with
// everything else.
#pragma once

#include <ATen/core/Tensor.h>

#include "train/train_config.hpp"

#include <string>
#include <utility>
#include <vector>

namespace cfamc::host {

using NamedTensors = std::vector<std::pair<std::string, at::Tensor>>;

class Optimizer {
 public:
  Optimizer(OptimizerConfig config, NamedTensors parameters);

  void zero_grad();
  // One update with learning rate `lr` (the schedule's value for this step).
  void step(double lr);
  // Momentum / moment buffers and the step count, named after their parameters.
  NamedTensors state();

 private:
  void lars_rescale(at::Tensor& grad, const at::Tensor& param, double lr) const;

  OptimizerConfig config_;
  NamedTensors parameters_;
  std::vector<at::Tensor> first_, second_;  // momentum (SGD/LARS) or Adam moments
  at::Tensor steps_;                        // int64 scalar on the CPU
};

}  // namespace cfamc::host
