#include "config/run_file.hpp"

#include <fstream>
#include <sstream>

#include "config/options.hpp"
#include "failure.hpp"

namespace cfamc::host {
namespace {

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> parts;
  std::string part;
  std::istringstream in(path);
  while (std::getline(in, part, '.')) parts.push_back(part);
  return parts;
}

bool is_index(const std::string& s) {
  return !s.empty() && s.find_first_not_of("0123456789") == std::string::npos;
}

// The value an override assigns: a TOML literal when the text is one, a string otherwise.
toml::table override_value(const std::string& text) {
  try {
    return parse_literal(text);
  } catch (const std::invalid_argument&) {
  }
  toml::table out;
  out.insert("v", text);
  return out;
}

}  // namespace

void apply_override(toml::table& table, const std::string& assignment) {
  const auto eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0) {
    fail(ExitCode::usage, "--set '" + assignment + "': expected KEY=VALUE, e.g. --set attack.steps=10");
  }
  const std::string path = assignment.substr(0, eq);
  const std::vector<std::string> parts = split_path(path);
  toml::node* current = &table;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    const std::string& part = parts[i];
    if (part.empty()) fail(ExitCode::usage, "--set '" + assignment + "': empty key segment in '" + path + "'");
    if (auto* arr = current->as_array()) {
      if (!is_index(part) || std::stoul(part) >= arr->size()) {
        fail(ExitCode::usage, "--set " + path + ": '" + part + "' is not an index of the array (it has " +
                                  std::to_string(arr->size()) + " entries)");
      }
      current = arr->get(std::stoul(part));
      continue;
    }
    auto* tbl = current->as_table();
    if (tbl == nullptr) fail(ExitCode::usage, "--set " + path + ": '" + part + "' is inside a value, not a table");
    if (!tbl->contains(part)) tbl->insert(part, toml::table{});
    current = tbl->get(part);
  }
  auto* tbl = current->as_table();
  const std::string& leaf = parts.back();
  if (tbl == nullptr) {
    fail(ExitCode::usage, "--set " + path + ": '" + parts[parts.size() - 2] + "' is a value, not a table");
  }
  if (leaf.empty()) fail(ExitCode::usage, "--set '" + assignment + "': empty key segment in '" + path + "'");
  toml::table value = override_value(assignment.substr(eq + 1));
  tbl->insert_or_assign(leaf, *value.get("v"));
}

void apply_removal(toml::table& table, const std::string& path) {
  const std::vector<std::string> parts = split_path(path);
  if (parts.empty()) fail(ExitCode::usage, "--unset: expected a key, e.g. --unset attack.replays");
  toml::node* parent = &table;
  for (size_t i = 0; i + 1 < parts.size() && parent != nullptr; ++i) {
    if (auto* arr = parent->as_array()) {
      parent = is_index(parts[i]) ? arr->get(std::stoul(parts[i])) : nullptr;
    } else {
      parent = parent->as_table() ? parent->as_table()->get(parts[i]) : nullptr;
    }
  }
  const std::string& leaf = parts.back();
  bool removed = false;
  if (auto* arr = parent ? parent->as_array() : nullptr; arr && is_index(leaf) && std::stoul(leaf) < arr->size()) {
    arr->erase(arr->begin() + static_cast<std::ptrdiff_t>(std::stoul(leaf)));
    removed = true;
  } else if (auto* tbl = parent ? parent->as_table() : nullptr) {
    removed = tbl->erase(leaf) > 0;
  }
  if (!removed) fail(ExitCode::usage, "--unset " + path + ": the run file has no such key");
}

RunFile load_run_file(const std::filesystem::path& path, const std::vector<std::string>& overrides,
                      const std::vector<std::string>& removals) {
  RunFile run;
  run.file = path.string();
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(ExitCode::usage, "cannot read run file '" + run.file + "': no such file or not readable");
  std::ostringstream text;
  text << in.rdbuf();
  try {
    run.table = toml::parse(text.str(), run.file);
  } catch (const toml::parse_error& e) {
    const auto& begin = e.source().begin;
    fail(ExitCode::usage, run.file + ":" + std::to_string(begin.line) + ":" + std::to_string(begin.column) +
                              ": malformed TOML: " + std::string(e.description()));
  }
  for (const auto& key : removals) apply_removal(run.table, key);
  for (const auto& assignment : overrides) apply_override(run.table, assignment);
  return run;
}

}  // namespace cfamc::host
