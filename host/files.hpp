// Files the host writes: atomically, so a run killed at any moment leaves either the old or the new
// version of a file, never half of one; and trees it deletes.
#pragma once

#include <filesystem>
#include <string>

namespace cfamc::host {

// Writes `content` to `path` through a temporary file in the same directory, flushed and renamed.
void write_file_atomically(const std::filesystem::path& path, const std::string& content);

// Whether `filename` is a temporary of write_file_atomically ("<target>.tmp.<pid>"); sets `target`. A
// process killed while writing leaves one behind.
bool is_write_temporary(const std::string& filename, std::string& target);

// Deletes `path` and everything below it; a missing path is fine. Not std::filesystem::remove_all: the
// PyTorch wheel's libtorch.so exports a copy of it that crashes when calls bind to it (docs/architecture.md).
void remove_tree(const std::filesystem::path& path);

}  // namespace cfamc::host
