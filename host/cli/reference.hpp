// Human- and machine-readable descriptions of what the host offers: --list-plugins and the generated
// run-file reference (docs/config.md), both from the same declarations the validator uses.
#pragma once

#include <string>

#include <nlohmann/json.hpp>

namespace cfamc::host {

class Registry;

nlohmann::json plugins_json(const Registry& registry);
std::string plugins_table(const Registry& registry);
std::string config_reference(const Registry& registry);

}  // namespace cfamc::host
