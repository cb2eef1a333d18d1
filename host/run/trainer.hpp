// A whole run: data onto the device, components assembled, the training loop of the design brief,
// evaluation (with untrained controls), and the run directory's metrics.jsonl, summary.json and
// checkpoints.
#pragma once

#include <filesystem>
#include <string>

namespace cfamc::host {

struct RunConfig;
class Registry;

struct RunRequest {
  std::string device;  // resolved: "cpu", "cuda:0"
  std::filesystem::path run_dir;
  bool resume = false;      // continue from the newest checkpoint in run_dir/checkpoints
  int64_t until_step = 0;  // > 0: checkpoint and stop after this step, as a time-limited job would
  bool fresh = false;      // start over even though run_dir has checkpoints (deleting them)
};

// Failure(data) for data problems, Failure(diverged) when the loss stops being finite (the last good
// checkpoint stays), Failure(plugin) for plugin errors.
void run_training(const RunConfig& config, const Registry& registry, const RunRequest& request);

}  // namespace cfamc::host
