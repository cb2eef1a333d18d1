#include "plugins/library.hpp"

#include <dlfcn.h>

#include <stdexcept>
#include <system_error>

#include "failure.hpp"

namespace cfamc::host {
namespace {

std::string major_minor(const std::string& version) {
  const auto first = version.find('.');
  if (first == std::string::npos) return version;
  const auto second = version.find('.', first + 1);
  return version.substr(0, second);
}

std::string major_of(const std::string& version) { return version.substr(0, version.find('.')); }

// The size each kind's table must at least have in ABI 1.0, and its functions that may not be NULL.
size_t required_vtable_size(cfamc_kind kind) {
  switch (kind) {
    case CFAMC_KIND_BACKBONE: return offsetof(cfamc_backbone_vtable, forward) + sizeof(void*);
    case CFAMC_KIND_OBJECTIVE: return offsetof(cfamc_objective_vtable, loss) + sizeof(void*);
    case CFAMC_KIND_ATTACK: return offsetof(cfamc_attack_vtable, perturb) + sizeof(void*);
    case CFAMC_KIND_EVALUATOR: return offsetof(cfamc_evaluator_vtable, evaluate) + sizeof(void*);
  }
  return 0;
}

bool required_functions_present(cfamc_kind kind, const void* vtable) {
  const auto* common = static_cast<const cfamc_component_vtable*>(vtable);
  if (!common->create || !common->destroy) return false;
  switch (kind) {
    case CFAMC_KIND_BACKBONE: {
      const auto* t = static_cast<const cfamc_backbone_vtable*>(vtable);
      return t->feature_dim && t->num_branches && t->forward;
    }
    case CFAMC_KIND_OBJECTIVE: {
      const auto* t = static_cast<const cfamc_objective_vtable*>(vtable);
      return t->view_groups && t->attacked_inputs && t->loss;
    }
    case CFAMC_KIND_ATTACK: {
      const auto* t = static_cast<const cfamc_attack_vtable*>(vtable);
      return t->replays && t->perturb;
    }
    case CFAMC_KIND_EVALUATOR: return static_cast<const cfamc_evaluator_vtable*>(vtable)->evaluate != nullptr;
  }
  return false;
}

std::string text_or(const char* s, const char* fallback) { return s ? s : fallback; }

}  // namespace

std::string Fingerprint::describe() const {
  if (torch_version.empty()) return "no LibTorch";
  return "LibTorch " + torch_version + ", CUDA " + cuda_version + ", C++11 ABI " + std::to_string(cxx11_abi);
}

const Fingerprint& host_fingerprint() {
  // The LibTorch version and CUDA flavour come from the CMake configuration that found LibTorch.
  static const Fingerprint fingerprint{CFAMC_TORCH_VERSION, CFAMC_TORCH_CUDA_VERSION, _GLIBCXX_USE_CXX11_ABI};
  return fingerprint;
}

std::string fingerprint_mismatch(const Fingerprint& plugin, const Fingerprint& host) {
  if (plugin.torch_version.empty()) return "";
  if (major_minor(plugin.torch_version) != major_minor(host.torch_version)) return "LibTorch version differs";
  if ((plugin.cuda_version == "none") != (host.cuda_version == "none")) return "CUDA support differs";
  if (major_of(plugin.cuda_version) != major_of(host.cuda_version)) return "CUDA major version differs";
  if (plugin.cxx11_abi != host.cxx11_abi) return "C++11 ABI flag differs";
  return "";
}

const char* kind_name(cfamc_kind kind) {
  switch (kind) {
    case CFAMC_KIND_BACKBONE: return "backbone";
    case CFAMC_KIND_OBJECTIVE: return "objective";
    case CFAMC_KIND_ATTACK: return "attack";
    case CFAMC_KIND_EVALUATOR: return "evaluator";
  }
  return "unknown";
}

std::shared_ptr<PluginLibrary> PluginLibrary::load(const std::filesystem::path& file, const cfamc_host_api* api) {
  SkippedPlugin skipped;
  auto plugin = try_load(file, api, &skipped);
  if (!plugin) fail(ExitCode::plugin, skipped.problem);
  return plugin;
}

std::shared_ptr<PluginLibrary> PluginLibrary::try_load(const std::filesystem::path& file, const cfamc_host_api* api,
                                                       SkippedPlugin* skipped) {
  std::shared_ptr<PluginLibrary> plugin(new PluginLibrary());
  plugin->file_ = file;
  std::string problem;
  try {
    plugin->open(api);
    return plugin;
  } catch (const std::exception& e) {
    problem = e.what();
  }
  // What was read before the refusal stays useful: a run asking for one of these names learns why it
  // cannot have it.
  *skipped = SkippedPlugin{file, problem, plugin->name_, plugin->fingerprint_, plugin->names_, {}};
  return nullptr;
}

void PluginLibrary::open(const cfamc_host_api* api) {
  const std::string where = "plugin " + file_.string();
  // RTLD_NODELETE: tensors and autograd nodes made by plugin code may outlive every handle we hold.
  const auto mode = static_cast<boost::dll::load_mode::type>(boost::dll::load_mode::rtld_now |
                                                             boost::dll::load_mode::rtld_local | RTLD_NODELETE);
  boost::dll::fs::error_code ec;
  library_.load(boost::dll::fs::path(file_), mode, ec);
  if (ec) {
    const char* detail = dlerror();
    fail(ExitCode::plugin, where + ": cannot load: " + (detail ? std::string(detail) : ec.message()));
  }
  if (!library_.has(CFAMC_PLUGIN_ENTRY_SYMBOL)) {
    for (int major = 0; major < 10; ++major) {
      const std::string other = "cfamc_plugin_entry_v" + std::to_string(major);
      if (major != CFAMC_ABI_MAJOR && library_.has(other)) {
        fail(ExitCode::plugin, where + ": built for plugin ABI v" + std::to_string(major) + " (exports " + other +
                                   "); this host speaks ABI v" + std::to_string(CFAMC_ABI_MAJOR));
      }
    }
    fail(ExitCode::plugin, where + ": not a cfamc plugin (no " CFAMC_PLUGIN_ENTRY_SYMBOL " symbol)");
  }
  auto entry = library_.get<const cfamc_plugin_desc*(const cfamc_host_api*)>(CFAMC_PLUGIN_ENTRY_SYMBOL);
  const cfamc_plugin_desc* desc = entry(api);
  if (desc == nullptr || desc->struct_size < offsetof(cfamc_plugin_desc, num_components) + sizeof(size_t)) {
    fail(ExitCode::plugin, where + ": its entry point returned no usable description");
  }
  if (desc->abi_major != CFAMC_ABI_MAJOR) {
    fail(ExitCode::plugin, where + ": describes itself as plugin ABI v" + std::to_string(desc->abi_major) +
                               "; this host speaks ABI v" + std::to_string(CFAMC_ABI_MAJOR));
  }
  read_description(*desc);
}

// Kinds and names only, with no check beyond what reading them safely needs.
void PluginLibrary::read_component_names(const cfamc_plugin_desc& desc) {
  if (desc.components == nullptr) return;
  for (size_t i = 0; i < desc.num_components; ++i) {
    const cfamc_component_desc& c = desc.components[i];
    if (c.struct_size < offsetof(cfamc_component_desc, name) + sizeof(c.name) || c.name == nullptr) continue;
    if (c.kind < CFAMC_KIND_BACKBONE || c.kind > CFAMC_KIND_EVALUATOR) continue;
    names_.push_back({c.kind, c.name});
  }
}

void PluginLibrary::read_description(const cfamc_plugin_desc& desc) {
  const std::string where = "plugin " + file_.string();
  name_ = text_or(desc.name, "");
  version_ = text_or(desc.version, "");
  abi_major_ = desc.abi_major;
  abi_minor_ = desc.abi_minor;
  const cfamc_build_fingerprint& fp = desc.fingerprint;
  fingerprint_ = Fingerprint{text_or(fp.torch_version, ""), text_or(fp.cuda_version, "none"), fp.cxx11_abi};
  read_component_names(desc);
  if (name_.empty()) fail(ExitCode::plugin, where + ": its description has no name");

  const Fingerprint& theirs = *fingerprint_;
  if (const std::string why = fingerprint_mismatch(theirs, host_fingerprint()); !why.empty()) {
    fail(ExitCode::plugin, where + " ('" + name_ + "'): " + why + ": plugin built with " + theirs.describe() +
                               ", host built with " + host_fingerprint().describe() + "; rebuild the plugin");
  }
  if (desc.components == nullptr && desc.num_components > 0) {
    fail(ExitCode::plugin, where + ": its description lists components but gives none");
  }
  for (size_t i = 0; i < desc.num_components; ++i) components_.push_back(read_component(desc.components[i], where));
}

ComponentInfo PluginLibrary::read_component(const cfamc_component_desc& c, const std::string& where) const {
  const std::string cname = text_or(c.name, "");
  const std::string who = where + " component '" + cname + "'";
  if (c.struct_size < offsetof(cfamc_component_desc, vtable) + sizeof(void*) || cname.empty()) {
    fail(ExitCode::plugin, who + ": malformed component description");
  }
  if (c.kind < CFAMC_KIND_BACKBONE || c.kind > CFAMC_KIND_EVALUATOR) {
    fail(ExitCode::plugin, who + ": unknown kind " + std::to_string(static_cast<int>(c.kind)));
  }
  const auto* common = static_cast<const cfamc_component_vtable*>(c.vtable);
  if (common == nullptr || common->struct_size < required_vtable_size(c.kind) ||
      !required_functions_present(c.kind, c.vtable)) {
    fail(ExitCode::plugin, who + ": its " + kind_name(c.kind) + " table lacks required functions");
  }
  for (const auto& earlier : components_) {
    if (earlier.kind == c.kind && earlier.name == cname) fail(ExitCode::plugin, who + ": described twice");
  }
  if (c.options == nullptr && c.num_options > 0) fail(ExitCode::plugin, who + ": options missing");
  ComponentInfo info{c.kind, cname, text_or(c.summary, ""), {}, c.vtable, this};
  try {
    info.options = schema_from_decls(c.options, c.num_options);
  } catch (const std::invalid_argument& e) {
    fail(ExitCode::plugin, who + ": " + e.what());
  }
  // Defaults are checked now, so that a bad declaration is the plugin's error, not the user's.
  try {
    resolve_options(toml::table{}, [&] {
      Schema with_defaults;
      for (const auto& s : info.options)
        if (s.default_literal) with_defaults.push_back(s);
      return with_defaults;
    }(), cname, file_.string());
  } catch (const std::exception& e) {
    fail(ExitCode::plugin, who + ": bad option declaration: " + e.what());
  }
  return info;
}

}  // namespace cfamc::host
