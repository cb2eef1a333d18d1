// What a training run does differently when it spans several processes (dist/world.hpp): the same weights
// everywhere at the start, one checkpoint (rank 0's) holding every process's own state, metrics averaged
// over the processes. Each function is a collective: every process calls it at the same point of the run.
#pragma once

#include <filesystem>
#include <optional>
#include <vector>

#include "dist/world.hpp"
#include "run/assembly.hpp"
#include "train/checkpoint.hpp"

namespace cfamc::host {

class RunDirectory;
struct Compute;

// Joins the job `launch` describes when it has more than one process: the backend run.backend names
// ("auto": NCCL on CUDA, Gloo on the CPU), run.timeout_s for every wait, `[backbone] sync_bn`, and every
// later log line prefixed with the rank. Null for a single-process run.
World* join_job(const RunConfig& config, const std::optional<Launch>& launch, const Compute& compute);

// A process's private run directory outside the user's (ranks other than 0 write there what every
// process of the job makes: evaluators' artifacts, a checkpoint shared for resuming), removed with it.
class ScratchDirectory {
 public:
  explicit ScratchDirectory(int rank);
  ~ScratchDirectory();
  ScratchDirectory(const ScratchDirectory&) = delete;
  ScratchDirectory& operator=(const ScratchDirectory&) = delete;
  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
};

// A warning for each component built against ABI 1.3 or older: it knows nothing of the other processes, so
// an objective's loss covers only its own share and a backbone's BatchNorm never synchronises.
void warn_single_process_plugins(const World& world, const Assembly& assembly);

// Every parameter and buffer of the backbone and the objective takes rank 0's values.
void broadcast_weights(World& world, const Assembly& assembly);
// Every buffer (BatchNorm's running statistics, which each process gathers from its own share without
// `[backbone] sync_bn`) takes rank 0's values: before a checkpoint, so that a resumed job continues as the
// uninterrupted one, and before the evaluation, so that every process evaluates the checkpointed encoder.
void broadcast_buffers(World& world, const Assembly& assembly);

// Rank 0's `newest` (its newest usable checkpoint, or none) on every process: the others receive the file,
// keep it in their own checkpoints folder and load it (a job resumes from rank 0's run directory even where
// the nodes share no filesystem). `newest` is ignored on the other ranks.
std::optional<LoadedCheckpoint> share_checkpoint(World& world, const RunDirectory& dir,
                                                 std::optional<LoadedCheckpoint> newest);

// Into `state` (a checkpoint being made): the job's size, and on rank 0 every other process's attack
// tensors (free training's perturbation, random streams), rank r's as "ranks/<r>/<name>".
void add_rank_local_state(World* world, const RunConfig& config, const Assembly& assembly, TensorMap& state);

// Before restoring `saved` (read from `file`): this process's attack tensors in place of rank 0's, and
// none of another job size's (they would be another split of the batch: the attacks start afresh, with a
// warning). Removes the data-parallel entries.
void take_rank_local_state(World* world, const RunConfig& config, const Assembly& assembly, TensorMap& saved,
                           const std::filesystem::path& file);

// The mean over the processes of each scalar (a loss, a logged metric); `values` as they are without a world.
std::vector<double> averaged(World* world, const std::vector<at::Tensor>& values);
// Whether `flag` holds on any process.
bool on_any_process(World* world, bool flag);

}  // namespace cfamc::host
