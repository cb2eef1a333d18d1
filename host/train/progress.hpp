// Training progress for a person: a live bar with rate and ETA on a terminal, plain periodic log lines
// otherwise (CI, files).
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace cfamc::host {

class Progress {
 public:
  // `may_draw`: false for processes that share a terminal with the one that draws the bar (log lines only).
  Progress(int64_t first_step, int64_t total_steps, bool may_draw = true);
  // After step `step` (1-based count of steps done); `detail` is appended ("loss 1.23").
  void update(int64_t step, const std::string& detail, bool log_line);
  void finish();

 private:
  int64_t first_, total_;
  bool terminal_;
  std::chrono::steady_clock::time_point start_;
  std::chrono::steady_clock::time_point last_draw_{};
};

std::string format_duration(double seconds);

}  // namespace cfamc::host
