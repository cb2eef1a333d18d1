#include "run/run_dir.hpp"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "failure.hpp"
#include "log.hpp"
#include "train/checkpoint_files.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {
namespace {

const char* const kLock = "cfamc.lock";
// What a run writes at the top of its directory; artifacts/ holds what evaluators write through the host.
const std::vector<std::string> kFiles = {"resolved.toml", "metrics.jsonl", "summary.json", "eval_untrained.json", kLock};
const std::vector<std::string> kFolders = {"checkpoints", "artifacts", "tensorboard"};

bool one_of(const std::vector<std::string>& names, const std::string& name) {
  return std::find(names.begin(), names.end(), name) != names.end();
}

std::string joined(const std::vector<std::string>& names) {
  std::string out;
  for (size_t i = 0; i < names.size() && i < 5; ++i) out += (i ? ", " : "") + names[i];
  if (names.size() > 5) out += " and " + std::to_string(names.size() - 5) + " more";
  return out;
}

std::string lock_holder(int fd) {
  char pid[32] = {};
  const ssize_t n = ::pread(fd, pid, sizeof(pid) - 1, 0);
  std::string text = n > 0 ? std::string(pid, static_cast<size_t>(n)) : "";
  while (!text.empty() && (text.back() == '\n' || text.back() == ' ')) text.pop_back();
  return text.empty() ? "another process" : "process " + text;
}

// An entry of checkpoints/ the host made: a checkpoint or the temporary of one.
bool host_checkpoint_entry(const fs::directory_entry& entry) {
  std::string target;
  const std::string name = entry.path().filename().string();
  if (is_write_temporary(name, target)) return checkpoint_step(target).has_value();
  return checkpoint_step(name).has_value() && entry.is_regular_file();
}

}  // namespace

RunDirectory::RunDirectory(const fs::path& dir) : dir_(dir) {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec || !fs::is_directory(dir_)) {
    fail(ExitCode::other, "cannot create run directory '" + dir_.string() + "': " + (ec ? ec.message() : "not a directory"));
  }
  const fs::path lock = dir_ / kLock;
  lock_fd_ = ::open(lock.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (lock_fd_ < 0) fail(ExitCode::other, "cannot open " + lock.string() + ": " + std::strerror(errno));
  if (::flock(lock_fd_, LOCK_EX | LOCK_NB) != 0) {
    const std::string holder = lock_holder(lock_fd_);
    ::close(lock_fd_);
    lock_fd_ = -1;
    fail(ExitCode::usage, "run directory " + dir_.string() + " is in use by " + holder + " (" + lock.string() +
                              "); wait for it to end, or set another run.dir");
  }
  const std::string pid = std::to_string(::getpid()) + "\n";
  if (::ftruncate(lock_fd_, 0) != 0 || ::pwrite(lock_fd_, pid.data(), pid.size(), 0) < 0) {
    log(LogLevel::warn, "cannot write the pid into " + lock.string() + ": " + std::strerror(errno));
  }
  remove_stale_temporaries();
}

RunDirectory::~RunDirectory() {
  if (lock_fd_ >= 0) ::close(lock_fd_);  // releases the lock; the file stays, so no two processes race on it
}

// While the lock is held no other cfamc process writes here, so every temporary of ours is a leftover.
void RunDirectory::remove_stale_temporaries() const {
  for (const fs::path& folder : {dir_, checkpoints()}) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(folder, ec)) {
      std::string target;
      if (!is_write_temporary(entry.path().filename().string(), target) || !entry.is_regular_file()) continue;
      if (one_of(kFiles, target) || checkpoint_step(target)) {
        log(LogLevel::info, "removing " + entry.path().string() + ", left by a write that was interrupted");
        fs::remove(entry.path(), ec);
      }
    }
  }
}

std::vector<std::string> RunDirectory::foreign_entries(const fs::path& run_file) const {
  std::vector<std::string> foreign;
  std::error_code ec;
  const fs::path file = fs::weakly_canonical(run_file, ec);
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    std::string target;
    const bool ours = (one_of(kFiles, name) && entry.is_regular_file()) ||
                      (one_of(kFolders, name) && entry.is_directory()) ||
                      (is_write_temporary(name, target) && one_of(kFiles, target));
    if (!ours && fs::weakly_canonical(entry.path(), ec) != file) foreign.push_back(name);
  }
  for (const auto& entry : fs::directory_iterator(checkpoints(), ec)) {
    if (!host_checkpoint_entry(entry)) foreign.push_back("checkpoints/" + entry.path().filename().string());
  }
  std::sort(foreign.begin(), foreign.end());
  return foreign;
}

std::vector<std::string> RunDirectory::earlier_outputs() const {
  std::vector<std::string> found;
  for (const fs::path& file : {metrics(), summary(), untrained()})
    if (fs::exists(file)) found.push_back(file.filename().string());
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(checkpoints(), ec))
    if (checkpoint_step(entry.path().filename().string())) found.push_back("checkpoints/" + entry.path().filename().string());
  return found;
}

void RunDirectory::remove_outputs() const {
  for (const fs::path& file : {metrics(), summary(), untrained()}) fs::remove(file);
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(checkpoints(), ec))
    if (host_checkpoint_entry(entry)) fs::remove(entry.path());
  remove_tree(dir_ / "artifacts");
  remove_tree(tensorboard());
}

void RunDirectory::drop_metrics_after(int64_t step) const {
  std::ifstream in(metrics());
  if (!in) return;
  std::ostringstream kept;
  int64_t dropped = 0;
  for (std::string line; std::getline(in, line);) {
    const auto entry = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    const bool keep = entry.is_object() && entry.contains("step") && entry["step"].is_number_integer() &&
                      entry["step"].get<int64_t>() <= step;
    if (keep) kept << line << "\n";
    dropped += keep ? 0 : 1;
  }
  if (dropped == 0) return;
  write_file_atomically(metrics(), kept.str());
  log(LogLevel::info, "metrics.jsonl: dropped " + std::to_string(dropped) + " lines logged after step " +
                          std::to_string(step) + ", which are trained again");
}

void RunDirectory::prepare_fresh_start(bool fresh, const fs::path& run_file) const {
  const std::vector<std::string> foreign = foreign_entries(run_file);
  if (!foreign.empty() && !fresh) {
    fail(ExitCode::usage, "run directory " + dir_.string() + " holds files cfamc did not make (" + joined(foreign) +
                              "); move them, set another run.dir, or start with --fresh (which leaves them alone)");
  }
  const std::vector<std::string> earlier = earlier_outputs();
  if (!earlier.empty() && !fresh) {
    const bool resumable = !checkpoints_in(checkpoints()).empty();
    fail(ExitCode::usage, "run directory " + dir_.string() + " already holds a run (" + joined(earlier) + ")" +
                              (resumable ? "; continue it with --resume, start over with --fresh"
                                         : " with no checkpoint to resume from; start over with --fresh") +
                              ", or set another run.dir");
  }
  if (fresh) remove_outputs();
  if (fs::exists(checkpoints()) && !fs::is_directory(checkpoints())) {
    fail(ExitCode::usage, checkpoints().string() + " is not a folder; the run needs that name for its checkpoints");
  }
}

}  // namespace cfamc::host
