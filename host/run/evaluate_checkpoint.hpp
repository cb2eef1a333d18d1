// `--evaluate-only`: the run file's [[evaluate]] entries on a checkpoint, without training. The results
// are merged into the run directory's summary.json under "eval", each with the checkpoint it came from.
#pragma once

#include <filesystem>
#include <optional>
#include <string>

#include "run/compute.hpp"

namespace cfamc::host {

struct RunConfig;
class Registry;
class RunDirectory;

struct EvaluateRequest {
  Compute compute;                                // device and precision, resolved
  const RunDirectory& dir;                        // locked by this process
  std::optional<std::filesystem::path> checkpoint;  // default: the newest in dir that verifies
  bool controls = false;                          // also the controls the evaluators ask for
};

// Failure(usage) for a missing checkpoint or one of another network (naming the tensor and both shapes),
// Failure(data) for a damaged one.
void evaluate_checkpoint(const RunConfig& config, const Registry& registry, const EvaluateRequest& request);

}  // namespace cfamc::host
