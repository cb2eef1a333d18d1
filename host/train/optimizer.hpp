// The optimisers of the run file: SGD (momentum, Nesterov), LARS as EMP-SSL uses it (a wrapper that
// rescales each weight's gradient before SGD), and AdamW. Their state is named tensors, checkpointed with
// everything else.
#pragma once

#include <vector>

#include "tensor_map.hpp"
#include "train/train_config.hpp"

namespace cfamc::host {

class Optimizer {
 public:
  Optimizer(OptimizerConfig config, TensorMap parameters);

  void zero_grad();
  // One update with learning rate `lr` (the schedule's value for this step).
  void step(double lr);
  // Updates made so far, including those before a resume (the count is part of state()).
  int64_t updates() const;
  // Momentum / moment buffers and the update count, named after their parameters.
  TensorMap state();

 private:
  void lars_rescale(at::Tensor& grad, const at::Tensor& param, double lr) const;

  OptimizerConfig config_;
  TensorMap parameters_;
  std::vector<at::Tensor> first_, second_;  // momentum (SGD/LARS) or Adam moments
  at::Tensor steps_;                        // int64 scalar on the CPU
};

}  // namespace cfamc::host
