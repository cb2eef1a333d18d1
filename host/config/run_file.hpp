// The run file: strict TOML with command-line overrides. This file knows the syntax (parsing, --set);
// which sections and keys are valid is decided by the schemas of the host and the plugins.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include <toml++/toml.h>

namespace cfamc::host {

struct RunFile {
  std::string file;   // the path as the user gave it, for messages
  toml::table table;  // the parsed file with every --set applied
};

// Reads and parses `path`, removes every key of `removals` ("a.b"), then applies `overrides` ("a.b=value")
// in order, so `--unset attack --set attack.plugin=pgd` replaces a table. Throws Failure(usage) with
// "file:line:column: what" for malformed TOML and a clear line for an unreadable file, a bad override or a
// removal of a key the file does not have.
RunFile load_run_file(const std::filesystem::path& path, const std::vector<std::string>& overrides,
                      const std::vector<std::string>& removals = {});

// Applies one "a.b.c=value" override. `value` is read as a TOML value ("3", "0.5", "true", "[1, 2]",
// "\"x\"") and otherwise as a bare string, so `--set attack.plugin=fgsm_rs` needs no quotes; a string
// option given a number this way takes its text (resolve_options). A numeric segment indexes an array of
// tables: `evaluate.0.k=10`.
void apply_override(toml::table& table, const std::string& assignment);

// Removes the key or array entry at `path` ("attack.replays", "evaluate.1", "attack").
void apply_removal(toml::table& table, const std::string& path);

}  // namespace cfamc::host
