// The run directory: what a run leaves behind for the user, and the rule that the host touches only what
// it made there. One process at a time holds a directory (a lock file naming its pid); files are written
// atomically (files.hpp), and the temporaries of a killed write are removed at the next start.
#pragma once

#include <filesystem>
#include <string>
#include <vector>

#include "files.hpp"

namespace cfamc::host {

class RunDirectory {
 public:
  // Creates `dir` (and parents) and takes its lock: Failure(usage) naming the holder's pid when another
  // live process holds it (a dead holder's lock is free: the kernel drops it with the process), and
  // Failure(other) when the folder cannot be made. Then removes the host's own stale temporary files.
  explicit RunDirectory(const std::filesystem::path& dir);
  ~RunDirectory();
  RunDirectory(const RunDirectory&) = delete;
  RunDirectory& operator=(const RunDirectory&) = delete;

  const std::filesystem::path& path() const { return dir_; }
  std::filesystem::path checkpoints() const { return dir_ / "checkpoints"; }
  std::filesystem::path metrics() const { return dir_ / "metrics.jsonl"; }
  std::filesystem::path summary() const { return dir_ / "summary.json"; }
  // Every control's results (the untrained encoder's and the pixels'), kept for a resumed run.
  std::filesystem::path untrained() const { return dir_ / "eval_untrained.json"; }
  std::filesystem::path resolved() const { return dir_ / "resolved.toml"; }
  std::filesystem::path tensorboard() const { return dir_ / "tensorboard"; }

  // Before a run that starts from step 0: the outputs of an earlier run (checkpoints, metrics, summary) or
  // anything the host did not make (besides `run_file`, which may live here) are Failure(usage) listing
  // them, unless `fresh`, which removes the host's own outputs and leaves everything else alone.
  void prepare_fresh_start(bool fresh, const std::filesystem::path& run_file) const;

  // On resuming at `step`: metrics.jsonl keeps only the lines up to it (a killed run logged past its last
  // checkpoint; those steps are trained again), and loses a half-written last line.
  void drop_metrics_after(int64_t step) const;

  // Entries of the directory (relative paths) that the host did not make, sorted.
  std::vector<std::string> foreign_entries(const std::filesystem::path& run_file) const;

 private:
  std::vector<std::string> earlier_outputs() const;
  void remove_outputs() const;
  void remove_stale_temporaries() const;

  std::filesystem::path dir_;
  int lock_fd_ = -1;
};

}  // namespace cfamc::host
