#include "train/checkpoint.hpp"

#include <torch/serialize.h>

#include <algorithm>
#include <fstream>
#include <sstream>

#include "failure.hpp"
#include "files.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {
namespace {

// step-000123.pt -> 123; -1 for anything else.
int64_t step_of(const fs::path& file) {
  const std::string name = file.filename().string();
  if (name.rfind("step-", 0) != 0 || file.extension() != ".pt") return -1;
  try {
    return std::stoll(name.substr(5, name.size() - 8));
  } catch (const std::exception&) {
    return -1;
  }
}

std::vector<std::pair<int64_t, fs::path>> checkpoints_in(const fs::path& dir) {
  std::vector<std::pair<int64_t, fs::path>> found;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec))
    if (const int64_t step = step_of(entry.path()); step >= 0) found.emplace_back(step, entry.path());
  std::sort(found.begin(), found.end());
  return found;
}

}  // namespace

fs::path save_checkpoint(const fs::path& dir, int64_t step, const TensorMap& tensors, int64_t keep) {
  fs::create_directories(dir);
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& item : tensors) dict.insert(item.key(), item.value().detach().to(at::kCPU).clone());
  const std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
  char name[32];
  std::snprintf(name, sizeof(name), "step-%09lld.pt", static_cast<long long>(step));
  const fs::path file = dir / name;
  write_file_atomically(file, std::string(bytes.begin(), bytes.end()));
  auto all = checkpoints_in(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove(all[i].second);
  return file;
}

std::optional<fs::path> newest_checkpoint(const fs::path& dir) {
  const auto all = checkpoints_in(dir);
  if (all.empty()) return std::nullopt;
  return all.back().second;
}

TensorMap load_checkpoint(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(ExitCode::other, "cannot read checkpoint " + file.string());
  std::vector<char> bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  TensorMap out;
  try {
    const c10::IValue value = torch::pickle_load(bytes);
    for (const auto& item : value.toGenericDict()) out.insert(item.key().toStringRef(), item.value().toTensor());
  } catch (const std::exception& e) {
    fail(ExitCode::other, "checkpoint " + file.string() + " is unreadable: " + e.what());
  }
  return out;
}

}  // namespace cfamc::host
