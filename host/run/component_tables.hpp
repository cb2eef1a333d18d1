// The component tables of a run file ([backbone], [objective], [attack], [attacks.<id>], [[evaluate]]):
// where each sits and which role it has, then each table against the declaration of the plugin it names.
#pragma once

#include <vector>

#include "run/run_config.hpp"

namespace cfamc::host {

// The table `name` of the run file, or an empty one; Failure(usage) when it is not a table.
const toml::table& section_table(const RunFile& run_file, const std::string& name);

// Every component table, in the order components are created: backbone, objective, attack, the
// [attacks.<id>], the [[evaluate]] entries. Only the host's keys are read here (plugin, id, control,
// attacks); the plugins' keys wait for resolve_components.
std::vector<ComponentConfig> component_places(const RunFile& run_file);

}  // namespace cfamc::host
