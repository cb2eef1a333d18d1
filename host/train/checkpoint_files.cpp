#include "train/checkpoint_files.hpp"

#include <algorithm>
#include <cstdio>

#include "failure.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {

std::string checkpoint_name(int64_t step) {
  char name[40];
  std::snprintf(name, sizeof(name), "step-%09lld.pt", static_cast<long long>(step));
  return name;
}

std::optional<int64_t> checkpoint_step(const std::string& filename) {
  constexpr size_t kPrefix = 5, kSuffix = 3;  // "step-", ".pt"
  if (filename.size() < kPrefix + 9 + kSuffix || filename.size() > kPrefix + 18 + kSuffix) return std::nullopt;
  if (filename.compare(0, kPrefix, "step-") != 0 || filename.compare(filename.size() - kSuffix, kSuffix, ".pt") != 0) {
    return std::nullopt;
  }
  const std::string digits = filename.substr(kPrefix, filename.size() - kPrefix - kSuffix);
  if (!std::all_of(digits.begin(), digits.end(), [](char c) { return c >= '0' && c <= '9'; })) return std::nullopt;
  const int64_t step = std::stoll(digits);
  if (checkpoint_name(step) != filename) return std::nullopt;  // one name per step: no extra leading zeros
  return step;
}

std::vector<std::pair<int64_t, fs::path>> checkpoints_in(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    const auto step = checkpoint_step(entry.path().filename().string());
    if (!step) continue;
    if (!entry.is_regular_file(ec)) {
      fail(ExitCode::usage, entry.path().string() + " is named like a checkpoint but is not a regular file; move it away");
    }
    found.emplace_back(*step, entry.path());
  }
  std::sort(found.begin(), found.end());
  return found;
}

}  // namespace cfamc::host
