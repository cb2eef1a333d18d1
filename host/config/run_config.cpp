#include "config/run_config.hpp"

#include <algorithm>

#include "failure.hpp"
#include "plugins/registry.hpp"

namespace cfamc::host {
namespace {

const std::vector<std::string> kSections = {"run",      "plugins",   "data",   "views",    "train",  "backbone",
                                            "objective", "attack",  "evaluate", "attacks", "attack_schedule"};
// Keys of component tables that the host reads itself; the rest belong to the plugin.
const std::vector<std::string> kEvaluatorKeys = {"id", "control", "attacks"};
const std::vector<std::string> kTrainingAttackKeys = {"bn_mode", "from_epoch", "accumulate_weight_grads"};

struct SectionPlace {
  const char* name;
  cfamc_kind kind;
  bool required;
};
constexpr SectionPlace kSingleComponents[] = {
    {"backbone", CFAMC_KIND_BACKBONE, true},
    {"objective", CFAMC_KIND_OBJECTIVE, true},
    {"attack", CFAMC_KIND_ATTACK, false},
};

const toml::table& section_table(const RunFile& run_file, const std::string& name) {
  static const toml::table empty;
  const toml::node* node = run_file.table.get(name);
  if (node == nullptr) return empty;
  if (const auto* t = node->as_table()) return *t;
  fail(ExitCode::usage, location_of(*node, run_file.file) + ": '" + name + "' must be a table ([" + name + "])");
}

// The `plugin = "..."` of a component table.
std::string plugin_name(const toml::table& table, const std::string& label, const RunFile& run_file) {
  const toml::node* node = table.get("plugin");
  if (node == nullptr) {
    fail(ExitCode::usage, run_file.file + ": [" + label + "] needs plugin = \"<name>\" (cfamc-host --list-plugins)");
  }
  if (!node->is_string()) {
    fail(ExitCode::usage, location_of(*node, run_file.file) + ": " + label + ".plugin: expected a string");
  }
  return node->as_string()->get();
}

ComponentConfig component_at(const toml::table& table, cfamc_kind kind, const std::string& label,
                             const RunFile& run_file) {
  ComponentConfig c{kind, label, label, plugin_name(table, label, run_file), {}, nullptr, false, {}, {}};
  if (const toml::node* id = table.get("id")) {
    if (!id->is_string() || id->as_string()->get().empty()) {
      fail(ExitCode::usage, location_of(*id, run_file.file) + ": " + label + ".id: expected a non-empty string");
    }
  }
  if (const toml::node* control = table.get("control")) {
    if (kind != CFAMC_KIND_EVALUATOR || !control->is_boolean()) {
      fail(ExitCode::usage, location_of(*control, run_file.file) + ": " + label +
                                ".control: a boolean, and only in [[evaluate]] entries");
    }
    c.control = control->as_boolean()->get();
  }
  if (const toml::node* attacks = table.get("attacks")) {
    const toml::array* ids = attacks->as_array();
    if (kind != CFAMC_KIND_EVALUATOR || ids == nullptr || !ids->is_homogeneous(toml::node_type::string)) {
      fail(ExitCode::usage, location_of(*attacks, run_file.file) + ": " + label +
                                ".attacks: a list of [attacks.<id>] names, and only in [[evaluate]] entries");
    }
    for (const auto& id : *ids) c.attacks.push_back(id.value_or(std::string()));
  }
  return c;
}

}  // namespace

Schema run_section_schema() {
  return {
      {"dir", CFAMC_OPTION_STRING, "\"runs/default\"", "the run directory (created; resolved.toml and logs go there)"},
      {"seed", CFAMC_OPTION_INT, "0", "seed of every random stream of the run"},
      {"device", CFAMC_OPTION_STRING, "\"auto\"", "\"auto\" (CUDA when present), \"cpu\", \"cuda\" or \"cuda:N\""},
  };
}

Schema training_attack_schema() {
  return {
      {"bn_mode", CFAMC_OPTION_STRING, "\"train\"", "BatchNorm mode during attack steps: \"train\" or \"eval\""},
      {"from_epoch", CFAMC_OPTION_INT, "0", "train clean before this epoch, then with the attack"},
      {"accumulate_weight_grads", CFAMC_OPTION_BOOL, "false",
       "reference quirk (robust EMP-SSL): weight gradients of every attack step join the update"},
  };
}

Schema attack_schedule_schema() {
  return {
      {"from_epoch", CFAMC_OPTION_INT, std::nullopt, "the epoch from which this entry's attack trains"},
      {"attack", CFAMC_OPTION_STRING, std::nullopt, "an [attacks.<id>] id, or \"none\" for clean training"},
  };
}

Schema plugins_section_schema() {
  return {{"paths", CFAMC_OPTION_STRING_LIST, "[]",
           "extra plugin directories or files, searched before CFAMC_PLUGIN_PATH and the installed plugins"}};
}

RunConfig resolve_host_sections(const RunFile& run_file) {
  for (const auto& [key, node] : run_file.table) {
    const std::string name(key.str());
    if (std::find(kSections.begin(), kSections.end(), name) == kSections.end()) {
      std::string message = location_of(key.source(), run_file.file) + ": unknown section '" + name + "'";
      if (auto guess = nearest(name, kSections)) message += "; did you mean '" + *guess + "'?";
      fail(ExitCode::usage, message);
    }
  }
  RunConfig config;
  config.file = run_file.file;
  const toml::table run = resolve_options(section_table(run_file, "run"), run_section_schema(), "run", run_file.file);
  config.dir = run["dir"].value_or(std::string());
  config.seed = run["seed"].value_or(int64_t{0});
  config.device = run["device"].value_or(std::string("auto"));
  const toml::table plugins =
      resolve_options(section_table(run_file, "plugins"), plugins_section_schema(), "plugins", run_file.file);
  for (const auto& path : *plugins["paths"].as_array()) config.plugin_paths.push_back(path.value_or(std::string()));
  config.data_table = resolve_options(section_table(run_file, "data"), data_schema(), "data", run_file.file);
  config.data = data_config_from(config.data_table);
  config.train_table = resolve_options(section_table(run_file, "train"), train_schema(), "train", run_file.file);
  config.train = train_config_from(config.train_table);
  for (const auto& [key, node] : section_table(run_file, "views")) {
    const std::string name(key.str());
    const toml::table* group = node.as_table();
    if (group == nullptr) {
      fail(ExitCode::usage, location_of(node, run_file.file) + ": views." + name + " must be a table ([views." + name + "])");
    }
    toml::table resolved = resolve_options(*group, view_recipe_schema(), "views." + name, run_file.file);
    config.views.push_back(view_recipe_from(name, resolved));
    config.views_table.insert(name, std::move(resolved));
  }

  for (const auto& place : kSingleComponents) {
    const toml::node* node = run_file.table.get(place.name);
    if (node == nullptr) {
      if (place.required) {
        fail(ExitCode::usage, run_file.file + ": missing section [" + std::string(place.name) + "] (with plugin = \"...\")");
      }
      continue;
    }
    config.components.push_back(component_at(section_table(run_file, place.name), place.kind, place.name, run_file));
  }
  for (const auto& [key, node] : section_table(run_file, "attacks")) {
    const std::string id(key.str());
    const toml::table* table = node.as_table();
    if (table == nullptr) fail(ExitCode::usage, location_of(node, run_file.file) + ": attacks." + id + " must be a table");
    ComponentConfig c = component_at(*table, CFAMC_KIND_ATTACK, "attacks." + id, run_file);
    c.id = id;
    config.components.push_back(std::move(c));
  }
  if (const toml::node* node = run_file.table.get("attack_schedule")) {
    const toml::array* entries = node->as_array();
    if (entries == nullptr || !entries->is_array_of_tables()) {
      fail(ExitCode::usage, location_of(*node, run_file.file) + ": 'attack_schedule' must be an array of tables ([[attack_schedule]])");
    }
    for (const auto& entry : *entries) {
      toml::table resolved = resolve_options(*entry.as_table(), attack_schedule_schema(), "attack_schedule", run_file.file);
      ScheduledAttack scheduled{resolved["from_epoch"].value_or(int64_t{0}), resolved["attack"].value_or(std::string())};
      const bool known = scheduled.attack == "none" ||
                         std::any_of(config.components.begin(), config.components.end(),
                                     [&](const ComponentConfig& c) { return c.label == "attacks." + scheduled.attack; });
      if (!known) {
        fail(ExitCode::usage, location_of(entry, run_file.file) + ": attack_schedule names '" + scheduled.attack +
                                  "', but there is no [attacks." + scheduled.attack + "]");
      }
      if (!config.attack_schedule.empty() && scheduled.from_epoch <= config.attack_schedule.back().from_epoch) {
        fail(ExitCode::usage, location_of(entry, run_file.file) + ": attack_schedule entries need increasing from_epoch");
      }
      config.attack_schedule.push_back(scheduled);
      config.attack_schedule_table.push_back(std::move(resolved));
    }
  }
  if (const toml::node* node = run_file.table.get("evaluate")) {
    const toml::array* entries = node->as_array();
    if (entries == nullptr || !entries->is_array_of_tables()) {
      fail(ExitCode::usage, location_of(*node, run_file.file) + ": 'evaluate' must be an array of tables ([[evaluate]])");
    }
    for (size_t i = 0; i < entries->size(); ++i) {
      const toml::table& entry = *entries->get(i)->as_table();
      ComponentConfig c = component_at(entry, CFAMC_KIND_EVALUATOR, "evaluate." + std::to_string(i), run_file);
      c.id = entry["id"].value_or(c.plugin);
      c.label = "evaluate." + c.id;
      for (const auto& other : config.components) {
        if (other.kind == CFAMC_KIND_EVALUATOR && other.id == c.id) {
          fail(ExitCode::usage, location_of(entry, run_file.file) + ": two [[evaluate]] entries with id '" + c.id +
                                    "'; give one of them id = \"...\"");
        }
      }
      config.components.push_back(std::move(c));
    }
  }
  return config;
}

void resolve_components(RunConfig& config, const RunFile& run_file, const Registry& registry) {
  size_t evaluator_index = 0;
  for (auto& c : config.components) {
    const toml::table* table = nullptr;
    if (c.kind == CFAMC_KIND_EVALUATOR) {
      table = run_file.table["evaluate"][evaluator_index++].as_table();
    } else if (c.label.rfind("attacks.", 0) == 0) {
      table = section_table(run_file, "attacks")[c.id].as_table();
    } else {
      table = &section_table(run_file, c.label);
    }
    c.info = &registry.find(c.kind, c.plugin);
    std::vector<std::string> reserved = {"plugin"};
    if (c.kind == CFAMC_KIND_EVALUATOR) reserved.insert(reserved.end(), kEvaluatorKeys.begin(), kEvaluatorKeys.end());
    if (c.label == "attack") {
      toml::table host_keys;
      for (const auto& key : kTrainingAttackKeys)
        if (const toml::node* value = table->get(key)) host_keys.insert(key, *value);
      c.host_options = resolve_options(host_keys, training_attack_schema(), c.label, run_file.file);
      reserved.insert(reserved.end(), kTrainingAttackKeys.begin(), kTrainingAttackKeys.end());
    }
    toml::table options = resolve_options(*table, c.info->options, c.label, run_file.file, reserved);
    for (const auto& key : reserved) options.erase(key);
    c.options = std::move(options);
    for (const auto& id : c.attacks) {
      if (config.evaluation_attack(id) == nullptr) {
        fail(ExitCode::usage, run_file.file + ": " + c.label + ".attacks names '" + id + "', but there is no [attacks." + id + "]");
      }
    }
  }
  const TrainingAttackConfig attack = config.training_attack();
  (void)attack;  // validates bn_mode now rather than at the first step
}

const ComponentConfig* RunConfig::evaluation_attack(const std::string& id) const {
  for (const auto& c : components)
    if (c.kind == CFAMC_KIND_ATTACK && c.label == "attacks." + id) return &c;
  return nullptr;
}

TrainingAttackConfig RunConfig::training_attack() const {
  TrainingAttackConfig out;
  for (const auto& c : components) {
    if (c.label != "attack") continue;
    const std::string bn = c.host_options["bn_mode"].value_or(std::string("train"));
    if (bn != "train" && bn != "eval") fail(ExitCode::usage, file + ": attack.bn_mode: \"train\" or \"eval\", not '" + bn + "'");
    out.eval_mode_bn = bn == "eval";
    out.from_epoch = c.host_options["from_epoch"].value_or(int64_t{0});
    out.accumulate_weight_grads = c.host_options["accumulate_weight_grads"].value_or(false);
  }
  return out;
}

const ViewRecipe* RunConfig::view(const std::string& name) const {
  for (const auto& v : views)
    if (v.name == name) return &v;
  return nullptr;
}

const ComponentConfig* RunConfig::find(cfamc_kind kind) const {
  for (const auto& c : components)
    if (c.kind == kind && c.label.rfind("attacks.", 0) != 0) return &c;
  return nullptr;
}

toml::table RunConfig::resolved() const {
  toml::table out;
  out.insert("run", toml::table{{"dir", dir}, {"seed", seed}, {"device", device}});
  toml::array paths;
  for (const auto& p : plugin_paths) paths.push_back(p);
  out.insert("plugins", toml::table{{"paths", paths}});
  out.insert("data", data_table);
  out.insert("train", train_table);
  if (!views_table.empty()) out.insert("views", views_table);
  toml::array evaluators;
  toml::table attacks;
  for (const auto& c : components) {
    toml::table t = c.options;
    t.insert("plugin", c.plugin);
    for (const auto& [key, value] : c.host_options) t.insert(key, value);
    if (c.kind == CFAMC_KIND_EVALUATOR) {
      t.insert("id", c.id);
      t.insert("control", c.control);
      toml::array ids;
      for (const auto& id : c.attacks) ids.push_back(id);
      t.insert("attacks", std::move(ids));
      evaluators.push_back(std::move(t));
    } else if (c.label.rfind("attacks.", 0) == 0) {
      attacks.insert(c.id, std::move(t));
    } else {
      out.insert(c.label, std::move(t));
    }
  }
  if (!evaluators.empty()) out.insert("evaluate", std::move(evaluators));
  if (!attacks.empty()) out.insert("attacks", std::move(attacks));
  if (!attack_schedule_table.empty()) out.insert("attack_schedule", attack_schedule_table);
  return out;
}

uint64_t component_seed(int64_t run_seed, const std::string& label) {
  // FNV-1a of the label, then one splitmix64 round: stable across platforms and releases.
  uint64_t h = 1469598103934665603ull;
  for (unsigned char ch : label) h = (h ^ ch) * 1099511628211ull;
  uint64_t z = static_cast<uint64_t>(run_seed) ^ h;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

}  // namespace cfamc::host
