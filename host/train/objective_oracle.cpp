#include "train/objective_oracle.hpp"

#include "failure.hpp"
#include "plugins/tensor_handle.hpp"

namespace cfamc::host {

ObjectiveOracle::ObjectiveOracle(const Objective& objective, const Backbone& backbone, const TensorMap& clean)
    : objective_(objective), backbone_(backbone), clean_(clean) {}

cfamc_oracle ObjectiveOracle::get() {
  return cfamc_oracle{sizeof(cfamc_oracle), this, &ObjectiveOracle::loss, nullptr, nullptr};
}

cfamc_error* ObjectiveOracle::loss(void* self, const cfamc_named_tensors* inputs, cfamc_tensor** out) {
  auto* oracle = static_cast<ObjectiveOracle*>(self);
  ++oracle->calls_;
  try {
    *out = make_handle(oracle->objective_.loss(oracle->backbone_, oracle->clean_, to_map(inputs), CFAMC_PHASE_ATTACK).loss);
    return nullptr;
  } catch (const std::exception& e) {
    return make_error(CFAMC_ERROR_RUNTIME, e.what());
  }
}

}  // namespace cfamc::host
