// The optimisers of the run file: SGD (momentum, Nesterov), LARS as EMP-SSL uses it (a wrapper that
// rescales each weight's gradient before SGD), and AdamW. Each update is a handful of `_foreach_` calls over
// all parameters at once (on CUDA one multi-tensor kernel per call, except the two that apply LARS's per-weight
// factors, which LibTorch runs weight by weight), and nothing in it reads the device, so a CUDA step never
// waits for the host. Their state is named tensors, checkpointed with
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
  // The parameters that have a gradient this update, with their gradients and state buffers.
  struct Group {
    std::vector<at::Tensor> params, grads, first, second;
  };
  Group with_gradients() const;
  void adamw(Group& g, double lr, int64_t t) const;
  void sgd(Group& g, double lr, bool first_step) const;
  std::vector<at::Tensor> lars_rescaled(const Group& g, double lr) const;

  OptimizerConfig config_;
  TensorMap parameters_;
  std::vector<at::Tensor> first_, second_;  // momentum (SGD/LARS) or Adam moments
  at::Tensor steps_;                        // int64 scalar on the CPU
};

}  // namespace cfamc::host
