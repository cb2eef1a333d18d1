// A run file made ready to run: its host sections and every component's options resolved against the
// plugins found, and the device it names made concrete. Shared by cfamc-host and the benchmarks, so that a
// benchmark runs exactly what a run file describes.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "plugins/registry.hpp"
#include "run/compute.hpp"
#include "run/run_config.hpp"

namespace cfamc::host {

struct ResolvedRun {
  RunConfig config;
  Registry registry;
};

// The run file at `path` with the command line's --unset `removals` and --set `overrides` applied, resolved.
// Failure(usage) naming the file and key on any bad input.
ResolvedRun resolve_run(const std::filesystem::path& path, const std::vector<std::string>& overrides,
                        const std::vector<std::string>& removals);

// [run] device and precision made concrete: device "auto" -> the GPU when there is one (an explicit CUDA
// device that is not there is the user's error), precision as resolve_precision decides for that device.
// Failure(usage) naming the run file.
// `local_rank`: a data-parallel process's GPU on its machine (LOCAL_RANK), which "auto" and "cuda" mean.
Compute resolve_compute(const RunConfig& config, int local_rank = 0);

// Process-wide settings for computing on `compute`'s device: on CUDA, cuDNN benchmark mode (a step's shapes
// are fixed, so the fastest algorithm found once serves every step).
void configure_device(const Compute& compute);

}  // namespace cfamc::host
