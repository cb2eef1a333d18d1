#include "run/event_file.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <ctime>
#include <utility>

#include <boost/crc.hpp>

#include "failure.hpp"

namespace fs = std::filesystem;

namespace cfamc::host {
namespace {

// The few protobuf wire types tensorboard.Event needs. Encoded by hand: linking protobuf and generating code
// from TensorBoard's .proto files would be a large dependency for three small messages.
enum class Wire : uint8_t { varint = 0, fixed64 = 1, length_delimited = 2, fixed32 = 5 };

void put_varint(std::string& out, uint64_t value) {
  for (; value >= 0x80; value >>= 7) out.push_back(static_cast<char>((value & 0x7F) | 0x80));
  out.push_back(static_cast<char>(value));
}

// Little-endian whatever the host's byte order, as both protobuf and TFRecord want it.
void put_little_endian(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>(value >> (8 * i)));
}

void put_key(std::string& out, int field, Wire wire) {
  put_varint(out, (static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(wire));
}

void put_bytes(std::string& out, int field, std::string_view bytes) {
  put_key(out, field, Wire::length_delimited);
  put_varint(out, bytes.size());
  out.append(bytes);
}

void put_double(std::string& out, int field, double value) {
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  put_key(out, field, Wire::fixed64);
  put_little_endian(out, bits, 8);
}

void put_float(std::string& out, int field, float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  put_key(out, field, Wire::fixed32);
  put_little_endian(out, bits, 4);
}

// int64 fields are plain varints of the two's complement: a negative step takes ten bytes.
void put_int64(std::string& out, int field, int64_t value) {
  put_key(out, field, Wire::varint);
  put_varint(out, static_cast<uint64_t>(value));
}

// tensorboard.Event's fields.
constexpr int kWallTime = 1, kStep = 2, kFileVersion = 3, kSummary = 5, kSessionLog = 7;
// Summary { repeated Value value = 1; }, Value { string tag = 1; float simple_value = 2; }.
constexpr int kSummaryValue = 1, kValueTag = 1, kValueSimpleValue = 2;
// SessionLog.status (field 1) = START (1).
constexpr int kSessionLogStatus = 1, kSessionStart = 1;

double wall_time() {
  return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
}

// TFRecord's masking keeps a CRC of data that itself holds CRCs from being degenerate.
uint32_t masked(uint32_t crc) { return ((crc >> 15) | (crc << 17)) + 0xa282ead8u; }

void append_record(std::string& out, const std::string& data) {
  std::string length;
  put_little_endian(length, data.size(), 8);
  out += length;
  put_little_endian(out, masked(crc32c(length)), 4);
  out += data;
  put_little_endian(out, masked(crc32c(data)), 4);
}

std::string host_name() {
  char name[256] = {};
  if (::gethostname(name, sizeof name - 1) != 0 || name[0] == '\0') return "localhost";
  return name;
}

// 0 or the errno of the failed write.
int write_all(int fd, const std::string& data) {
  size_t written = 0;
  while (written < data.size()) {
    const ssize_t n = ::write(fd, data.data() + written, data.size() - written);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) return errno;
    written += static_cast<size_t>(n);
  }
  return 0;
}

}  // namespace

// Boost.CRC, already a dependency through Boost's headers, rather than a CRC of our own: Debian 12 packages
// no CRC-32C library of Google's (libcrc32c-dev), and CRC-32C is Boost's CRC with the Castagnoli polynomial.
uint32_t crc32c(std::string_view bytes) {
  boost::crc_optimal<32, 0x1EDC6F41, 0xFFFFFFFF, 0xFFFFFFFF, true, true> crc;
  crc.process_bytes(bytes.data(), bytes.size());
  return crc.checksum();
}

TensorBoardEvents::TensorBoardEvents(const fs::path& directory)
    : path_(directory / ("events.out.tfevents." + std::to_string(std::time(nullptr)) + "." + host_name())) {
  // O_APPEND: a second writer started within the same second appends whole records to the same file,
  // which TensorBoard reads as one stream, instead of overwriting the first writer's.
  fd_ = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  if (fd_ < 0) fail(ExitCode::other, "cannot write " + path_.string() + ": " + std::strerror(errno));
  // Version 2 also has TensorBoard purge steps only on an explicit restart event, never because a step went
  // back (as a resumed run's do).
  std::string version;
  put_double(version, kWallTime, wall_time());
  put_bytes(version, kFileVersion, "brain.Event:2");
  append_record(pending_, version);
  try {
    flush();
  } catch (...) {
    ::close(fd_);
    throw;
  }
}

TensorBoardEvents::~TensorBoardEvents() {
  if (fd_ < 0) return;
  write_all(fd_, pending_);  // best effort: a destructor has no one to tell
  ::close(fd_);
}

TensorBoardEvents::TensorBoardEvents(TensorBoardEvents&& other) noexcept
    : path_(std::move(other.path_)), pending_(std::move(other.pending_)), fd_(std::exchange(other.fd_, -1)) {
  other.pending_.clear();
}

TensorBoardEvents& TensorBoardEvents::operator=(TensorBoardEvents&& other) noexcept {
  if (this == &other) return *this;
  if (fd_ >= 0) {
    write_all(fd_, pending_);
    ::close(fd_);
  }
  path_ = std::move(other.path_);
  pending_ = std::move(other.pending_);
  other.pending_.clear();
  fd_ = std::exchange(other.fd_, -1);
  return *this;
}

void TensorBoardEvents::scalar(const std::string& tag, double value, int64_t step) {
  std::string summary_value;
  put_bytes(summary_value, kValueTag, tag);
  put_float(summary_value, kValueSimpleValue, static_cast<float>(value));
  std::string summary;
  put_bytes(summary, kSummaryValue, summary_value);
  std::string event;
  put_double(event, kWallTime, wall_time());
  put_int64(event, kStep, step);
  put_bytes(event, kSummary, summary);
  append_record(pending_, event);
}

void TensorBoardEvents::restart(int64_t step) {
  std::string session_log;
  put_int64(session_log, kSessionLogStatus, kSessionStart);
  std::string event;
  put_double(event, kWallTime, wall_time());
  put_int64(event, kStep, step);
  put_bytes(event, kSessionLog, session_log);
  append_record(pending_, event);
}

// No fsync: after write() the records survive a crash of the process, which is what a failed run is; a
// crash of the machine loses at most what the kernel had not yet written back, and an fsync per log point
// can stall training for long on network file systems.
void TensorBoardEvents::flush() {
  if (pending_.empty()) return;
  const int error = write_all(fd_, pending_);
  // Dropped even on failure: retrying after a partial write would append the tail of a record.
  pending_.clear();
  if (error != 0) fail(ExitCode::other, "cannot write " + path_.string() + ": " + std::strerror(error));
}

}  // namespace cfamc::host
