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
// Each entry is a directory (every *.so in it) or a library file. An entry of the run file or of
// CFAMC_PLUGIN_PATH that does not exist is named in a warning: it is almost always a typo.
std::vector<std::filesystem::path> plugin_search_path(const std::vector<std::string>& run_file_paths);

class Registry {
 public:
  // Loads every plugin found on `search_path`. A file that cannot be used (cannot be loaded, no entry
  // symbol, another ABI major, a foreign build fingerprint, a malformed description, a component name that
  // an earlier file already offers) is skipped with a one-line warning, so that junk on the path breaks
  // only the runs that need it (see find). Never throws for a bad file; a path that does not exist is
  // skipped (logged at debug level; plugin_search_path warns about the user's own entries).
  static Registry discover(const std::vector<std::filesystem::path>& search_path, const cfamc_host_api* api);

  // The component `name` of `kind`. Failure(plugin) when there is none (naming the nearest known name,
  // the search path and the skipped files with their problems), and when a skipped file would offer it
  // too: its problem, or for a duplicate both files, since the run could mean either.
  const ComponentInfo& find(cfamc_kind kind, const std::string& name) const;

  const std::vector<std::shared_ptr<PluginLibrary>>& libraries() const { return libraries_; }
  // The files skipped, in search order.
  const std::vector<SkippedPlugin>& skipped() const { return skipped_; }
  std::shared_ptr<const PluginLibrary> owner(const ComponentInfo& info) const;

 private:
  void add(std::shared_ptr<PluginLibrary> library);
  void skip(SkippedPlugin skipped);
  const SkippedPlugin* skipped_offering(cfamc_kind kind, const std::string& name) const;
  [[noreturn]] void fail_not_found(cfamc_kind kind, const std::string& name) const;

  std::vector<std::filesystem::path> search_path_;
  std::vector<std::shared_ptr<PluginLibrary>> libraries_;
  std::vector<SkippedPlugin> skipped_;
};

}  // namespace cfamc::host
