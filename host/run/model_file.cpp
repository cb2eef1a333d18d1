#include "run/model_file.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <sstream>

#include "failure.hpp"
#include "log.hpp"
#include "train/checkpoint.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {
namespace {

toml::table component_table(const ComponentConfig& c) {
  toml::table t = c.options;
  t.insert("plugin", c.plugin);
  return t;
}

std::string shape_of(const at::Tensor& t) { return c10::str(t.sizes()); }

// The options that differ between a checkpoint's backbone and the run file's, as "key: saved -> now". The
// memory layout changes no result, so it may differ; the normalisation, say, may not: the checkpoint's
// values would be used, and what export records would be the run file's.
std::string differing_options(const toml::table& saved, const toml::table& now) {
  std::string out;
  const auto text = [](const toml::node* node) {
    std::ostringstream s;
    if (node == nullptr) return std::string("(absent)");
    node->visit([&](const auto& value) { s << value; });
    return s.str();
  };
  toml::table all = saved;
  for (const auto& [key, value] : now) all.insert(key, value);
  for (const auto& [key, _] : all) {
    const std::string name(key.str());
    if (name == "plugin" || name == "channels_last") continue;
    const std::string was = text(saved.get(name)), is = text(now.get(name));
    if (was != is) out += (out.empty() ? "" : ", ") + name + ": " + was + " -> " + is;
  }
  return out;
}

}  // namespace

toml::table describe_model(const RunConfig& config, int32_t bn_branch) {
  toml::array paths;
  for (const auto& p : config.plugin_paths) paths.push_back(fs::absolute(p).lexically_normal().string());
  return toml::table{{"cfamc_version", CFAMC_VERSION},
                     {"run_file", config.file},
                     {"plugin_paths", std::move(paths)},
                     {"bn_branch", bn_branch},
                     {"backbone", component_table(*config.find(Role::backbone))},
                     {"objective", component_table(*config.find(Role::objective))}};
}

void add_model_description(TensorMap& tensors, const toml::table& description) {
  std::ostringstream text;
  text << description;
  const std::string bytes = text.str();
  tensors.insert(kModelDescriptionKey, at::tensor(at::ArrayRef<uint8_t>(reinterpret_cast<const uint8_t*>(bytes.data()),
                                                                        bytes.size()), at::kByte));
}

std::optional<toml::table> model_description(const TensorMap& saved) {
  if (!saved.contains(kModelDescriptionKey)) return std::nullopt;
  const at::Tensor bytes = saved[kModelDescriptionKey].to(at::kCPU).contiguous();
  const std::string text(static_cast<const char*>(bytes.data_ptr()), static_cast<size_t>(bytes.numel()));
  try {
    return toml::parse(text);
  } catch (const toml::parse_error&) {
    return std::nullopt;
  }
}

TensorMap open_checkpoint(const fs::path& file, const std::string& what) {
  std::error_code error;
  if (!fs::is_regular_file(file, error)) {
    fail(ExitCode::usage, what + ": " + file.string() + (fs::exists(file, error) ? " is not a file" : " does not exist"));
  }
  try {
    return load_checkpoint(file);
  } catch (const UnusableCheckpoint& e) {
    fail(ExitCode::data, what + ": " + e.what());
  }
}

void check_same_backbone(const TensorMap& saved, const RunConfig& config, const fs::path& file) {
  const auto description = model_description(saved);
  if (!description) return;  // older checkpoints: the tensors' names and shapes still decide
  const std::string saved_plugin = (*description)["backbone"]["plugin"].value_or(std::string("?"));
  const ComponentConfig& backbone = *config.find(Role::backbone);
  if (saved_plugin != backbone.plugin) {
    fail(ExitCode::usage, file.string() + " holds a '" + saved_plugin + "' backbone (run file " +
                              (*description)["run_file"].value_or(std::string("?")) + "), but this run's [backbone] is '" +
                              backbone.plugin + "'");
  }
  const std::string differing = differing_options(*(*description)["backbone"].as_table(), backbone.options);
  if (!differing.empty()) {
    fail(ExitCode::usage, file.string() + " holds a '" + saved_plugin + "' backbone with other options than this run's [backbone]: " +
                              differing + " (copy them from the checkpoint's run file, " +
                              (*description)["run_file"].value_or(std::string("?")) + ")");
  }
}

namespace {

TensorMap all_tensors(const Component& component) {
  TensorMap live;
  for (cfamc_tensor_role role : {CFAMC_ROLE_PARAMETER, CFAMC_ROLE_BUFFER, CFAMC_ROLE_STATE})
    for (const auto& item : component.tensors(role)) live.insert(item.key(), item.value());
  return live;
}

Component& init_component(const std::string& name, const Assembly& assembly) {
  if (name == "backbone") return *assembly.backbone;
  return *assembly.objective;
}

}  // namespace

void check_component(const Component& component, const std::string& prefix, const TensorMap& saved, const fs::path& file) {
  const TensorMap live = all_tensors(component);
  for (const auto& item : saved) {
    if (item.key().rfind(prefix + "/", 0) == 0 && !live.contains(item.key().substr(prefix.size() + 1))) {
      fail(ExitCode::usage, file.string() + " has '" + item.key() + "', which " + component.who() +
                                " lacks: a checkpoint of another network, or of other options?");
    }
  }
  for (const auto& item : live) {
    const std::string name = prefix + "/" + item.key();
    if (!saved.contains(name)) {
      fail(ExitCode::usage, file.string() + " has no '" + name + "', which " + component.who() +
                                " needs: a checkpoint of another network?");
    }
    if (saved[name].sizes() != item.value().sizes()) {
      fail(ExitCode::usage, file.string() + ": '" + name + "' has shape " + shape_of(saved[name]) + " there but " +
                                shape_of(item.value()) + " in " + component.who());
    }
  }
}

size_t load_component(Component& component, const std::string& prefix, const TensorMap& saved, const fs::path& file) {
  check_component(component, prefix, saved, file);
  c10::NoGradGuard no_grad;
  TensorMap live = all_tensors(component);
  for (auto& item : live) item.value().copy_(saved[prefix + "/" + item.key()]);
  return live.size();
}

std::optional<TensorMap> open_init_checkpoint(const RunConfig& config, const Assembly& assembly) {
  if (config.init.checkpoint.empty()) return std::nullopt;
  const fs::path file = config.init.checkpoint;
  TensorMap saved = open_checkpoint(file, config.file + ": init.checkpoint");
  check_same_backbone(saved, config, file);
  for (const auto& name : config.init.components) check_component(init_component(name, assembly), name, saved, file);
  return saved;
}

void apply_init_checkpoint(const RunConfig& config, const Assembly& assembly, const TensorMap& saved) {
  for (const auto& name : config.init.components) {
    const size_t count = load_component(init_component(name, assembly), name, saved, config.init.checkpoint);
    log(LogLevel::info, "init: " + name + " starts from " + config.init.checkpoint + " (step " +
                            std::to_string(checkpoint_step(saved)) + ", " + std::to_string(count) + " tensors)");
  }
}

int64_t checkpoint_step(const TensorMap& saved) {
  return saved.contains("trainer/step") ? saved["trainer/step"].item<int64_t>() : 0;
}

}  // namespace cfamc::host
