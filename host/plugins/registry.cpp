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

}  // namespace

std::vector<fs::path> plugin_search_path(const std::vector<std::string>& run_file_paths) {
  std::vector<fs::path> path(run_file_paths.begin(), run_file_paths.end());
  if (const char* env = std::getenv("CFAMC_PLUGIN_PATH")) {
    std::istringstream in(env);
    std::string item;
    while (std::getline(in, item, ':'))
      if (!item.empty()) path.emplace_back(item);
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
      registry.add(PluginLibrary::load(file, api));
    }
  }
  return registry;
}

void Registry::add(std::shared_ptr<PluginLibrary> library) {
  for (const auto& component : library->components()) {
    for (const auto& other : libraries_) {
      for (const auto& existing : other->components()) {
        if (existing.kind == component.kind && existing.name == component.name) {
          fail(ExitCode::plugin, std::string("two ") + kind_name(component.kind) + " plugins named '" +
                                     component.name + "': " + other->file().string() + " and " +
                                     library->file().string() + "; remove one from the plugin path");
        }
      }
    }
  }
  log(LogLevel::debug, "loaded plugin " + library->name() + " " + library->version() + " from " +
                           library->file().string());
  libraries_.push_back(std::move(library));
}

const ComponentInfo& Registry::find(cfamc_kind kind, const std::string& name) const {
  std::vector<std::string> names;
  for (const auto& library : libraries_) {
    for (const auto& component : library->components()) {
      if (component.kind != kind) continue;
      if (component.name == name) return component;
      names.push_back(component.name);
    }
  }
  std::string message = std::string("no ") + kind_name(kind) + " plugin named '" + name + "'";
  if (auto guess = nearest(name, names)) message += "; did you mean '" + *guess + "'?";
  std::string known;
  for (const auto& n : names) known += (known.empty() ? "" : ", ") + n;
  message += " (available: " + (known.empty() ? std::string("none") : known) + "; searched:";
  for (const auto& p : search_path_) message += " " + p.string();
  fail(ExitCode::plugin, message + ")");
}

std::shared_ptr<const PluginLibrary> Registry::owner(const ComponentInfo& info) const {
  for (const auto& library : libraries_)
    if (library.get() == info.library) return library;
  fail(ExitCode::other, "component '" + info.name + "' belongs to no loaded library");
}

}  // namespace cfamc::host
