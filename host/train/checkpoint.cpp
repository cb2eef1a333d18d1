#include "train/checkpoint.hpp"

#include <torch/serialize.h>
#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <fstream>

#include "files.hpp"
#include "log.hpp"
#include "train/checkpoint_files.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {
namespace {

// A checkpoint is LibTorch's pickle of the tensors followed by this trailer: a magic, the pickle's length
// and its CRC-32, so a truncated or damaged file is recognised before LibTorch parses it (its zip reader
// reads out of bounds on a truncated archive: AddressSanitizer showed it).
constexpr char kMagic[8] = {'c', 'f', 'a', 'm', 'c', 'c', 'k', '1'};
constexpr size_t kTrailer = sizeof(kMagic) + 8 + 4;

uint32_t crc_of(const char* data, size_t size) {
  uLong crc = crc32(0L, Z_NULL, 0);
  for (size_t done = 0; done < size;) {  // crc32 takes a uInt length
    const uInt n = static_cast<uInt>(std::min<size_t>(size - done, 1u << 30));
    crc = crc32(crc, reinterpret_cast<const Bytef*>(data + done), n);
    done += n;
  }
  return static_cast<uint32_t>(crc);
}

template <class T>
void put(std::string& out, T value) {
  for (size_t i = 0; i < sizeof(T); ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xff));
}

template <class T>
T get(const char* in) {
  T value = 0;
  for (size_t i = 0; i < sizeof(T); ++i) value |= static_cast<T>(static_cast<unsigned char>(in[i])) << (8 * i);
  return value;
}

// A complete zip archive ends with its end-of-central-directory record (PyTorch writes no comment), which
// a truncated one has lost. Checked before parsing a checkpoint that predates the trailer.
bool ends_like_a_zip(const std::vector<char>& bytes) {
  constexpr size_t kEocd = 22;
  if (bytes.size() < kEocd) return false;
  const char* eocd = bytes.data() + bytes.size() - kEocd;
  const uint32_t directory_size = get<uint32_t>(eocd + 12), directory_offset = get<uint32_t>(eocd + 16);
  return get<uint32_t>(eocd) == 0x06054b50 && directory_offset + uint64_t{directory_size} == bytes.size() - kEocd;
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

// The pickle inside `bytes`, verified against the trailer; the whole of `bytes` for a checkpoint written
// before trailers, if it is at least a complete archive.
std::vector<char> verified_pickle(std::vector<char> bytes, const fs::path& file) {
  const std::string where = "checkpoint " + file.string();
  if (bytes.empty()) throw UnusableCheckpoint(where + " is empty");
  const bool trailed = bytes.size() >= kTrailer && std::equal(kMagic, kMagic + sizeof(kMagic), bytes.end() - kTrailer);
  if (!trailed) {
    if (!ends_like_a_zip(bytes)) throw UnusableCheckpoint(where + " is truncated or not a checkpoint");
    log(LogLevel::warn, where + " has no checksum (written by an older cfamc); not verified");
    return bytes;
  }
  const char* trailer = bytes.data() + bytes.size() - kTrailer;
  const uint64_t length = get<uint64_t>(trailer + sizeof(kMagic));
  if (length != bytes.size() - kTrailer || get<uint32_t>(trailer + sizeof(kMagic) + 8) != crc_of(bytes.data(), length)) {
    throw UnusableCheckpoint(where + " is corrupt: its content does not match its checksum");
  }
  bytes.resize(length);
  return bytes;
}

}  // namespace

void write_checkpoint_file(const fs::path& file, const TensorMap& tensors) {
  c10::Dict<std::string, at::Tensor> dict;
  for (const auto& item : tensors) dict.insert(item.key(), item.value().detach().to(at::kCPU).clone());
  const std::vector<char> pickle = torch::pickle_save(c10::IValue(dict));
  std::string content(pickle.begin(), pickle.end());
  content.append(kMagic, sizeof(kMagic));
  put<uint64_t>(content, pickle.size());
  put<uint32_t>(content, crc_of(pickle.data(), pickle.size()));
  write_file_atomically(file, content);
}

fs::path save_checkpoint(const fs::path& dir, int64_t step, const TensorMap& tensors, int64_t keep) {
  fs::create_directories(dir);
  const fs::path file = dir / checkpoint_name(step);
  write_checkpoint_file(file, tensors);
  const auto all = checkpoints_in(dir);
  for (size_t i = 0; i + static_cast<size_t>(keep) < all.size(); ++i) fs::remove(all[i].second);
  return file;
}

TensorMap load_checkpoint(const fs::path& file) {
  const std::vector<char> pickle = verified_pickle(read_bytes(file), file);
  TensorMap out;
  try {
    const c10::IValue value = torch::pickle_load(pickle);
    for (const auto& item : value.toGenericDict()) out.insert(item.key().toStringRef(), item.value().toTensor());
  } catch (const std::exception& e) {
    throw UnusableCheckpoint("checkpoint " + file.string() + " is unreadable (not a checkpoint): " + first_line(e));
  }
  return out;
}

std::optional<LoadedCheckpoint> newest_usable_checkpoint(const fs::path& dir) {
  const auto all = checkpoints_in(dir);
  for (auto it = all.rbegin(); it != all.rend(); ++it) {
    try {
      return LoadedCheckpoint{it->second, load_checkpoint(it->second)};
    } catch (const UnusableCheckpoint& e) {
      log(LogLevel::warn, std::string(e.what()) + "; trying the one before it");
    }
  }
  return std::nullopt;
}

}  // namespace cfamc::host
