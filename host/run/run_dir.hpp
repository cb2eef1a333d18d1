// The run directory: what a run leaves behind for the user. Every file is written atomically, so a run
// killed at any moment leaves either the old or the new version of a file, never half of one.
#pragma once

#include <filesystem>
#include <string>

namespace cfamc::host {

// Writes `content` to `path` through a temporary file in the same directory, flushed and renamed.
void write_file_atomically(const std::filesystem::path& path, const std::string& content);

// Creates `dir` (and parents); Failure(other) naming it when that is impossible.
std::filesystem::path prepare_run_dir(const std::string& dir);

}  // namespace cfamc::host
