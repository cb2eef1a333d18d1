#include "config/options.hpp"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdlib>
#include <sstream>
#include <stdexcept>

#include "failure.hpp"

namespace cfamc::host {
namespace {

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diagonal = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t above = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diagonal = above;
    }
  }
  return row[b.size()];
}

// The whole of `text` as a number; nullopt otherwise.
std::optional<double> parse_number(const std::string& text) {
  char* end = nullptr;
  const double value = std::strtod(text.c_str(), &end);
  if (end == text.c_str() || std::string(end).find_first_not_of(" \t") != std::string::npos) return std::nullopt;
  return value;
}

// "8/255" -> 0.0313..., "0.5" -> 0.5 (a number that came as text, e.g. from --set over a fraction);
// nullopt for anything else.
std::optional<double> parse_fraction(const std::string& text) {
  const auto slash = text.find('/');
  if (slash == std::string::npos) return parse_number(text);
  const auto n = parse_number(text.substr(0, slash)), d = parse_number(text.substr(slash + 1));
  if (!n || !d || *d == 0) return std::nullopt;
  return *n / *d;
}

const char* node_type_name(const toml::node& node) {
  switch (node.type()) {
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a float";
    case toml::node_type::boolean: return "a boolean";
    default: return "a date/time";
  }
}

// A number for a float option: float, integer, or a fraction string.
std::optional<double> as_real(const toml::node& node) {
  if (auto v = node.as_floating_point()) return v->get();
  if (auto v = node.as_integer()) return static_cast<double>(v->get());
  if (auto v = node.as_string()) return parse_fraction(v->get());
  return std::nullopt;
}

// The value of `node` converted to `type`, or nullopt when it does not fit.
std::optional<toml::table> coerce(const toml::node& node, cfamc_option_type type) {
  toml::table out;
  switch (type) {
    case CFAMC_OPTION_BOOL:
      if (!node.is_boolean()) return std::nullopt;
      out.insert("v", node);
      break;
    case CFAMC_OPTION_INT:
      if (!node.is_integer()) return std::nullopt;
      out.insert("v", node);
      break;
    case CFAMC_OPTION_STRING:
      if (node.is_string()) {
        out.insert("v", node);
      } else if (from_command_line(node) && (node.is_number() || node.is_boolean())) {
        // `--set run.dir=2024` reads as a number; a string option takes its text.
        std::ostringstream text;
        node.visit([&](const auto& value) { text << value; });
        out.insert("v", text.str());
      } else {
        return std::nullopt;
      }
      break;
    case CFAMC_OPTION_FLOAT: {
      auto v = as_real(node);
      if (!v) return std::nullopt;
      out.insert("v", *v);
      break;
    }
    case CFAMC_OPTION_INT_LIST:
    case CFAMC_OPTION_FLOAT_LIST:
    case CFAMC_OPTION_STRING_LIST: {
      const toml::array* arr = node.as_array();
      if (!arr) return std::nullopt;
      toml::array converted;
      for (const toml::node& element : *arr) {
        if (type == CFAMC_OPTION_INT_LIST || type == CFAMC_OPTION_STRING_LIST) {
          if (type == CFAMC_OPTION_INT_LIST ? !element.is_integer() : !element.is_string()) return std::nullopt;
          converted.push_back(element);
        } else {
          auto v = as_real(element);
          if (!v) return std::nullopt;
          converted.push_back(*v);
        }
      }
      out.insert("v", std::move(converted));
      break;
    }
    default: return std::nullopt;
  }
  return out;
}

// The first NaN or infinity in a float or float-list value: the node holding it and its text.
struct NonFinite {
  const toml::node* node;
  std::string text;
};

std::optional<NonFinite> first_nonfinite(const toml::node& value) {
  auto check = [](const toml::node& node) -> std::optional<NonFinite> {
    const auto v = as_real(node);
    if (!v || std::isfinite(*v)) return std::nullopt;
    return NonFinite{&node, std::isnan(*v) ? "nan" : (*v > 0 ? "inf" : "-inf")};
  };
  const toml::array* elements = value.as_array();
  if (elements == nullptr) return check(value);
  for (const toml::node& element : *elements) {
    if (auto found = check(element)) return found;
  }
  return std::nullopt;
}

bool refuses_nonfinite(const OptionSpec& spec) {
  return !spec.accepts_nonfinite && (spec.type == CFAMC_OPTION_FLOAT || spec.type == CFAMC_OPTION_FLOAT_LIST);
}

}  // namespace

const char* type_name(cfamc_option_type type) {
  switch (type) {
    case CFAMC_OPTION_BOOL: return "boolean";
    case CFAMC_OPTION_INT: return "integer";
    case CFAMC_OPTION_FLOAT: return "float";
    case CFAMC_OPTION_STRING: return "string";
    case CFAMC_OPTION_INT_LIST: return "integer list";
    case CFAMC_OPTION_FLOAT_LIST: return "float list";
    case CFAMC_OPTION_STRING_LIST: return "string list";
  }
  return "unknown type";
}

bool from_command_line(const toml::node& node) { return node.source().begin.line == 0; }

std::string location_of(const toml::node& node, const std::string& file) { return location_of(node.source(), file); }

std::string location_of(const toml::source_region& source, const std::string& file) {
  const auto& begin = source.begin;
  if (begin.line == 0) return "--set";
  std::ostringstream out;
  out << file << ':' << begin.line << ':' << begin.column;
  return out.str();
}

std::optional<std::string> nearest(const std::string& key, const std::vector<std::string>& candidates) {
  std::optional<std::string> best;
  size_t best_distance = std::max<size_t>(2, key.size() / 3) + 1;
  for (const auto& candidate : candidates) {
    const size_t d = edit_distance(key, candidate);
    if (d < best_distance) {
      best_distance = d;
      best = candidate;
    }
  }
  return best;
}

toml::table parse_literal(const std::string& literal) {
  try {
    toml::table parsed = toml::parse("v = " + literal);
    if (parsed.size() != 1) throw std::invalid_argument("not a single value");
    return parsed;
  } catch (const toml::parse_error& e) {
    throw std::invalid_argument(std::string(e.description()));
  }
}

namespace {

// "file:3:1: unknown key 'attack.stpes'; did you mean 'steps'?" for one key.
std::string unknown_key_message(const toml::key& key, const std::string& section, const std::string& file,
                                const std::vector<std::string>& known) {
  const std::string name(key.str());
  std::string message = location_of(key.source(), file) + ": unknown key '" + section + "." + name + "'";
  if (auto guess = nearest(name, known)) return message + "; did you mean '" + *guess + "'?";
  std::string list;
  for (const auto& k : known) list += (list.empty() ? "" : ", ") + k;
  return message + " (known: " + list + ")";
}

// `node`, given for `spec`, converted to its type (a one-entry table {v = ...}); Failure(usage) at the place
// of what does not fit.
toml::table given_value(const toml::node& node, const OptionSpec& spec, const std::string& key, const std::string& file) {
  auto value = coerce(node, spec.type);
  if (!value) {
    fail(ExitCode::usage, location_of(node, file) + ": " + key + ": expected " + type_name(spec.type) +
                              (spec.type == CFAMC_OPTION_FLOAT ? " (or a fraction like \"8/255\")" : "") + ", got " +
                              node_type_name(node));
  }
  if (refuses_nonfinite(spec)) {
    if (const auto bad = first_nonfinite(node)) {
      fail(ExitCode::usage, location_of(*bad->node, file) + ": " + key + ": expected a finite number, got " + bad->text);
    }
  }
  return std::move(*value);
}

// The declared default of `spec`, converted; Failure(plugin) when the declaration itself is wrong.
toml::table default_value(const OptionSpec& spec, const std::string& key) {
  toml::table literal = parse_literal(*spec.default_literal);
  auto value = coerce(*literal.get("v"), spec.type);
  if (!value) {
    fail(ExitCode::plugin, key + ": declared default " + *spec.default_literal + " is not a " + type_name(spec.type));
  }
  if (refuses_nonfinite(spec) && first_nonfinite(*literal.get("v"))) {
    fail(ExitCode::plugin, key + ": declared default " + *spec.default_literal + " is not finite");
  }
  return std::move(*value);
}

}  // namespace

Schema schema_from_decls(const cfamc_option_decl* decls, size_t count) {
  Schema schema;
  for (size_t k = 0; k < count; ++k) {
    const cfamc_option_decl& o = decls[k];
    const bool nonfinite = (o.type & CFAMC_OPTION_ACCEPTS_NONFINITE) != 0;
    const auto type = static_cast<cfamc_option_type>(o.type & ~CFAMC_OPTION_ACCEPTS_NONFINITE);
    const bool float_type = type == CFAMC_OPTION_FLOAT || type == CFAMC_OPTION_FLOAT_LIST;
    if (o.struct_size < sizeof(cfamc_option_decl) || o.name == nullptr || type < CFAMC_OPTION_BOOL ||
        type > CFAMC_OPTION_STRING_LIST || (nonfinite && !float_type)) {
      throw std::invalid_argument("option " + std::to_string(k) + " is malformed");
    }
    OptionSpec spec{o.name, type, std::nullopt, o.doc ? o.doc : ""};
    if (o.default_value) spec.default_literal = o.default_value;
    spec.accepts_nonfinite = nonfinite;
    schema.push_back(std::move(spec));
  }
  return schema;
}

toml::table resolve_options(const toml::table& given, const Schema& schema, const std::string& section,
                            const std::string& file, const std::vector<std::string>& reserved) {
  std::vector<std::string> known = reserved;
  for (const auto& spec : schema) known.push_back(spec.name);

  toml::table resolved;
  std::vector<std::string> unknown;  // all of them in one message, so one edit fixes the table
  for (const auto& [key, node] : given) {
    const std::string name(key.str());
    if (std::find(reserved.begin(), reserved.end(), name) != reserved.end()) {
      resolved.insert(name, node);
      continue;
    }
    auto spec = std::find_if(schema.begin(), schema.end(), [&](const OptionSpec& s) { return s.name == name; });
    if (spec == schema.end()) {
      unknown.push_back(unknown_key_message(key, section, file, known));
      continue;
    }
    resolved.insert(name, *given_value(node, *spec, section + "." + name, file).get("v"));
  }
  if (!unknown.empty()) {
    std::string message = unknown.size() > 1 ? std::to_string(unknown.size()) + " unknown keys: " : "";
    for (size_t i = 0; i < unknown.size(); ++i) message += (i ? "; and " : "") + unknown[i];
    fail(ExitCode::usage, message);
  }
  for (const auto& spec : schema) {
    if (resolved.contains(spec.name)) continue;
    if (!spec.default_literal) {
      fail(ExitCode::usage, file + ": " + section + "." + spec.name + ": required " + type_name(spec.type) +
                                " option is missing (" + spec.doc + ")");
    }
    resolved.insert(spec.name, *default_value(spec, section + "." + spec.name).get("v"));
  }
  return resolved;
}

}  // namespace cfamc::host
