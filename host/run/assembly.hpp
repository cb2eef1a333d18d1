// The components of a run, created from the resolved run file in the order the ABI promises: the
// backbone first, then the others with its feature dimension.
#pragma once

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "config/run_config.hpp"
#include "plugins/components.hpp"

namespace cfamc::host {

struct Assembly {
  std::unique_ptr<Backbone> backbone;
  std::unique_ptr<Objective> objective;
  std::unique_ptr<Attack> attack;  // the training attack; null: clean training
  std::vector<std::pair<const ComponentConfig*, std::unique_ptr<Evaluator>>> evaluators;
  std::vector<std::pair<std::string, std::unique_ptr<Attack>>> evaluation_attacks;  // [attacks.<id>] by id

  // The evaluation attacks an evaluator names, by id.
  std::vector<std::pair<std::string, const Attack*>> attacks_for(const ComponentConfig& evaluator) const;
};

Assembly assemble(const RunConfig& config, const Registry& registry, const std::string& device);

// The run file's recipes of the view groups the objective consumes, in its order; Failure(usage) naming a
// group the run file lacks.
std::vector<const ViewRecipe*> view_groups_of(const RunConfig& config, const Objective& objective);

}  // namespace cfamc::host
