#include "run/assembly.hpp"

#include <algorithm>

#include "failure.hpp"

namespace cfamc::host {
namespace {

template <class K>
std::unique_ptr<K> make(const ComponentConfig& c, const RunConfig& config, const Registry& registry,
                        const std::string& device, int64_t feature_dim) {
  return instantiate<K>(registry, *c.info,
                        ComponentSetup{c.label, c.options, component_seed(config.seed, c.label), device, feature_dim});
}

bool in_pass(const ComponentConfig& evaluator, EvaluationPass pass) {
  switch (pass) {
    case EvaluationPass::trained: return true;
    case EvaluationPass::untrained: return evaluator.controls.untrained;
    case EvaluationPass::pixels: return evaluator.controls.pixels;
  }
  return false;
}

// The trained pass makes every [attacks.<id>]; a control only those its evaluators name.
bool needed_in_pass(const std::string& attack_id, const RunConfig& config, EvaluationPass pass) {
  if (pass == EvaluationPass::trained) return true;
  return std::any_of(config.components.begin(), config.components.end(), [&](const ComponentConfig& c) {
    return c.role == Role::evaluator && in_pass(c, pass) &&
           std::find(c.attacks.begin(), c.attacks.end(), attack_id) != c.attacks.end();
  });
}

}  // namespace

Assembly assemble(const RunConfig& config, const Registry& registry, const std::string& device) {
  Assembly a;
  a.backbone = make<Backbone>(*config.find(Role::backbone), config, registry, device, 0);
  const int64_t feature_dim = a.backbone->feature_dim();
  a.objective = make<Objective>(*config.find(Role::objective), config, registry, device, feature_dim);
  if (const ComponentConfig* attack = config.find(Role::training_attack)) {
    a.attack = make<Attack>(*attack, config, registry, device, feature_dim);
  }
  for (const auto& entry : config.attack_schedule) {
    if (entry.attack == "none" || a.named_attack(entry.attack) != nullptr) continue;
    a.named_attacks.emplace_back(entry.attack,
                                 make<Attack>(*config.named_attack(entry.attack), config, registry, device, feature_dim));
  }
  a.evaluation = assemble_evaluation(config, registry, device, feature_dim, EvaluationPass::trained);
  return a;
}

Evaluation assemble_evaluation(const RunConfig& config, const Registry& registry, const std::string& device,
                               int64_t feature_dim, EvaluationPass pass) {
  Evaluation e;
  e.pass = pass;
  for (const auto& c : config.components) {
    if (c.role == Role::named_attack && needed_in_pass(c.id, config, pass)) {
      e.attacks.emplace_back(c.id, make<Attack>(c, config, registry, device, feature_dim));
    } else if (c.role == Role::evaluator && in_pass(c, pass)) {
      e.evaluators.emplace_back(&c, make<Evaluator>(c, config, registry, device, feature_dim));
    }
  }
  return e;
}

std::string suffix_of(EvaluationPass pass) {
  switch (pass) {
    case EvaluationPass::trained: return "";
    case EvaluationPass::untrained: return "_untrained";
    case EvaluationPass::pixels: return "_pixels";
  }
  return "";
}

std::vector<std::pair<std::string, const Attack*>> Evaluation::attacks_for(const ComponentConfig& evaluator) const {
  std::vector<std::pair<std::string, const Attack*>> out;
  for (const auto& id : evaluator.attacks)
    for (const auto& [name, attack] : attacks)
      if (name == id) out.emplace_back(name, attack.get());
  return out;
}

std::vector<std::pair<const ComponentConfig*, Component*>> Assembly::checkpointed(const RunConfig& config) const {
  std::vector<std::pair<const ComponentConfig*, Component*>> out{{config.find(Role::backbone), backbone.get()},
                                                                 {config.find(Role::objective), objective.get()}};
  if (attack) out.emplace_back(config.find(Role::training_attack), attack.get());
  for (const auto& [id, named] : named_attacks) out.emplace_back(config.named_attack(id), named.get());
  return out;
}

const Attack* Assembly::named_attack(const std::string& id) const {
  for (const auto& [name, attack] : named_attacks)
    if (name == id) return attack.get();
  return nullptr;
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
