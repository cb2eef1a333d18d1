// The oracle an attack maximises during pre-training: the objective's attack-phase loss, with the clean
// inputs of the current minibatch fixed.
#pragma once

#include "plugins/components.hpp"

namespace cfamc::host {

class ObjectiveOracle {
 public:
  // `accumulate_weight_grads`: the reference quirk of robust EMP-SSL — every attack step's backward also
  // adds its weight gradients to those the training step will use.
  ObjectiveOracle(const Objective& objective, const Backbone& backbone, const TensorMap& clean,
                  bool accumulate_weight_grads = false);
  // Valid while this object lives.
  cfamc_oracle get();
  int64_t calls() const { return calls_; }

 private:
  static cfamc_error* loss(void* self, const cfamc_named_tensors* inputs, cfamc_tensor** out);

  const Objective& objective_;
  const Backbone& backbone_;
  const TensorMap& clean_;
  bool accumulate_;
  int64_t calls_ = 0;
};

}  // namespace cfamc::host
