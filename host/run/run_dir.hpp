// The run directory: what a run leaves behind for the user (files.hpp writes each file atomically).
#pragma once

#include <filesystem>
#include <string>

#include "files.hpp"

namespace cfamc::host {

// Creates `dir` (and parents); Failure(other) naming it when that is impossible.
std::filesystem::path prepare_run_dir(const std::string& dir);

}  // namespace cfamc::host
