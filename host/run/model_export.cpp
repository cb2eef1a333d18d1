#include "run/model_export.hpp"

#include <map>
#include <sstream>

#include "failure.hpp"
#include "log.hpp"
#include "plugins/context.hpp"
#include "run/model_file.hpp"
#include "safetensors.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {
namespace {

std::string toml_text(const toml::node& node) {
  std::ostringstream text;
  if (const toml::table* t = node.as_table()) text << toml::json_formatter{*t};
  else if (const toml::array* a = node.as_array()) text << toml::json_formatter{*a};
  std::string compact;  // one line: metadata values are read by people as well as by code
  bool indent = false;
  for (char ch : text.str()) {
    if (ch == '\n') indent = true;
    else if (!(indent && ch == ' ')) indent = false, compact += ch;
  }
  return compact;
}

// The backbone the checkpoint describes, with the checkpoint's tensors, on the CPU.
std::unique_ptr<Backbone> rebuild_backbone(const toml::table& description, const TensorMap& saved, const fs::path& file,
                                           const Registry& registry) {
  toml::table options = *description["backbone"].as_table();
  const std::string plugin = options["plugin"].value_or(std::string());
  options.erase("plugin");
  auto backbone = instantiate<Backbone>(registry, registry.find(CFAMC_KIND_BACKBONE, plugin),
                                        ComponentSetup{"backbone", options, 0, "cpu", 0});
  load_component(*backbone, "backbone", saved, file);
  return backbone;
}

std::map<std::string, std::string> metadata_for(const toml::table& description, const Backbone& backbone,
                                                const TensorMap& saved, const fs::path& file, int32_t branch) {
  const toml::table& options = *description["backbone"].as_table();
  std::map<std::string, std::string> meta = {
      {"format", saved.contains("head/weight") ? "cfamc-classifier" : "cfamc-encoder"},
      {"backbone", options["plugin"].value_or(std::string())},
      {"backbone_options", toml_text(options)},
      {"feature_dim", std::to_string(backbone.feature_dim())},
      {"bn_branch", std::to_string(branch)},
      {"input", "float images in [0,1], NCHW; normalise with input_mean/input_std first"},
      {"input_mean", options.contains("mean") ? toml_text(*options.get("mean")) : "[]"},
      {"input_std", options.contains("std") ? toml_text(*options.get("std")) : "[]"},
      {"source_checkpoint", fs::absolute(file).lexically_normal().string()},
      {"cfamc_version", CFAMC_VERSION}};
  if (saved.contains("head/weight")) meta["num_classes"] = std::to_string(saved["head/weight"].size(0));
  return meta;
}

}  // namespace

void export_model(const ExportRequest& request) {
  std::error_code error;
  if (std::filesystem::exists(request.out, error) && !request.overwrite) {
    fail(ExitCode::usage, "export --out " + request.out.string() + " exists; choose another name, or add --overwrite");
  }
  const TensorMap saved = open_checkpoint(request.checkpoint, "export --checkpoint");
  const auto description = model_description(saved);
  if (!description || !(*description)["backbone"].is_table()) {
    fail(ExitCode::usage, "export: " + request.checkpoint.string() +
                              " does not say which network it holds (written by an older cfamc, or not by cfamc)");
  }
  std::vector<std::string> paths;
  if (const toml::array* given = (*description)["plugin_paths"].as_array())
    for (const auto& p : *given) paths.push_back(p.value_or(std::string()));
  const Registry registry = Registry::discover(plugin_search_path(paths), host_api());
  const auto backbone = rebuild_backbone(*description, saved, request.checkpoint, registry);
  const int32_t branch = request.bn_branch.value_or(static_cast<int32_t>((*description)["bn_branch"].value_or(int64_t{0})));
  if (branch < 0 || branch >= backbone->num_branches()) {
    fail(ExitCode::usage, "export --bn-branch " + std::to_string(branch) + ": " + backbone->who() + " has " +
                              std::to_string(backbone->num_branches()) + " BatchNorm set(s), numbered from 0");
  }
  TensorMap tensors = backbone->export_tensors(branch);
  if (saved.contains("head/weight")) {
    tensors.insert("fc.weight", saved["head/weight"]);
    tensors.insert("fc.bias", saved["head/bias"]);
  }
  write_safetensors(request.out, tensors, metadata_for(*description, *backbone, saved, request.checkpoint, branch));
  log(LogLevel::info, "exported " + std::to_string(tensors.size()) + " tensors of " + backbone->who() + " to " +
                          request.out.string());
}

}  // namespace cfamc::host
