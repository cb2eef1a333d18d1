#include "train/checkpoint.hpp"

#include <torch/serialize.h>
#include <zlib.h>

#include <fstream>

#include "files.hpp"
#include "log.hpp"
#include "train/checkpoint_files.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {
namespace {

const char* const kChecksum = "cfamc/checksum";

// CRC-32 over every entry's name, dtype, shape and bytes, in order: flipped bytes anywhere change it.
int64_t checksum(const TensorMap& tensors) {
  uLong crc = crc32(0L, Z_NULL, 0);
  const auto add = [&](const void* data, size_t size) {
    const auto* bytes = static_cast<const Bytef*>(data);
    for (size_t done = 0; done < size;) {  // crc32 takes a uInt length
      const uInt n = static_cast<uInt>(std::min<size_t>(size - done, 1u << 30));
      crc = crc32(crc, bytes + done, n);
      done += n;
    }
  };
  for (const auto& item : tensors) {
    if (item.key() == kChecksum) continue;
    const at::Tensor t = item.value().contiguous();
    const std::string header = item.key() + "|" + std::string(c10::toString(t.scalar_type())) + "|" + c10::str(t.sizes());
    add(header.data(), header.size());
    add(t.data_ptr(), t.nbytes());
  }
  return static_cast<int64_t>(crc);
}

std::string first_line(const std::exception& e) {
  const auto* c10_error = dynamic_cast<const c10::Error*>(&e);
  std::string text = c10_error ? c10_error->what_without_backtrace() : e.what();
  return text.substr(0, text.find('\n'));
}

std::vector<char> read_bytes(const fs::path& file) {
  std::error_code ec;
  const fs::file_status status = fs::status(file, ec);
  if (ec || !fs::is_regular_file(status)) {  // a FIFO would block the read below
    fail(ExitCode::usage, "checkpoint " + file.string() + " is not a regular file");
  }
  std::ifstream in(file, std::ios::binary);
  if (!in) throw UnusableCheckpoint("cannot read checkpoint " + file.string());
  return std::vector<char>((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

}  // namespace

fs::path save_checkpoint(const fs::path& dir, int64_t step, const TensorMap& tensors, int64_t keep) {
  fs::create_directories(dir);
  TensorMap copies;
  for (const auto& item : tensors) copies.insert(item.key(), item.value().detach().to(at::kCPU).clone());
  copies.insert(kChecksum, at::scalar_tensor(checksum(copies), at::kLong));
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& item : copies) dict.insert(item.key(), item.value());
  const std::vector<char> bytes = torch::pickle_save(c10::IValue(dict));
  const fs::path file = dir / checkpoint_name(step);
  write_file_atomically(file, std::string(bytes.begin(), bytes.end()));
  const auto all = checkpoints_in(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove(all[i].second);
  return file;
}

TensorMap load_checkpoint(const fs::path& file) {
  const std::vector<char> bytes = read_bytes(file);
  if (bytes.empty()) throw UnusableCheckpoint("checkpoint " + file.string() + " is empty");
  TensorMap out;
  try {
    const c10::IValue value = torch::pickle_load(bytes);
    for (const auto& item : value.toGenericDict()) out.insert(item.key().toStringRef(), item.value().toTensor());
  } catch (const std::exception& e) {
    throw UnusableCheckpoint("checkpoint " + file.string() + " is unreadable (truncated or not a checkpoint): " + first_line(e));
  }
  if (!out.contains(kChecksum)) {
    log(LogLevel::warn, "checkpoint " + file.string() + " has no checksum (written by an older cfamc); not verified");
    return out;
  }
  if (out[kChecksum].item<int64_t>() != checksum(out)) {
    throw UnusableCheckpoint("checkpoint " + file.string() + " is corrupt: its content does not match its checksum");
  }
  out.erase(kChecksum);
  return out;
}

}  // namespace cfamc::host
