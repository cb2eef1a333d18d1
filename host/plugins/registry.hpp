// Discovery: every plugin library on the search path, and the components they offer by kind and name.
#pragma once

#include <filesystem>
#include <memory>
#include <string>
#include <vector>

#include "plugins/library.hpp"

namespace cfamc::host {

// Where plugins are looked for, in order: the run file's [plugins] paths, CFAMC_PLUGIN_PATH
// (colon-separated), then <dir of cfamc-host>/../lib/cfamc/plugins (the build and the install tree).
// Each entry is a directory (every *.so in it) or a library file.
std::vector<std::filesystem::path> plugin_search_path(const std::vector<std::string>& run_file_paths);

class Registry {
 public:
  // Loads every plugin found on `search_path`. Two components of the same kind and name: Failure(plugin)
  // naming both files. A path that does not exist is skipped (logged at debug level).
  static Registry discover(const std::vector<std::filesystem::path>& search_path, const cfamc_host_api* api);

  // The component `name` of `kind`; Failure(plugin) naming the kind, the name, the nearest known name
  // and the search path when there is none.
  const ComponentInfo& find(cfamc_kind kind, const std::string& name) const;

  const std::vector<std::shared_ptr<PluginLibrary>>& libraries() const { return libraries_; }
  std::shared_ptr<const PluginLibrary> owner(const ComponentInfo& info) const;

 private:
  void add(std::shared_ptr<PluginLibrary> library);

  std::vector<std::filesystem::path> search_path_;
  std::vector<std::shared_ptr<PluginLibrary>> libraries_;
};

}  // namespace cfamc::host
