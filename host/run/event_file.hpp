// TensorBoard event files the host writes: scalar summaries appended to
// `events.out.tfevents.<unix seconds>.<hostname>` in a run's directory, in TensorFlow's TFRecord framing of
// serialized tensorboard.Event protos, so TensorBoard shows a run's metrics without TensorFlow or protobuf here.
// A resumed run starts a new file beside the old ones, beginning with a SessionLog START at its first step:
// TensorBoard merges every events file of a directory and purges the points at or after that step.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string>
#include <string_view>

namespace cfamc::host {

// CRC-32C (Castagnoli), the checksum TFRecord framing uses; exposed for the tests.
uint32_t crc32c(std::string_view bytes);

class TensorBoardEvents {
 public:
  // Opens a new events file in `directory` (which must exist) and writes its file_version record. A
  // directory that cannot take the file is a Failure naming it (exit code ExitCode::other).
  explicit TensorBoardEvents(const std::filesystem::path& directory);
  // Writes what is still buffered, as far as it can: a destructor cannot report a failure.
  ~TensorBoardEvents();
  TensorBoardEvents(TensorBoardEvents&& other) noexcept;
  TensorBoardEvents& operator=(TensorBoardEvents&& other) noexcept;
  TensorBoardEvents(const TensorBoardEvents&) = delete;
  TensorBoardEvents& operator=(const TensorBoardEvents&) = delete;

  // Buffers one scalar; TensorBoard keeps it as a float32.
  void scalar(const std::string& tag, double value, int64_t step);
  // A resumed run restarts at `step`: TensorBoard drops the points of earlier files from this step on, the
  // steps trained again (as metrics.jsonl drops their lines).
  void restart(int64_t step);
  // Hands the buffered records to the kernel, so a crash of the process loses none of them; a write error
  // (disk full, say) is a Failure naming the file.
  void flush();

  const std::filesystem::path& path() const { return path_; }

 private:
  std::filesystem::path path_;
  std::string pending_;  // framed records not yet written
  int fd_ = -1;          // -1 once moved from
};

}  // namespace cfamc::host
