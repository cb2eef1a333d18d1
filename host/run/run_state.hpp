// Everything a resumed run needs to continue exactly as the uninterrupted one: the tensors of every
// checkpointed component under its run-file place ("backbone/", "attack/", "attacks.<id>/"), the optimiser,
// the trainer's step and the augmentation generator.
#pragma once

#include <ATen/core/Generator.h>

#include <filesystem>

#include "run/assembly.hpp"
#include "train/optimizer.hpp"

namespace cfamc::host {

class RunState {
 public:
  RunState(const RunConfig& config, const Assembly& assembly, Optimizer& optimizer, at::Generator& augment);

  // The state after `step` steps, aliasing the live tensors (the checkpoint copies them).
  TensorMap gather(int64_t step) const;
  // Copies `saved` (loaded from `file`) into the live tensors and returns its step. Attack state may be absent (resuming with
  // another attack is allowed) and takes its saved shape (free training's perturbation); anything else
  // missing or of another shape is Failure(other) naming the file.
  int64_t restore(const TensorMap& saved, const std::filesystem::path& file);

 private:
  const RunConfig& config_;
  const Assembly& assembly_;
  Optimizer& optimizer_;
  at::Generator& augment_;
};

}  // namespace cfamc::host
