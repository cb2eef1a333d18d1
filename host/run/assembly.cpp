#include "run/assembly.hpp"

#include "failure.hpp"

namespace cfamc::host {

Assembly assemble(const RunConfig& config, const Registry& registry, const std::string& device) {
  Assembly a;
  int64_t feature_dim = 0;
  for (const auto& c : config.components) {
    ComponentSetup setup{c.label, c.options, component_seed(config.seed, c.label), device, feature_dim};
    switch (c.kind) {
      case CFAMC_KIND_BACKBONE:
        a.backbone = instantiate<Backbone>(registry, *c.info, std::move(setup));
        feature_dim = a.backbone->feature_dim();
        break;
      case CFAMC_KIND_OBJECTIVE: a.objective = instantiate<Objective>(registry, *c.info, std::move(setup)); break;
      case CFAMC_KIND_ATTACK:
        if (c.label == "attack") a.attack = instantiate<Attack>(registry, *c.info, std::move(setup));
        else a.evaluation_attacks.emplace_back(c.id, instantiate<Attack>(registry, *c.info, std::move(setup)));
        break;
      case CFAMC_KIND_EVALUATOR:
        a.evaluators.emplace_back(&c, instantiate<Evaluator>(registry, *c.info, std::move(setup)));
        break;
    }
  }
  return a;
}

std::vector<std::pair<std::string, const Attack*>> Assembly::attacks_for(const ComponentConfig& evaluator) const {
  std::vector<std::pair<std::string, const Attack*>> out;
  for (const auto& id : evaluator.attacks)
    for (const auto& [name, attack] : evaluation_attacks)
      if (name == id) out.emplace_back(name, attack.get());
  return out;
}

std::vector<const ViewRecipe*> view_groups_of(const RunConfig& config, const Objective& objective) {
  std::vector<const ViewRecipe*> groups;
  for (const auto& name : objective.view_groups()) {
    const ViewRecipe* recipe = config.view(name);
    if (recipe == nullptr) {
      fail(ExitCode::usage, config.file + ": objective '" + objective.info().name + "' consumes view group '" + name +
                                "'; add a [views." + name + "] table");
    }
    groups.push_back(recipe);
  }
  return groups;
}

}  // namespace cfamc::host
