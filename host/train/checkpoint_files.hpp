// Which files are checkpoints: exactly the names the host writes (step-<9 or more digits>.pt), so that a
// user's step-000000002.backup.pt is neither resumed from nor pruned.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <utility>
#include <vector>

namespace cfamc::host {

std::string checkpoint_name(int64_t step);
// The step of a checkpoint's file name; nullopt for any other name.
std::optional<int64_t> checkpoint_step(const std::string& filename);
// The checkpoints in `dir` by step, oldest first; none when `dir` does not exist. A checkpoint's name on
// something that is not a regular file (a folder, a FIFO) is Failure(usage) naming it.
std::vector<std::pair<int64_t, std::filesystem::path>> checkpoints_in(const std::filesystem::path& dir);

}  // namespace cfamc::host
