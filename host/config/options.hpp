// Declared options and their validation. The same declaration type serves the host's own sections
// ([run], [plugins]) and every plugin's table, so an option is parsed in exactly one place.
#pragma once

#include <cfamc/cfamc.h>

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include <toml++/toml.h>

#include "failure.hpp"

namespace cfamc::host {

struct OptionSpec {
  std::string name;
  cfamc_option_type type = CFAMC_OPTION_STRING;
  std::optional<std::string> default_literal;  // a TOML value literal; nullopt: required
  std::string doc;
  // NaN and +/-inf pass validation (float and float-list options only); every other option refuses them,
  // so that a typo'd `nan` fails at --validate instead of poisoning a run.
  bool accepts_nonfinite = false;
};
using Schema = std::vector<OptionSpec>;

const char* type_name(cfamc_option_type type);

// "file:line:column" of a node, or "--set" for a value that came from the command line.
std::string location_of(const toml::node& node, const std::string& file);
std::string location_of(const toml::source_region& source, const std::string& file);

// Whether `node` came from --set rather than from the run file (it has no source position).
bool from_command_line(const toml::node& node);

// The closest of `candidates` to `key` by edit distance, if close enough to be a plausible typo.
std::optional<std::string> nearest(const std::string& key, const std::vector<std::string>& candidates);

// Parses a TOML value literal ("0.3", "\"8/255\"", "[2, 10]"). Throws std::invalid_argument.
toml::table parse_literal(const std::string& literal);

// The `count` option declarations of a plugin component, starting at `decls`. Each is as large as its
// `struct_size` says (a plugin built against an older minor hands smaller ones), so the array is walked by
// that stride, and a field is read only when the size covers it. Throws std::invalid_argument.
Schema schema_from_decls(const cfamc_option_decl* decls, size_t count);

// Validates `given` (the table at `section` of `file`) against `schema`, ignoring `reserved` keys
// (`plugin`, `id`) that the host reads itself. Returns the table with defaults filled in and fractions
// ("8/255") turned into floats. Throws Failure(usage) naming the file, line, key and what was expected,
// also for a NaN or infinity that the option does not accept.
toml::table resolve_options(const toml::table& given, const Schema& schema, const std::string& section,
                            const std::string& file, const std::vector<std::string>& reserved = {});

// The value of `key` in a table resolve_options returned, where every declared key is present: the
// declaration is the one place a default lives, so readers take no fallback of their own.
template <class T>
T resolved_value(const toml::table& table, std::string_view key) {
  if (auto value = table[key].value<T>()) return *value;
  fail(ExitCode::other, "internal: '" + std::string(key) + "' is missing from a resolved table");
}

}  // namespace cfamc::host
