#include "run/run_config.hpp"

#include <algorithm>
#include <filesystem>

#include "failure.hpp"
#include "run/component_tables.hpp"

namespace cfamc::host {
namespace {

const std::vector<std::string> kSections = {"run",      "plugins",   "data",   "views",    "train",  "backbone",
                                            "objective", "attack",  "evaluate", "attacks", "attack_schedule",
                                            "init",     "attack_sequences"};

// A path written in the run file ([plugins] paths, [init] checkpoint) is relative to the file's folder, so
// a run file and what it names move together; one given with --set is relative to where the command runs.
std::string plugin_path(const toml::node& entry, const std::string& run_file) {
  const std::filesystem::path path(entry.value_or(std::string()));
  if (path.is_absolute() || from_command_line(entry)) return path.string();
  return (std::filesystem::path(run_file).parent_path() / path).lexically_normal().string();
}

void read_run_and_plugins(RunConfig& config, const RunFile& run_file) {
  const toml::table run = resolve_options(section_table(run_file, "run"), run_section_schema(), "run", run_file.file);
  config.dir = resolved_value<std::string>(run, "dir");
  config.seed = resolved_value<int64_t>(run, "seed");
  config.device = resolved_value<std::string>(run, "device");
  config.precision = resolved_value<std::string>(run, "precision");
  config.tensorboard = resolved_value<bool>(run, "tensorboard");
  config.backend = resolved_value<std::string>(run, "backend");
  config.timeout_s = resolved_value<double>(run, "timeout_s");
  if (config.backend != "auto" && config.backend != "gloo" && config.backend != "nccl") {
    fail(ExitCode::usage, run_file.file + ": run.backend: \"auto\", \"nccl\" or \"gloo\", not '" + config.backend + "'");
  }
  if (!(config.timeout_s > 0)) fail(ExitCode::usage, run_file.file + ": run.timeout_s: a positive number of seconds");
  const toml::table& given = section_table(run_file, "plugins");
  resolve_options(given, plugins_section_schema(), "plugins", run_file.file);  // checks the types
  // The entries as written, not as resolved: resolving copies nodes and drops where they came from.
  if (const toml::array* paths = given["paths"].as_array()) {
    for (const auto& entry : *paths) config.plugin_paths.push_back(plugin_path(entry, run_file.file));
  }
}

void read_views(RunConfig& config, const RunFile& run_file) {
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
}

void check_schedule_entry(const RunConfig& config, const ScheduledAttack& scheduled, const toml::node& entry,
                          const std::string& file) {
  if (scheduled.attack != "none" && config.named_attack(scheduled.attack) == nullptr) {
    fail(ExitCode::usage, location_of(entry, file) + ": attack_schedule names '" + scheduled.attack +
                              "', but there is no [attacks." + scheduled.attack + "]");
  }
  if (!config.attack_schedule.empty() && scheduled.from_epoch <= config.attack_schedule.back().from_epoch) {
    fail(ExitCode::usage, location_of(entry, file) + ": attack_schedule entries need increasing from_epoch");
  }
}

void read_attack_schedule(RunConfig& config, const RunFile& run_file) {
  const toml::node* node = run_file.table.get("attack_schedule");
  if (node == nullptr) return;
  const toml::array* entries = node->as_array();
  if (entries == nullptr || !entries->is_array_of_tables()) {
    fail(ExitCode::usage, location_of(*node, run_file.file) + ": 'attack_schedule' must be an array of tables ([[attack_schedule]])");
  }
  for (const auto& entry : *entries) {
    toml::table resolved = resolve_options(*entry.as_table(), attack_schedule_schema(), "attack_schedule", run_file.file);
    const ScheduledAttack scheduled{resolved_value<int64_t>(resolved, "from_epoch"),
                                    resolved_value<std::string>(resolved, "attack")};
    check_schedule_entry(config, scheduled, entry, run_file.file);
    config.attack_schedule.push_back(scheduled);
    config.attack_schedule_table.push_back(std::move(resolved));
  }
}

void read_init(RunConfig& config, const RunFile& run_file) {
  const toml::table& given = section_table(run_file, "init");
  const toml::table resolved = resolve_options(given, init_section_schema(), "init", run_file.file);
  for (const auto& name : *resolved["components"].as_array()) {
    const std::string component = name.value_or(std::string());
    if (component != "backbone" && component != "objective") {
      fail(ExitCode::usage, run_file.file + ": init.components: '" + component +
                                "' is not a component a checkpoint starts (\"backbone\", \"objective\")");
    }
    config.init.components.push_back(component);
  }
  if (const toml::node* path = given.get("checkpoint"); path && !path->value_or(std::string()).empty()) {
    config.init.checkpoint = plugin_path(*path, run_file.file);
  }
}

// Each sequence names attacks the run file defines, and no id means two things.
void read_attack_sequences(RunConfig& config, const RunFile& run_file) {
  for (const auto& [key, node] : section_table(run_file, "attack_sequences")) {
    const std::string id(key.str());
    const toml::array* ids = node.as_array();
    const std::string where = location_of(node, run_file.file) + ": attack_sequences." + id;
    if (ids == nullptr || ids->empty() || !ids->is_homogeneous(toml::node_type::string)) {
      fail(ExitCode::usage, where + ": expected a non-empty list of [attacks.<id>] names");
    }
    if (config.named_attack(id) != nullptr) fail(ExitCode::usage, where + ": there is also an [attacks." + id + "]; use another id");
    AttackSequence sequence{id, {}};
    for (const auto& member : *ids) {
      sequence.attacks.push_back(member.value_or(std::string()));
      if (config.named_attack(sequence.attacks.back()) == nullptr) {
        fail(ExitCode::usage, where + " names '" + sequence.attacks.back() + "', but there is no [attacks." +
                                  sequence.attacks.back() + "]");
      }
    }
    config.attack_sequences.push_back(std::move(sequence));
  }
}

// `control` as a run file writes it, so that resolved.toml reads back the same.
void insert_controls(toml::table& t, const Controls& controls) {
  if (controls.untrained && controls.pixels) {
    t.insert("control", toml::array{"untrained", "pixels"});
  } else if (controls.pixels) {
    t.insert("control", "pixels");
  } else {
    t.insert("control", controls.untrained);
  }
}

}  // namespace

cfamc_kind kind_of(Role role) {
  switch (role) {
    case Role::backbone: return CFAMC_KIND_BACKBONE;
    case Role::objective: return CFAMC_KIND_OBJECTIVE;
    case Role::training_attack:
    case Role::named_attack: return CFAMC_KIND_ATTACK;
    case Role::evaluator: return CFAMC_KIND_EVALUATOR;
  }
  return CFAMC_KIND_BACKBONE;
}

const toml::table& section_table(const RunFile& run_file, const std::string& name) {
  static const toml::table empty;
  const toml::node* node = run_file.table.get(name);
  if (node == nullptr) return empty;
  if (const auto* t = node->as_table()) return *t;
  fail(ExitCode::usage, location_of(*node, run_file.file) + ": '" + name + "' must be a table ([" + name + "])");
}

Schema run_section_schema() {
  return {
      {"dir", CFAMC_OPTION_STRING, "\"runs/default\"", "the run directory (created; resolved.toml and logs go there)"},
      {"seed", CFAMC_OPTION_INT, "0", "seed of every random stream of the run"},
      {"device", CFAMC_OPTION_STRING, "\"auto\"", "\"auto\" (CUDA when present), \"cpu\", \"cuda\" or \"cuda:N\""},
      {"precision", CFAMC_OPTION_STRING, "\"auto\"",
       "\"bf16\" (autocast: convolutions and matrix products in bfloat16), \"fp32\", or \"auto\": bf16 where the device "
       "computes it natively (CUDA compute capability 8.0+, a CPU with AVX512-BF16 or AMX), fp32 elsewhere"},
      {"tensorboard", CFAMC_OPTION_BOOL, "true",
       "also write every metrics.jsonl scalar and the final evaluation as TensorBoard event files in <dir>/tensorboard/"},
      {"backend", CFAMC_OPTION_STRING, "\"auto\"",
       "data-parallel runs (launched with WORLD_SIZE > 1, e.g. by torchrun): the c10d process group, \"nccl\", "
       "\"gloo\", or \"auto\": NCCL on CUDA, Gloo on the CPU"},
      {"timeout_s", CFAMC_OPTION_FLOAT, "300",
       "data-parallel runs: how long a process waits for the others (to meet, or in one exchange) before the job "
       "stops with exit code 6; also bounds how long a hung process goes unnoticed"},
  };
}

Schema attack_schedule_schema() {
  return {
      {"from_epoch", CFAMC_OPTION_INT, std::nullopt, "the epoch from which this entry's attack trains"},
      {"attack", CFAMC_OPTION_STRING, std::nullopt, "an [attacks.<id>] id, or \"none\" for clean training"},
  };
}

Schema init_section_schema() {
  return {
      {"checkpoint", CFAMC_OPTION_STRING, "\"\"",
       "a checkpoint of another run (or a classifier artifact) whose tensors start this run's components instead of "
       "their seeded initialisation; relative to the run file's folder; \"\": none. --resume wins over it"},
      {"components", CFAMC_OPTION_STRING_LIST, "[\"backbone\"]", "which components it starts: \"backbone\", \"objective\""},
  };
}

Schema plugins_section_schema() {
  return {{"paths", CFAMC_OPTION_STRING_LIST, "[]",
           "extra plugin directories or files, searched before CFAMC_PLUGIN_PATH and the installed plugins; "
           "relative to the run file's folder (to the working directory when given with --set)"}};
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
  read_run_and_plugins(config, run_file);
  config.data_table = resolve_options(section_table(run_file, "data"), data_schema(), "data", run_file.file);
  config.data = data_config_from(config.data_table);
  config.train_table = resolve_options(section_table(run_file, "train"), train_schema(), "train", run_file.file);
  config.train = train_config_from(config.train_table);
  read_views(config, run_file);
  config.components = component_places(run_file);
  read_attack_schedule(config, run_file);
  read_init(config, run_file);
  read_attack_sequences(config, run_file);
  return config;
}

const ComponentConfig* RunConfig::named_attack(const std::string& id) const {
  for (const auto& c : components)
    if (c.role == Role::named_attack && c.id == id) return &c;
  return nullptr;
}

const AttackSequence* RunConfig::attack_sequence(const std::string& id) const {
  for (const auto& s : attack_sequences)
    if (s.id == id) return &s;
  return nullptr;
}

TrainingAttackConfig RunConfig::training_attack() const {
  const ComponentConfig* c = find(Role::training_attack);
  if (c == nullptr) return TrainingAttackConfig{};
  return training_attack_config_from(c->host_options, file);
}

bool RunConfig::sync_batch_norm() const {
  const ComponentConfig* c = find(Role::backbone);
  return c != nullptr && resolved_value<bool>(c->host_options, "sync_bn");
}

const ViewRecipe* RunConfig::view(const std::string& name) const {
  for (const auto& v : views)
    if (v.name == name) return &v;
  return nullptr;
}

const ComponentConfig* RunConfig::find(Role role) const {
  for (const auto& c : components)
    if (c.role == role) return &c;
  return nullptr;
}

toml::table RunConfig::resolved() const {
  toml::table out;
  out.insert("run", toml::table{{"dir", dir}, {"seed", seed}, {"device", device}, {"precision", precision},
                                 {"tensorboard", tensorboard}, {"backend", backend}, {"timeout_s", timeout_s}});
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
    switch (c.role) {
      case Role::evaluator: {
        t.insert("id", c.id);
        insert_controls(t, c.controls);
        toml::array ids;
        for (const auto& id : c.attacks) ids.push_back(id);
        t.insert("attacks", std::move(ids));
        t.insert("bn_branch", c.bn_branch);
        evaluators.push_back(std::move(t));
        break;
      }
      case Role::named_attack: attacks.insert(c.id, std::move(t)); break;
      default: out.insert(c.label, std::move(t));
    }
  }
  if (!evaluators.empty()) out.insert("evaluate", std::move(evaluators));
  if (!attacks.empty()) out.insert("attacks", std::move(attacks));
  if (!attack_schedule_table.empty()) out.insert("attack_schedule", attack_schedule_table);
  toml::array init_components;
  for (const auto& c : init.components) init_components.push_back(c);
  out.insert("init", toml::table{{"checkpoint", init.checkpoint}, {"components", std::move(init_components)}});
  toml::table sequences;
  for (const auto& sequence : attack_sequences) {
    toml::array ids;
    for (const auto& id : sequence.attacks) ids.push_back(id);
    sequences.insert(sequence.id, std::move(ids));
  }
  if (!sequences.empty()) out.insert("attack_sequences", std::move(sequences));
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
