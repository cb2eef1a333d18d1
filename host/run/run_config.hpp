// The run file resolved against the host's sections and the plugins' declared options: what `--validate`
// checks and what the run directory's resolved.toml records.
#pragma once

#include <cfamc/cfamc.h>

#include <optional>
#include <string>
#include <vector>

#include <toml++/toml.h>

#include "augment/view_recipe.hpp"
#include "config/options.hpp"
#include "config/run_file.hpp"
#include "data/data_config.hpp"
#include "train/train_config.hpp"

namespace cfamc::host {

class Registry;
struct ComponentInfo;

// Where a component sits in the run file, which decides what the host does with it.
enum class Role {
  backbone,         // [backbone]
  objective,        // [objective]
  training_attack,  // [attack]
  named_attack,     // [attacks.<id>]: evaluators and [[attack_schedule]] name it by id
  evaluator,        // [[evaluate]]
};
cfamc_kind kind_of(Role role);

// The baselines an evaluator also reports, each evaluated before the first step: `control` in the run file
// (false; true or "untrained"; "pixels"; or a list of the names).
struct Controls {
  bool untrained = false;  // the encoder as initialised, as "<id>_untrained"
  bool pixels = false;     // the images' raw pixels as features, as "<id>_pixels"
  bool any() const { return untrained || pixels; }
};

struct ComponentConfig {
  Role role;
  std::string label;    // "backbone", "attack", "attacks.pgd8", "evaluate.knn": where it sits, and its log prefix
  std::string id;       // the evaluator's id in summary.json; the section name otherwise
  std::string plugin;   // the component name the registry knows
  toml::table options;  // validated, defaults filled in, without the host's reserved keys
  const ComponentInfo* info = nullptr;
  Controls controls;     // evaluators: the baselines also evaluated
  std::vector<std::string> attacks;  // evaluators: ids of [attacks.<id>] to evaluate robustness under
  toml::table host_options;          // the training attack: bn_mode, from_epoch, accumulate_weight_grads
  int32_t bn_branch = 0;             // evaluators: the backbone's BatchNorm set the encoder runs with
};

// [init]: components that start from another run's checkpoint instead of their seeded initialisation.
struct InitConfig {
  std::string checkpoint;               // resolved path; empty: none
  std::vector<std::string> components;  // "backbone", "objective"
};

// [attack_sequences]: `<id> = ["apgd_ce", "apgd_t", ...]`, attacks run one after another, each on the
// images every earlier one failed to break (AutoAttack's standard evaluation). Evaluators name it like an
// attack.
struct AttackSequence {
  std::string id;
  std::vector<std::string> attacks;  // [attacks.<id>] ids, in order
};

// One entry of [[attack_schedule]]: from this epoch on, train with [attacks.<attack>] ("none": clean).
struct ScheduledAttack {
  int64_t from_epoch = 0;
  std::string attack;
};

struct RunConfig {
  std::string file;
  std::string dir;
  int64_t seed = 0;
  std::string device;     // as written: "auto", "cpu", "cuda", "cuda:1"
  std::string precision;  // as written: "auto", "bf16", "fp32"
  bool tensorboard = true;
  std::string backend;  // as written: "auto", "nccl", "gloo"
  double timeout_s = 0;
  std::vector<std::string> plugin_paths;
  DataConfig data;
  TrainConfig train;
  std::vector<ViewRecipe> views;
  InitConfig init;
  std::vector<AttackSequence> attack_sequences;
  std::vector<ScheduledAttack> attack_schedule;  // ascending from_epoch
  toml::array attack_schedule_table;             // as resolved, for resolved()
  std::vector<ComponentConfig> components;  // backbone, objective, attack (if any), evaluators, [attacks.*]
  toml::table data_table, train_table, views_table;  // as resolved, for resolved()

  const ComponentConfig* find(Role role) const;  // the first with this role
  const ComponentConfig* named_attack(const std::string& id) const;
  const AttackSequence* attack_sequence(const std::string& id) const;
  TrainingAttackConfig training_attack() const;
  // `[backbone] sync_bn`: BatchNorm statistics over the global batch in a data-parallel run.
  bool sync_batch_norm() const;
  const ViewRecipe* view(const std::string& name) const;
  // The whole run file as resolved: every default written out.
  toml::table resolved() const;
};

// The host's own sections, as declarations (documented in docs/config.md).
Schema run_section_schema();
Schema plugins_section_schema();
Schema attack_schedule_schema();
Schema init_section_schema();

// Step 1, before plugins are discovered: the sections the host reads itself, and the shape of the rest
// (unknown top-level section -> error with the nearest known one).
RunConfig resolve_host_sections(const RunFile& run_file);

// Step 2: every component table against its plugin's declaration.
void resolve_components(RunConfig& config, const RunFile& run_file, const Registry& registry);

// A component's seed: the run's seed mixed with its label, so components draw independent streams.
uint64_t component_seed(int64_t run_seed, const std::string& label);

}  // namespace cfamc::host
