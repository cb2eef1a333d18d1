// Checkpoints: every named tensor of the run (components, optimiser, trainer position, random state) in
// one file, written atomically, so a run killed at any moment resumes from the newest complete one.
#pragma once

#include <filesystem>
#include <optional>

#include "tensor_map.hpp"

namespace cfamc::host {

// `dir`/step-<step>.pt, then removes all but the newest `keep`.
std::filesystem::path save_checkpoint(const std::filesystem::path& dir, int64_t step, const TensorMap& tensors,
                                      int64_t keep);
std::optional<std::filesystem::path> newest_checkpoint(const std::filesystem::path& dir);
// Failure(other) naming the file when it cannot be read.
TensorMap load_checkpoint(const std::filesystem::path& file);

}  // namespace cfamc::host
