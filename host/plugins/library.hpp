// One loaded plugin library: its file, its description, and the checks made before anything in it runs.
#pragma once

#include <cfamc/cfamc.h>

#include <filesystem>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include <boost/dll/shared_library.hpp>

#include "config/options.hpp"

namespace cfamc::host {

struct Fingerprint {
  std::string torch_version;  // empty: the plugin does not use LibTorch's C++ API
  std::string cuda_version;   // "13.0" or "none"
  int cxx11_abi = 0;
  std::string describe() const;
};

// What this host was built against.
const Fingerprint& host_fingerprint();

// Why `plugin` cannot be used with `host`; empty when they are compatible. Same LibTorch major.minor,
// CUDA on both sides or on neither, same CUDA major, same C++ ABI flag.
std::string fingerprint_mismatch(const Fingerprint& plugin, const Fingerprint& host);

const char* kind_name(cfamc_kind kind);

class PluginLibrary;

// A component's kind and name: what a run file asks for.
struct ComponentName {
  cfamc_kind kind;
  std::string name;
};

// A file on the plugin path that cannot be used, and why. What its description said is kept where it
// could be read (a foreign build fingerprint, a malformed table, a duplicate), so that a run needing one
// of its components can say why that component is unavailable instead of only that it is missing.
struct SkippedPlugin {
  std::filesystem::path file;
  std::string problem;                     // one line, naming the file
  std::string plugin;                      // the plugin's name, or empty when its description is unreadable
  std::optional<Fingerprint> fingerprint;  // likewise
  std::vector<ComponentName> components;   // what it would have offered
  std::filesystem::path duplicate_of;      // the file already offering one of them; empty for other problems
};

struct ComponentInfo {
  cfamc_kind kind;
  std::string name;
  std::string summary;
  Schema options;
  const void* vtable;            // the kind's table, checked for size and required functions
  const PluginLibrary* library;  // the library that holds it (which outlives it)
};

class PluginLibrary {
 public:
  // Loads `file` (RTLD_NOW | RTLD_LOCAL), calls its entry point and checks the ABI version, the build
  // fingerprint and every component table. `api` is what the plugin calls back into (the host's
  // host_api()). Throws Failure(plugin) naming the file and the problem.
  static std::shared_ptr<PluginLibrary> load(const std::filesystem::path& file, const cfamc_host_api* api);

  // The same, for discovery: a file that cannot be used gives nullptr and `*skipped` says why.
  static std::shared_ptr<PluginLibrary> try_load(const std::filesystem::path& file, const cfamc_host_api* api,
                                                 SkippedPlugin* skipped);

  const std::filesystem::path& file() const { return file_; }
  const std::string& name() const { return name_; }
  const std::string& version() const { return version_; }
  uint32_t abi_major() const { return abi_major_; }
  uint32_t abi_minor() const { return abi_minor_; }
  const Fingerprint& fingerprint() const { return *fingerprint_; }
  const std::vector<ComponentInfo>& components() const { return components_; }

 private:
  PluginLibrary() = default;
  void open(const cfamc_host_api* api);
  void read_description(const cfamc_plugin_desc& desc);
  void read_component_names(const cfamc_plugin_desc& desc);
  ComponentInfo read_component(const cfamc_component_desc& c, const std::string& where) const;

  boost::dll::shared_library library_;
  std::filesystem::path file_;
  std::string name_, version_;
  uint32_t abi_major_ = 0, abi_minor_ = 0;
  std::optional<Fingerprint> fingerprint_;  // set as soon as the description is read
  std::vector<ComponentName> names_;  // read before any check that can refuse the library
  std::vector<ComponentInfo> components_;
};

}  // namespace cfamc::host
