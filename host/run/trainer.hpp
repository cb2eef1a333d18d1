// A whole run: data onto the device, components assembled, the training loop of the design brief,
// evaluation (with the controls: untrained encoder, raw pixels), and the run directory's metrics.jsonl, summary.json and
// checkpoints.
#pragma once

#include <filesystem>
#include <string>

#include "run/compute.hpp"

namespace cfamc::host {

struct RunConfig;
class Registry;
class RunDirectory;
class World;

struct RunRequest {
  Compute compute;          // device and precision, resolved
  const RunDirectory& dir;  // locked by this process
  bool resume = false;      // continue from the newest checkpoint that verifies
  int64_t until_step = 0;  // > 0: checkpoint and stop after this step, as a time-limited job would
  bool fresh = false;      // start over even though the directory holds a run (deleting its outputs only)
  World* world = nullptr;  // the data-parallel job this process belongs to; null: a single process
};

// Failure(data) for data problems, Failure(diverged) when the loss or the weights stop being finite (the
// last good checkpoint stays), Failure(plugin) for plugin errors, Failure(interrupted / terminated) after
// SIGINT / SIGTERM once the step in progress is checkpointed.
void run_training(const RunConfig& config, const Registry& registry, const RunRequest& request);

}  // namespace cfamc::host
