#include "plugins/registry.hpp"

#include <algorithm>
#include <cstdlib>
#include <set>
#include <sstream>

#include <boost/dll/runtime_symbol_info.hpp>
#include "failure.hpp"
#include "log.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {
namespace {

bool is_library(const fs::path& p) { return p.extension() == ".so" || p.extension() == ".dylib"; }

std::vector<fs::path> libraries_in(const fs::path& entry) {
  std::vector<fs::path> found;
  std::error_code ec;
  if (fs::is_directory(entry, ec)) {
    for (const auto& item : fs::directory_iterator(entry, ec))
      if (item.is_regular_file() && is_library(item.path())) found.push_back(item.path());
    std::sort(found.begin(), found.end());
  } else if (fs::is_regular_file(entry, ec)) {
    found.push_back(entry);
  } else {
    log(LogLevel::debug, "plugin path " + entry.string() + " does not exist; skipped");
  }
  return found;
}

// An entry the user wrote that names nothing is almost always a typo; say so once, naming its source.
void warn_if_missing(const fs::path& entry, const std::string& source) {
  std::error_code ec;
  if (!fs::exists(entry, ec)) log(LogLevel::warn, source + " entry " + entry.string() + " does not exist");
}

std::string kind_and_name(cfamc_kind kind, const std::string& name) {
  return std::string(kind_name(kind)) + " '" + name + "'";
}

}  // namespace

std::vector<fs::path> plugin_search_path(const std::vector<std::string>& run_file_paths) {
  std::vector<fs::path> path;
  for (const auto& item : run_file_paths) {
    warn_if_missing(item, "[plugins] paths");
    path.emplace_back(item);
  }
  if (const char* env = std::getenv("CFAMC_PLUGIN_PATH")) {
    std::istringstream in(env);
    std::string item;
    while (std::getline(in, item, ':')) {
      if (item.empty()) continue;
      warn_if_missing(item, "CFAMC_PLUGIN_PATH");
      path.emplace_back(item);
    }
  }
  path.push_back(boost::dll::program_location().parent_path().parent_path().native() + "/lib/cfamc/plugins");
  return path;
}

Registry Registry::discover(const std::vector<fs::path>& search_path, const cfamc_host_api* api) {
  Registry registry;
  registry.search_path_ = search_path;
  std::set<fs::path> seen;
  for (const auto& entry : search_path) {
    for (const auto& file : libraries_in(entry)) {
      std::error_code ec;
      const fs::path canonical = fs::canonical(file, ec);
      if (!seen.insert(ec ? file : canonical).second) continue;
      SkippedPlugin skipped;
      if (auto library = PluginLibrary::try_load(file, api, &skipped)) {
        registry.add(std::move(library));
      } else {
        registry.skip(std::move(skipped));
      }
    }
  }
  return registry;
}

// A library offering a component an earlier file already offers is skipped whole: which of the two a
// run file means cannot be known, and half a library is not what its author shipped.
void Registry::add(std::shared_ptr<PluginLibrary> library) {
  for (const auto& component : library->components()) {
    for (const auto& other : libraries_) {
      for (const auto& existing : other->components()) {
        if (existing.kind != component.kind || existing.name != component.name) continue;
        std::vector<ComponentName> names;
        for (const auto& c : library->components()) names.push_back({c.kind, c.name});
        skip(SkippedPlugin{library->file(),
                           "plugin " + library->file().string() + " offers " + kind_and_name(component.kind, component.name) +
                               ", which " + other->file().string() + " offers too",
                           library->name(), library->fingerprint(), std::move(names), other->file()});
        return;
      }
    }
  }
  log(LogLevel::debug, "loaded plugin " + library->name() + " " + library->version() + " from " +
                           library->file().string());
  libraries_.push_back(std::move(library));
}

void Registry::skip(SkippedPlugin skipped) {
  log(LogLevel::warn, "skipped " + skipped.problem);
  skipped_.push_back(std::move(skipped));
}

const SkippedPlugin* Registry::skipped_offering(cfamc_kind kind, const std::string& name) const {
  for (const auto& s : skipped_)
    for (const auto& c : s.components)
      if (c.kind == kind && c.name == name) return &s;
  return nullptr;
}

const ComponentInfo& Registry::find(cfamc_kind kind, const std::string& name) const {
  const ComponentInfo* found = nullptr;
  for (const auto& library : libraries_)
    for (const auto& component : library->components())
      if (component.kind == kind && component.name == name) found = &component;
  const SkippedPlugin* refused = skipped_offering(kind, name);
  if (refused == nullptr) {
    if (found == nullptr) fail_not_found(kind, name);
    return *found;
  }
  const std::string what = kind_and_name(kind, name);
  if (!refused->duplicate_of.empty() && found != nullptr) {
    fail(ExitCode::plugin, std::string("two ") + kind_name(kind) + " plugins named '" + name + "': " +
                               found->library->file().string() + " and " + refused->file.string() +
                               "; remove one from the plugin path");
  }
  if (found != nullptr) {
    fail(ExitCode::plugin, what + " is offered by " + found->library->file().string() + " and by a file that " +
                               "cannot be used; remove one from the plugin path (" + refused->problem + ")");
  }
  fail(ExitCode::plugin, what + " cannot be used: " + refused->problem);
}

void Registry::fail_not_found(cfamc_kind kind, const std::string& name) const {
  std::vector<std::string> names;
  for (const auto& library : libraries_)
    for (const auto& component : library->components())
      if (component.kind == kind) names.push_back(component.name);
  std::string message = std::string("no ") + kind_name(kind) + " plugin named '" + name + "'";
  if (auto guess = nearest(name, names)) message += "; did you mean '" + *guess + "'?";
  std::string known;
  for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
  message += " (available: " + (known.empty() ? std::string("none") : known) + "; searched:";
  for (const auto& p : search_path_) message += " " + p.string();
  if (!skipped_.empty()) {
    message += "; skipped:";
    for (const auto& s : skipped_) message += " " + s.problem + ";";
    message.pop_back();
  }
  fail(ExitCode::plugin, message + ")");
}

std::shared_ptr<const PluginLibrary> Registry::owner(const ComponentInfo& info) const {
  for (const auto& library : libraries_)
    if (library.get() == info.library) return library;
  fail(ExitCode::other, "component '" + info.name + "' belongs to no loaded library");
}

}  // namespace cfamc::host
