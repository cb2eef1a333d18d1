#include "run/assembly.hpp"

#include <algorithm>

#include "dist/world.hpp"
#include "failure.hpp"

namespace cfamc::host {
namespace {

// In a data-parallel job an attack draws for its own process's share of the images: its seed mixes in the
// rank, so that the shares' random starts differ (its state is checkpointed per process). Everything else is
// seeded alike everywhere (the weights are rank 0's anyway).
uint64_t seed_of(const ComponentConfig& c, const RunConfig& config) {
  const World* world = World::get();
  if (world == nullptr || kind_of(c.role) != CFAMC_KIND_ATTACK) return component_seed(config.seed, c.label);
  return component_seed(config.seed, c.label + "@rank" + std::to_string(world->rank()));
}

template <class K>
std::unique_ptr<K> make(const ComponentConfig& c, const RunConfig& config, const Registry& registry,
                        const std::string& device, int64_t feature_dim, StageLayout stages = {}) {
  return instantiate<K>(registry, *c.info,
                        ComponentSetup{c.label, c.options, seed_of(c, config), device, feature_dim, std::move(stages)});
}

bool in_pass(const ComponentConfig& evaluator, EvaluationPass pass) {
  switch (pass) {
    case EvaluationPass::trained: return true;
    case EvaluationPass::untrained: return evaluator.controls.untrained;
    case EvaluationPass::pixels: return evaluator.controls.pixels;
  }
  return false;
}

// Whether `evaluator` names the attack `attack_id`, itself or in one of its attack sequences.
bool names_attack(const ComponentConfig& evaluator, const std::string& attack_id, const RunConfig& config) {
  return std::any_of(evaluator.attacks.begin(), evaluator.attacks.end(), [&](const std::string& id) {
    const AttackSequence* sequence = config.attack_sequence(id);
    if (sequence == nullptr) return id == attack_id;
    return std::find(sequence->attacks.begin(), sequence->attacks.end(), attack_id) != sequence->attacks.end();
  });
}

// The trained pass makes every [attacks.<id>]; a control only those its evaluators name.
bool needed_in_pass(const std::string& attack_id, const RunConfig& config, EvaluationPass pass) {
  if (pass == EvaluationPass::trained) return true;
  return std::any_of(config.components.begin(), config.components.end(), [&](const ComponentConfig& c) {
    return c.role == Role::evaluator && in_pass(c, pass) && names_attack(c, attack_id, config);
  });
}

// Before training, not when the evaluators run after it.
void check_bn_branches(const RunConfig& config, const Backbone& backbone) {
  for (const auto& c : config.components) {
    if (c.role == Role::evaluator && c.bn_branch >= backbone.num_branches()) {
      fail(ExitCode::usage, config.file + ": " + c.label + ".bn_branch = " + std::to_string(c.bn_branch) + ", but " +
                                backbone.who() + " has " + std::to_string(backbone.num_branches()) +
                                " BatchNorm set(s), numbered from 0 (its `branches` option, where it has one)");
    }
  }
}

}  // namespace

Assembly assemble(const RunConfig& config, const Registry& registry, const std::string& device) {
  Assembly a;
  a.backbone = make<Backbone>(*config.find(Role::backbone), config, registry, device, 0);
  const int64_t feature_dim = a.backbone->feature_dim();
  a.objective =
      make<Objective>(*config.find(Role::objective), config, registry, device, feature_dim, a.backbone->stages());
  if (const ComponentConfig* attack = config.find(Role::training_attack)) {
    a.attack = make<Attack>(*attack, config, registry, device, feature_dim);
  }
  for (const auto& entry : config.attack_schedule) {
    if (entry.attack == "none" || a.named_attack(entry.attack) != nullptr) continue;
    a.named_attacks.emplace_back(entry.attack,
                                 make<Attack>(*config.named_attack(entry.attack), config, registry, device, feature_dim));
  }
  a.evaluation = assemble_evaluation(config, registry, device, feature_dim, EvaluationPass::trained);
  check_bn_branches(config, *a.backbone);
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

const Attack* Evaluation::attack(const std::string& id) const {
  for (const auto& [name, attack] : attacks)
    if (name == id) return attack.get();
  return nullptr;
}

std::vector<EvalAttack> Evaluation::attacks_for(const ComponentConfig& evaluator, const RunConfig& config) const {
  std::vector<EvalAttack> out;
  for (const auto& id : evaluator.attacks) {
    EvalAttack entry{id, attack(id), {}};
    if (const AttackSequence* sequence = config.attack_sequence(id)) {
      for (const auto& member : sequence->attacks) entry.sequence.emplace_back(member, attack(member));
    }
    out.push_back(std::move(entry));
  }
  return out;
}

TensorMap Assembly::trainable() const {
  TensorMap out;
  for (const auto& item : backbone->tensors(CFAMC_ROLE_PARAMETER)) out.insert("backbone/" + item.key(), item.value());
  for (const auto& item : objective->tensors(CFAMC_ROLE_PARAMETER)) out.insert("objective/" + item.key(), item.value());
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
