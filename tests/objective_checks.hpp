// Checks shared by the tests that drive objective plugins directly: the attack a training step would run on
// an objective's attacked inputs, and the running statistics of one BatchNorm set.
#pragma once

#include <catch2/catch.hpp>
#include <torch/torch.h>

#include <string>
#include <vector>

#include "make_component.hpp"
#include "plugins/components.hpp"
#include "train/objective_oracle.hpp"

namespace cfamc::test {

// Runs the host's PGD against the objective's attack-phase loss on its attacked inputs, as the training step does.
inline host::TensorMap attack_with_pgd(const host::Backbone& backbone, const host::Objective& objective,
                                       const host::TensorMap& clean) {
  auto pgd = make<host::Attack>(CFAMC_KIND_ATTACK, "pgd", "steps = 3\nrandom_start = false\nstep_size = \"2/255\"");
  host::ObjectiveOracle oracle(objective, backbone, clean);
  host::TensorMap targets;
  for (const auto& name : objective.attacked_inputs()) targets.insert(name, clean[name]);
  return pgd->perturb(oracle.get(), targets);
}

// Copies of the running means of every BatchNorm of set `set` ("<name>.<set>.running_mean") in `components`.
inline std::vector<at::Tensor> running_means(const std::vector<const host::Component*>& components, int set) {
  std::vector<at::Tensor> out;
  const std::string suffix = "." + std::to_string(set) + ".running_mean";
  for (const host::Component* c : components)
    for (const auto& item : c->tensors(CFAMC_ROLE_BUFFER))
      if (item.key().size() > suffix.size() &&
          item.key().compare(item.key().size() - suffix.size(), suffix.size(), suffix) == 0)
        out.push_back(item.value().clone());
  return out;
}

inline bool all_equal(const std::vector<at::Tensor>& a, const std::vector<at::Tensor>& b) {
  REQUIRE(a.size() == b.size());
  for (size_t i = 0; i < a.size(); ++i)
    if (!torch::equal(a[i], b[i])) return false;
  return true;
}

}  // namespace cfamc::test
