#include "run/model_file.hpp"

#include <ATen/ATen.h>
#include <c10/core/GradMode.h>

#include <sstream>

#include "failure.hpp"
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
  const std::string plugin = config.find(Role::backbone)->plugin;
  if (saved_plugin != plugin) {
    fail(ExitCode::usage, file.string() + " holds a '" + saved_plugin + "' backbone (run file " +
                              (*description)["run_file"].value_or(std::string("?")) + "), but this run's [backbone] is '" +
                              plugin + "'");
  }
}

size_t load_component(Component& component, const std::string& prefix, const TensorMap& saved, const fs::path& file) {
  c10::NoGradGuard no_grad;
  TensorMap live;
  for (cfamc_tensor_role role : {CFAMC_ROLE_PARAMETER, CFAMC_ROLE_BUFFER, CFAMC_ROLE_STATE})
    for (const auto& item : component.tensors(role)) live.insert(item.key(), item.value());
  for (const auto& item : saved) {
    if (item.key().rfind(prefix + "/", 0) == 0 && !live.contains(item.key().substr(prefix.size() + 1))) {
      fail(ExitCode::usage, file.string() + " has '" + item.key() + "', which " + component.who() +
                                " lacks: a checkpoint of another network, or of other options?");
    }
  }
  for (auto& item : live) {
    const std::string name = prefix + "/" + item.key();
    if (!saved.contains(name)) {
      fail(ExitCode::usage, file.string() + " has no '" + name + "', which " + component.who() +
                                " needs: a checkpoint of another network?");
    }
    const at::Tensor& value = saved[name];
    if (value.sizes() != item.value().sizes()) {
      fail(ExitCode::usage, file.string() + ": '" + name + "' has shape " + shape_of(value) + " there but " +
                                shape_of(item.value()) + " in " + component.who());
    }
    item.value().copy_(value);
  }
  return live.size();
}

int64_t checkpoint_step(const TensorMap& saved) {
  return saved.contains("trainer/step") ? saved["trainer/step"].item<int64_t>() : 0;
}

}  // namespace cfamc::host
