#include "train/progress.hpp"

#include <unistd.h>

#include <cstdio>

#include "log.hpp"

namespace cfamc::host {

std::string format_duration(double seconds) {
  const auto s = static_cast<int64_t>(seconds + 0.5);
  char out[32];
  if (s >= 3600) std::snprintf(out, sizeof(out), "%lldh%02lldm", static_cast<long long>(s / 3600), static_cast<long long>(s / 60 % 60));
  else if (s >= 60) std::snprintf(out, sizeof(out), "%lldm%02llds", static_cast<long long>(s / 60), static_cast<long long>(s % 60));
  else std::snprintf(out, sizeof(out), "%llds", static_cast<long long>(s));
  return out;
}

Progress::Progress(int64_t first_step, int64_t total_steps, bool may_draw)
    : first_(first_step), total_(total_steps), terminal_(may_draw && isatty(STDERR_FILENO) == 1),
      start_(std::chrono::steady_clock::now()) {}

void Progress::update(int64_t step, const std::string& detail, bool log_line) {
  const auto now = std::chrono::steady_clock::now();
  const double elapsed = std::chrono::duration<double>(now - start_).count();
  const double rate = elapsed > 0 ? static_cast<double>(step - first_) / elapsed : 0.0;
  const double eta = rate > 0 ? static_cast<double>(total_ - step) / rate : 0.0;
  char head[96];
  std::snprintf(head, sizeof(head), "%lld/%lld  %.2f it/s  ETA %s  ", static_cast<long long>(step),
                static_cast<long long>(total_), rate, format_duration(eta).c_str());
  if (terminal_) {
    if (now - last_draw_ < std::chrono::milliseconds(100) && step < total_) return;
    last_draw_ = now;
    constexpr int kWidth = 28;
    const int filled = static_cast<int>(kWidth * step / std::max<int64_t>(1, total_));
    std::fprintf(stderr, "\r[%s%s] %s%s\033[K", std::string(filled, '#').c_str(), std::string(kWidth - filled, '.').c_str(),
                 head, detail.c_str());
    std::fflush(stderr);
  } else if (log_line) {
    log(LogLevel::info, std::string("step ") + head + detail);
  }
}

void Progress::finish() {
  if (terminal_) std::fprintf(stderr, "\n");
}

}  // namespace cfamc::host
