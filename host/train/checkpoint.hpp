// Checkpoints: every named tensor of the run (components, optimiser, trainer position, random state) in
// one file, written atomically and ending with a checksum of its content, so a run killed at any moment
// resumes from the newest complete one and a damaged file is recognised as such before it is parsed.
#pragma once

#include <filesystem>
#include <optional>

#include "failure.hpp"
#include "tensor_map.hpp"

namespace cfamc::host {

// A checkpoint file that cannot be used: unreadable, truncated, or failing its checksum. A resume falls
// back to an older checkpoint on this, and on nothing else.
class UnusableCheckpoint : public Failure {
 public:
  explicit UnusableCheckpoint(const std::string& message) : Failure(ExitCode::other, message) {}
};

// `tensors` (copied to the CPU) as `file`, atomically, with the verified trailer.
void write_checkpoint_file(const std::filesystem::path& file, const TensorMap& tensors);
// `dir`/step-<step>.pt, then removes all but the newest `keep` checkpoints (only files named as the host
// names them).
std::filesystem::path save_checkpoint(const std::filesystem::path& dir, int64_t step, const TensorMap& tensors,
                                      int64_t keep);
// UnusableCheckpoint naming the file and what is wrong, in one line; Failure(usage) when it is no regular
// file. A checkpoint written before checksums existed loads with a warning.
TensorMap load_checkpoint(const std::filesystem::path& file);

struct LoadedCheckpoint {
  std::filesystem::path file;
  TensorMap tensors;
};
// The newest checkpoint in `dir` that verifies, each damaged newer one named in a warning; nullopt when
// none does (checkpoints_in tells whether there were any).
std::optional<LoadedCheckpoint> newest_usable_checkpoint(const std::filesystem::path& dir);

}  // namespace cfamc::host
