#include "train/objective_oracle.hpp"

#include "failure.hpp"
#include "plugins/tensor_handle.hpp"

namespace cfamc::host {

ObjectiveOracle::ObjectiveOracle(const Objective& objective, const Backbone& backbone, const TensorMap& clean,
                                 bool accumulate_weight_grads)
    : objective_(objective), backbone_(backbone), clean_(clean), accumulate_(accumulate_weight_grads) {}

cfamc_oracle ObjectiveOracle::get() {
  return cfamc_oracle{sizeof(cfamc_oracle), this, &ObjectiveOracle::loss, nullptr, nullptr};
}

cfamc_error* ObjectiveOracle::loss(void* self, const cfamc_named_tensors* inputs, cfamc_tensor** out) {
  auto* oracle = static_cast<ObjectiveOracle*>(self);
  ++oracle->calls_;
  return guarded([&] {
    at::Tensor loss = oracle->objective_.loss(oracle->backbone_, oracle->clean_, to_map(inputs), CFAMC_PHASE_ATTACK).loss;
    // The graph stays for the attack's own gradient call.
    if (oracle->accumulate_ && loss.requires_grad()) loss.sum().backward({}, /*retain_graph=*/true);
    *out = make_handle(loss);
  });
}

}  // namespace cfamc::host
