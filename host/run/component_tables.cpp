#include "run/component_tables.hpp"

#include <algorithm>

#include "failure.hpp"
#include "log.hpp"
#include "plugins/registry.hpp"

namespace cfamc::host {
namespace {

// Keys of component tables that the host reads itself; the rest belong to the plugin.
const std::vector<std::string> kEvaluatorKeys = {"id", "control", "attacks", "bn_branch"};
const std::vector<std::string> kTrainingAttackKeys = {"bn_mode", "from_epoch", "accumulate_weight_grads"};
const std::vector<std::string> kBackboneKeys = {"sync_bn"};

// The `plugin = "..."` of a component table.
const toml::node& plugin_node(const toml::table& table, const std::string& label, const RunFile& run_file) {
  const toml::node* node = table.get("plugin");
  if (node == nullptr) {
    fail(ExitCode::usage, run_file.file + ": [" + label + "] needs plugin = \"<name>\" (cfamc-host --list-plugins)");
  }
  if (!node->is_string()) {
    fail(ExitCode::usage, location_of(*node, run_file.file) + ": " + label + ".plugin: expected a string");
  }
  return *node;
}

// `control`: false, true (the same as "untrained"), the name of a control, or a list of names. A typo
// must not silently drop a baseline, so anything else is refused, listing what is allowed.
Controls read_controls(const toml::node& node, const ComponentConfig& c, const RunFile& run_file) {
  const auto refuse = [&](const std::string& what) {
    fail(ExitCode::usage, location_of(node, run_file.file) + ": " + c.label + ".control: " + what +
                              "expected false, true (the untrained encoder), \"untrained\", \"pixels\" or a list "
                              "such as [\"untrained\", \"pixels\"], and only in [[evaluate]] entries");
  };
  if (c.role != Role::evaluator) refuse("");
  Controls controls;
  if (const auto* flag = node.as_boolean()) {
    controls.untrained = flag->get();
    return controls;
  }
  const auto add = [&](const toml::node& name) {
    if (!name.is_string()) refuse("");
    const std::string value = name.value_or(std::string());
    if (value == "untrained") {
      controls.untrained = true;
    } else if (value == "pixels") {
      controls.pixels = true;
    } else {
      refuse("no control '" + value + "'; ");
    }
  };
  if (const toml::array* names = node.as_array()) {
    for (const auto& name : *names) add(name);
  } else {
    add(node);
  }
  return controls;
}

void read_evaluator_keys(ComponentConfig& c, const toml::table& table, const RunFile& run_file) {
  if (const toml::node* id = table.get("id"); id && (!id->is_string() || id->as_string()->get().empty())) {
    fail(ExitCode::usage, location_of(*id, run_file.file) + ": " + c.label + ".id: expected a non-empty string");
  }
  if (const toml::node* control = table.get("control")) c.controls = read_controls(*control, c, run_file);
  if (const toml::node* attacks = table.get("attacks")) {
    const toml::array* ids = attacks->as_array();
    // An empty list is homogeneous to no type in toml++, and resolved.toml writes `attacks = []`.
    if (c.role != Role::evaluator || ids == nullptr || (!ids->empty() && !ids->is_homogeneous(toml::node_type::string))) {
      fail(ExitCode::usage, location_of(*attacks, run_file.file) + ": " + c.label +
                                ".attacks: a list of [attacks.<id>] names, and only in [[evaluate]] entries");
    }
    for (const auto& id : *ids) c.attacks.push_back(id.value_or(std::string()));
  }
  if (const toml::node* branch = table.get("bn_branch")) {
    const int64_t value = branch->value_or(int64_t{-1});
    if (c.role != Role::evaluator || !branch->is_integer() || value < 0 || value > 1024) {
      fail(ExitCode::usage, location_of(*branch, run_file.file) + ": " + c.label +
                                ".bn_branch: a BatchNorm set of the backbone (0, 1, ...), and only in [[evaluate]] entries");
    }
    c.bn_branch = static_cast<int32_t>(value);
  }
}

ComponentConfig component_at(const toml::table& table, Role role, const std::string& label, const RunFile& run_file) {
  ComponentConfig c{};
  c.role = role;
  c.label = c.id = label;
  c.plugin = plugin_node(table, label, run_file).value_or(std::string());
  read_evaluator_keys(c, table, run_file);
  return c;
}

void add_evaluators(std::vector<ComponentConfig>& out, const RunFile& run_file) {
  const toml::node* node = run_file.table.get("evaluate");
  if (node == nullptr) return;
  const toml::array* entries = node->as_array();
  if (entries == nullptr || !entries->is_array_of_tables()) {
    fail(ExitCode::usage, location_of(*node, run_file.file) + ": 'evaluate' must be an array of tables ([[evaluate]])");
  }
  for (size_t i = 0; i < entries->size(); ++i) {
    const toml::table& entry = *entries->get(i)->as_table();
    ComponentConfig c = component_at(entry, Role::evaluator, "evaluate." + std::to_string(i), run_file);
    c.id = entry["id"].value_or(c.plugin);
    c.label = "evaluate." + c.id;
    for (const auto& other : out) {
      if (other.role == Role::evaluator && other.id == c.id) {
        fail(ExitCode::usage, location_of(entry, run_file.file) + ": two [[evaluate]] entries with id '" + c.id +
                                  "'; give one of them id = \"...\"");
      }
    }
    out.push_back(std::move(c));
  }
}

// The keys of `c`'s table its plugin does not declare but another plugin of the same kind does, when the
// plugin was swapped with --set: they were written for the plugin the file named. Keys given with --set
// themselves are kept, so that they are still checked.
std::vector<std::string> foreign_keys(const ComponentConfig& c, const toml::table& table, const Registry& registry,
                                      const std::vector<std::string>& reserved) {
  std::vector<std::string> out;
  if (!from_command_line(*table.get("plugin"))) return out;
  const auto declared_by = [](const ComponentInfo& info, const std::string& key) {
    return std::any_of(info.options.begin(), info.options.end(), [&](const OptionSpec& s) { return s.name == key; });
  };
  for (const auto& [key, node] : table) {
    const std::string name(key.str());
    if (from_command_line(node) || declared_by(*c.info, name) ||
        std::find(reserved.begin(), reserved.end(), name) != reserved.end()) {
      continue;
    }
    const bool foreign = std::any_of(registry.libraries().begin(), registry.libraries().end(), [&](const auto& library) {
      return std::any_of(library->components().begin(), library->components().end(), [&](const ComponentInfo& other) {
        return other.kind == c.info->kind && &other != c.info && declared_by(other, name);
      });
    });
    if (foreign) out.push_back(name);
  }
  return out;
}

toml::table without(const toml::table& table, const std::vector<std::string>& keys) {
  toml::table out = table;
  for (const auto& key : keys) out.erase(key);
  return out;
}

void warn_dropped(const ComponentConfig& c, const std::vector<std::string>& dropped) {
  if (dropped.empty()) return;
  std::string names;
  for (const auto& key : dropped) names += (names.empty() ? "" : ", ") + key;
  log(LogLevel::warn, c.label + ": plugin set to '" + c.plugin + "' by --set; dropping keys it does not declare: " + names);
}

// The host's keys of a component table, resolved into `c.host_options` and kept from the plugin.
void take_host_keys(ComponentConfig& c, const toml::table& table, const std::vector<std::string>& keys,
                    const Schema& schema, const RunFile& run_file, std::vector<std::string>& reserved) {
  toml::table host_keys;
  for (const auto& key : keys)
    if (const toml::node* value = table.get(key)) host_keys.insert(key, *value);
  c.host_options = resolve_options(host_keys, schema, c.label, run_file.file);
  reserved.insert(reserved.end(), keys.begin(), keys.end());
}

void resolve_component(ComponentConfig& c, const toml::table& table, const RunConfig& config, const RunFile& run_file,
                       const Registry& registry) {
  c.info = &registry.find(kind_of(c.role), c.plugin);
  std::vector<std::string> reserved = {"plugin"};
  if (c.role == Role::evaluator) reserved.insert(reserved.end(), kEvaluatorKeys.begin(), kEvaluatorKeys.end());
  if (c.role == Role::training_attack) take_host_keys(c, table, kTrainingAttackKeys, training_attack_schema(), run_file, reserved);
  if (c.role == Role::backbone) take_host_keys(c, table, kBackboneKeys, backbone_host_schema(), run_file, reserved);
  const std::vector<std::string> dropped = foreign_keys(c, table, registry, reserved);
  warn_dropped(c, dropped);
  c.options = resolve_options(without(table, dropped), c.info->options, c.label, run_file.file, reserved);
  for (const auto& key : reserved) c.options.erase(key);
  for (const auto& id : c.attacks) {
    if (config.named_attack(id) == nullptr && config.attack_sequence(id) == nullptr) {
      fail(ExitCode::usage, run_file.file + ": " + c.label + ".attacks names '" + id + "', but there is no [attacks." +
                                id + "] and no attack_sequences." + id);
    }
  }
}

}  // namespace

std::vector<ComponentConfig> component_places(const RunFile& run_file) {
  std::vector<ComponentConfig> out;
  constexpr std::pair<const char*, Role> kSingle[] = {
      {"backbone", Role::backbone}, {"objective", Role::objective}, {"attack", Role::training_attack}};
  for (const auto& [name, role] : kSingle) {
    if (run_file.table.get(name) != nullptr) {
      out.push_back(component_at(section_table(run_file, name), role, name, run_file));
    } else if (role != Role::training_attack) {
      fail(ExitCode::usage, run_file.file + ": missing section [" + std::string(name) + "] (with plugin = \"...\")");
    }
  }
  for (const auto& [key, node] : section_table(run_file, "attacks")) {
    const std::string id(key.str());
    const toml::table* table = node.as_table();
    if (table == nullptr) fail(ExitCode::usage, location_of(node, run_file.file) + ": attacks." + id + " must be a table");
    ComponentConfig c = component_at(*table, Role::named_attack, "attacks." + id, run_file);
    c.id = id;
    out.push_back(std::move(c));
  }
  add_evaluators(out, run_file);
  return out;
}

void resolve_components(RunConfig& config, const RunFile& run_file, const Registry& registry) {
  size_t evaluator_index = 0;
  for (auto& c : config.components) {
    const toml::table* table = nullptr;
    switch (c.role) {
      case Role::evaluator: table = run_file.table["evaluate"][evaluator_index++].as_table(); break;
      case Role::named_attack: table = section_table(run_file, "attacks")[c.id].as_table(); break;
      default: table = &section_table(run_file, c.label);
    }
    resolve_component(c, *table, config, run_file, registry);
  }
  config.training_attack();  // checks bn_mode now rather than at the first step
}

}  // namespace cfamc::host
